#!/usr/bin/env bash
# Idempotent setup of the NetKV testbed on Debian 12 as root: apt packages, the project venv
# (Debian's python3 with system site packages, for Mininet's Python API), Ryu with its pins, the
# project itself, and a running Open vSwitch (ovsdb-server + ovs-vswitchd, userspace datapath).
# Safe to run again: every step checks first. Set NETKV_VENV to place the venv elsewhere.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NETKV_VENV:-$here/.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

# g++: scripts/build_ext.py compiles the simulator's flow network and prefix caches (C++)
# openssh-server and sudo: Mininet's cluster edition logs in to each server over SSH and runs its
# commands with sudo (the cluster test's stand-in servers run their own sshd on a link-local address)
apt_pkgs=(mininet openvswitch-switch iperf3 ethtool iputils-ping tcpdump python3-venv python3-dev python3-numpy
  openssh-server sudo g++)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root"; exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # no package may start its service here (openssh-server would listen on every address)
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

stamp="$venv/.netkv-setup"
want=$(cat "$here/pyproject.toml" "$here/scripts/requirements-ryu.txt" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv (Debian python3 + system site packages)"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  log "installing Ryu 4.34 and its pins (scripts/requirements-ryu.txt)"
  "${pip[@]}" 'setuptools<61' pbr wheel
  "${pip[@]}" --no-build-isolation -r "$here/scripts/requirements-ryu.txt"
  log "installing the netkv project (editable), test and lint tools, Cython"
  "${pip[@]}" -e "$here[test,lint,compiled]"
  echo "$want" >"$stamp"
fi
# bytecode for the project's own modules (an editable install leaves none): where
# PYTHONDONTWRITEBYTECODE is set, every netkv process would compile them again (0.1 s of each);
# a file edited since is compiled in memory as usual. Quick when nothing changed.
"$venv/bin/python" -m compileall -q -j 0 "$here"/{netkv,topology,controller,agents,scheduler,simulator,emulation} >/dev/null
# the compiled flow network and prefix caches (simulator/compiled.py); rebuilt when a .pyx changed
"$venv/bin/python" "$here/scripts/build_ext.py"

if [ "$(id -u)" -eq 0 ]; then
  if ! timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1; then
    log "starting Open vSwitch (ovsdb-server, ovs-vswitchd)"
    # keeping freed memory saves the userspace datapath a third of its CPU (topology/ovs_daemon.py)
    tunables=$("$venv/bin/python" -c 'from netkv.topology.ovs_daemon import MALLOC_TUNABLES as t; print(t)')
    GLIBC_TUNABLES="$tunables" /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/dev/null 2>&1 || true
    timeout 10 ovs-vsctl --timeout=5 show >/dev/null || { log "Open vSwitch did not start"; exit 1; }
  fi
fi
log "ready: $venv/bin/netkv"

"""Find and remove what an emulated run leaves behind: OVS bridges, veths, processes, state files.

Only objects named by this project's ID scheme (switches s/e/a/c..., hosts h..., interfaces
<node>-eth<N>) and processes started by it are touched, so other OVS bridges on the machine survive.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from netkv.emulation import cluster, statedir

NODE_RE = re.compile(r"^(h\d+_\d+_\d+_\d+|s\d+_\d+_\d+|e\d+_\d+|a\d+_\d+|c\d+_\d+)$")
INTF_RE = re.compile(r"^(h\d+_\d+_\d+_\d+|s\d+_\d+_\d+|e\d+_\d+|a\d+_\d+|c\d+_\d+)-eth\d+$")
# command-line markers of processes this project starts
# (a fabric's own ovsdb-server/ovs-vswitchd daemons name their state directory ovs-<pid>)
PROC_MARKERS = (
    "netkv.controller.launcher",
    "netkv.agents.",
    "netkv-bg-iperf",
    f"{statedir.STATE_DIR}/{statedir.OVS_PREFIX}",
)
CLEAN_HINT = "run `netkv clean` (as root) to remove them"


def _run(args: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def ovs_bridges() -> list[str]:
    try:
        p = _run(["ovs-vsctl", "--timeout=5", "list-br"])
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    return [b for b in p.stdout.split() if NODE_RE.match(b)]


def veths() -> list[str]:
    # waits for the kernel's one rtnl lock: right after a k = 8 fabric's 720 namespaces end, the
    # kernel holds it for tens of seconds deleting their veths (20 s was not enough once)
    p = _run(["ip", "-o", "link", "show"], timeout=300)
    out = []
    for line in p.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if INTF_RE.match(name):
                out.append(name)
    return out


def processes() -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.pid == me:
            continue
        if any(m in cmd for m in PROC_MARKERS):
            found.append(p)
        elif p.info["name"] in ("mnexec", "iperf3") and "netkv" in _environ_tag(p):
            found.append(p)
    return found


def _environ_tag(p: psutil.Process) -> str:
    try:
        return p.environ().get("NETKV_RUN", "")
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return ""


def mininet_shells() -> list[psutil.Process]:
    """Mininet host/switch shells (bash started by mnexec with our node names in their prompt env)."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if len(cmd) >= 2 and cmd[0].endswith("bash") and "mininet:" in " ".join(cmd):
            name = " ".join(cmd).split("mininet:")[-1].split()[0]
            if NODE_RE.match(name):
                out.append(p)
    return out


def find_leftovers() -> list[str]:
    """Human-readable list of leftover emulation state (empty when the machine is clean)."""
    items = []
    brs = ovs_bridges()
    if brs:
        items.append(f"{len(brs)} OVS bridges ({', '.join(brs[:4])}{', ...' if len(brs) > 4 else ''})")
    vs = veths()
    if vs:
        items.append(f"{len(vs)} veth interfaces ({', '.join(vs[:3])}{', ...' if len(vs) > 3 else ''})")
    procs = processes() + mininet_shells()
    if procs:
        items.append(f"{len(procs)} processes (pids {', '.join(str(p.pid) for p in procs[:6])})")
    items += cluster.leftovers()
    stale = statedir.stale_state_entries()
    if stale:
        items.append(
            f"{len(stale)} stale state entries in {statedir.STATE_DIR} ({', '.join(e.name for e in stale[:3])}"
            f"{', ...' if len(stale) > 3 else ''})"
        )
    return items


def clean(verbose: bool = True, force: bool = False) -> list[str]:
    """Remove every leftover; returns what is still there afterwards (empty = clean). State entries of
    live runs are kept unless `force` (the command line refuses to run at all then, without --force)."""
    log = print if verbose else (lambda *a, **k: None)
    procs = processes() + mininet_shells()
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if procs:
        log(f"stopped {len(procs)} processes")
    brs = ovs_bridges()
    if brs:
        args = ["ovs-vsctl", "--timeout=30"]
        for b in brs:
            args += ["--", "--if-exists", "del-br", b]
        _run(args, timeout=60)
        log(f"deleted {len(brs)} OVS bridges")
    vs = veths()
    for v in vs:
        _run(["ip", "link", "del", v])
    if vs:
        log(f"deleted {len(vs)} veth interfaces")
    if n := cluster.clean():
        log(f"removed {n} namespace-server leftovers (daemons, namespaces, bridge)")
    stale = statedir.state_entries() if force else statedir.stale_state_entries()  # a live run's entries stay
    for f in stale:
        if f.name.startswith(statedir.WMEM_PREFIX):  # a fabric raised net.core.wmem_default and died
            try:
                Path("/proc/sys/net/core/wmem_default").write_text(f.read_text().strip())
                log(f"net.core.wmem_default back to {f.read_text().strip()}")
            except (OSError, ValueError):
                pass
    for f in stale:
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f, ignore_errors=True)  # per-run socket directories
        else:
            f.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} stale state entries from {statedir.STATE_DIR}")
    time.sleep(0.2)
    return find_leftovers()

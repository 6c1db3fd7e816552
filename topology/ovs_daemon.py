"""One Open vSwitch per emulated switch: its own ovsdb-server and ovs-vswitchd, run directory and commands.

The userspace datapath forwards in ovs-vswitchd's main loop, and every loop iteration walks every
bridge and port the daemon holds: with the whole fat-tree in the system daemon, the cost per packet
grows with the fabric (docs/emulation.md has the measurements). Giving each switch its own daemon,
as each real switch has its own forwarding plane, keeps that cost to one bridge. Each daemon must
live in its own network namespace (every userspace daemon creates a tap named `ovs-netdev`), so
its switch's ports live there too; the OpenFlow connection goes over a Unix socket, which every
namespace reaches through the file system.

Plain Python (subprocess, no Mininet): the Mininet switch class in mininet_fabric.py calls it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
# glibc's malloc gives freed memory back to the kernel once the heap's top exceeds 128 KB, and the
# userspace datapath allocates and frees a batch of MTU-sized packet buffers per receive: with
# 9000-byte frames every wake-up grew the heap (brk), faulted fresh zeroed pages in and trimmed
# them again (a third of ovs-vswitchd's CPU under load, perf). Keep the memory instead.
MALLOC_TUNABLES = (
    "glibc.malloc.trim_threshold=268435456:glibc.malloc.top_pad=16777216:glibc.malloc.mmap_threshold=4194304"
)
INACTIVITY_PROBE_MS = 60_000  # OpenFlow echo after this long idle (OVS's default: 5 s)


class OvsDaemonError(RuntimeError):
    """A switch's own Open vSwitch could not be started or configured (the message names it)."""


@dataclass(frozen=True)
class SwitchDaemon:
    """The files and commands of one switch's ovsdb-server + ovs-vswitchd (all under `root`)."""

    name: str
    root: Path
    keep_memory: bool = True  # ovs-vswitchd runs with MALLOC_TUNABLES (False: glibc's defaults)

    @property
    def db(self) -> Path:
        return self.root / "conf.db"

    @property
    def db_sock(self) -> Path:
        return self.root / "db.sock"

    @property
    def rundir(self) -> Path:
        """OVS_RUNDIR, shared by the fabric's daemons: OVS connects to a Unix-socket controller only
        inside its run directory, and the controller's socket is there."""
        return self.root.parent

    @property
    def mgmt(self) -> Path:
        """The bridge's OpenFlow management socket (what ovs-ofctl talks to)."""
        return self.rundir / f"{self.name}.mgmt"

    def pidfile(self, prog: str) -> Path:
        return self.root / f"{prog}.pid"

    def ctl(self, prog: str) -> Path:
        return self.root / f"{prog}.ctl"

    def ofctl_target(self) -> str:
        return f"unix:{self.mgmt}"

    def vsctl(self, *args: str, wait: bool = False) -> list[str]:
        return ["ovs-vsctl", f"--db=unix:{self.db_sock}", "--timeout=20", *([] if wait else ["--no-wait"]), *args]

    def ovsdb_cmd(self) -> list[str]:
        return [
            "ovsdb-server",
            str(self.db),
            f"--remote=punix:{self.db_sock}",
            f"--pidfile={self.pidfile('ovsdb-server')}",
            f"--unixctl={self.ctl('ovsdb-server')}",
            f"--log-file={self.root / 'ovsdb-server.log'}",
            "--detach",
            "--no-chdir",
        ]

    def vswitchd_cmd(self, netns_pid: int) -> list[str]:
        """ovs-vswitchd started inside the network namespace of `netns_pid` (the switch's shell)."""
        return [
            "mnexec",
            "-a",
            str(netns_pid),
            "env",
            f"OVS_RUNDIR={self.rundir}",
            *([f"GLIBC_TUNABLES={MALLOC_TUNABLES}"] if self.keep_memory else []),
            "ovs-vswitchd",
            f"unix:{self.db_sock}",
            f"--pidfile={self.pidfile('ovs-vswitchd')}",
            f"--unixctl={self.ctl('ovs-vswitchd')}",
            f"--log-file={self.root / 'ovs-vswitchd.log'}",
            "--detach",
            "--no-chdir",
        ]

    def bridge_cmd(self, dpid: str, ports: Sequence[tuple[str, int]], controller: str) -> list[str]:
        """One ovs-vsctl transaction: the bridge (userspace datapath, OpenFlow 1.3 only, fail mode
        secure, the ID scheme's dpid), its ports at the ID scheme's port numbers, the controller."""
        args = [
            "--",
            "add-br",
            self.name,
            "--",
            "set",
            "bridge",
            self.name,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail_mode=secure",
            f"other-config:datapath-id={dpid}",
            # one bridge per daemon: no need for a thread per core
            "--",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:n-handler-threads=1",
            "other_config:n-revalidator-threads=1",
        ]
        for intf, port in ports:
            args += ["--", "add-port", self.name, intf, "--", "set", "Interface", intf, f"ofport_request={port}"]
        args += ["--", "set-controller", self.name, controller]
        # the controller is a local Unix socket: a dead one shows as EOF at once, while a busy one
        # (writing ~60 k rules to 208 switches at k = 8) missed the default 5 s echo and every switch
        # it dropped reconnected and was rewritten, keeping it busy
        args += [
            "--",
            "set",
            "controller",
            self.name,
            "connection-mode=out-of-band",
            f"inactivity_probe={INACTIVITY_PROBE_MS}",
        ]
        return self.vsctl(*args, wait=True)

    def pids(self) -> list[int]:
        out = []
        for prog in ("ovs-vswitchd", "ovsdb-server"):
            try:
                out.append(int(self.pidfile(prog).read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return out


def _parallel(cmds: Iterable[tuple[str, list[str]]], what: str, timeout: float = 60.0) -> None:
    """Run the commands side by side; the first failure raises with the switch, command and stderr."""
    procs = [
        (name, cmd, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for name, cmd in cmds
    ]
    errors = []
    deadline = time.monotonic() + timeout
    for name, cmd, p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            errors.append(f"{name}: {cmd[0]} did not finish in {timeout:.0f} s")
            continue
        if p.returncode != 0:
            errors.append(f"{name}: {cmd[0]} exited {p.returncode}: {(err or '').strip()[:200]}")
    if errors:
        raise OvsDaemonError(f"{what} failed for {len(errors)} switch(es): " + "; ".join(errors[:3]))


def start(daemons: Sequence[SwitchDaemon], netns_pid: Callable[[str], int]) -> None:
    """Create each switch's database and start its ovsdb-server, then its ovs-vswitchd inside the
    switch's network namespace; all switches side by side."""
    for d in daemons:
        d.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        d.db.unlink(missing_ok=True)
    _parallel(((d.name, ["ovsdb-tool", "create", str(d.db), str(SCHEMA)]) for d in daemons), "ovsdb-tool create")
    _parallel(((d.name, d.ovsdb_cmd()) for d in daemons), "ovsdb-server start")
    _parallel(((d.name, d.vsctl("init")) for d in daemons), "ovs-vsctl init")
    _parallel(((d.name, d.vswitchd_cmd(netns_pid(d.name))) for d in daemons), "ovs-vswitchd start")


def configure(daemons: Sequence[SwitchDaemon], bridge_cmds: dict[str, list[str]]) -> None:
    """Add every switch's bridge, ports and controller (one transaction per switch, side by side)."""
    _parallel(((d.name, bridge_cmds[d.name]) for d in daemons), "bridge setup")


def stop(daemons: Sequence[SwitchDaemon], timeout: float = 5.0) -> None:
    """SIGTERM every daemon, wait, SIGKILL what is left, remove the run directories' sockets."""
    import psutil

    procs = []
    for d in daemons:
        for pid in d.pids():
            try:
                p = psutil.Process(pid)
                if p.name() in ("ovs-vswitchd", "ovsdb-server"):
                    p.send_signal(signal.SIGTERM)
                    procs.append(p)
            except psutil.Error:
                pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    for d in daemons:
        for f in [*d.root.glob("*"), *d.rundir.glob(f"{d.name}.*")]:
            if f.suffix in (".sock", ".ctl", ".mgmt", ".snoop", ".pid"):
                f.unlink(missing_ok=True)


def running_daemons(root_marker: str) -> list[int]:
    """PIDs of ovsdb-server / ovs-vswitchd processes whose command line names `root_marker` (a run
    directory prefix): this project's per-switch daemons, never the system's."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if p.info["name"] in ("ovs-vswitchd", "ovsdb-server") and root_marker in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except (psutil.Error, TypeError):
            continue
    return out

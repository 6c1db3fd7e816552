"""The fat-tree across machines with Mininet's cluster edition: placement, tunnels, test servers.

`mininet.examples.cluster` (MininetCluster, RemoteHost, RemoteOVSSwitch, RemoteLink) runs every
node on the server its topology entry names, over SSH, and joins links that cross servers with a
tunnel. Here:
- `placement`: the fat-tree cut along its structure, whole pods per server and the core on the
  machine that runs the controller ("localhost"), so tunnels carry only aggregation-core links.
- `VXLANLink`: Mininet's GRE link with a VXLAN device instead (this VM's kernel has no GRE module;
  VXLAN is in every stock kernel), one VNI per link, MTU kept (jumbo frames need an underlay MTU
  50 bytes larger).
- `NamespaceServers`: stand-in servers for tests on one machine: each a network namespace on a
  link-local bridge (169.254.100.0/24, never routed off this machine) with its own sshd (key login,
  that address only) and its own ovsdb-server + ovs-vswitchd (its own /run/openvswitch), in its own
  PID namespace and mount namespace, where this machine's /run/netkv and the run directories it is
  given are empty: what runs there sees what a separate machine would, so code that leans on a
  shared process table or file system fails on stand-ins as it would on real servers.

docs/scaling.md, "Across machines", has the multi-VM recipe.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from pathlib import Path

import psutil

from netkv.emulation import statedir
from netkv.topology import FatTree
from netkv.topology.ovs_daemon import MALLOC_TUNABLES

LOCAL = "localhost"
BRIDGE = "nkc-br"
SUBNET = "169.254.100"  # link-local: one address per namespace server, .1 is this machine
NS_PREFIX = "nkc"
UNDERLAY_MTU = 9100  # the fabric's 9000-byte frames plus VXLAN's 50 bytes
SSH_OPTS = ("-o", "BatchMode=yes", "-o", "LogLevel=ERROR")
PTY_LINE = 3800  # bytes per remote command line: a pty's canonical line holds 4095 (N_TTY_BUF_SIZE)


class ClusterError(RuntimeError):
    """The cluster could not be set up (the message names the server and the step)."""


def placement(topo: FatTree, servers: Sequence[str]) -> dict[str, str]:
    """Node name -> server: pods in contiguous blocks over `servers`, the core on LOCAL."""
    if not servers:
        raise ClusterError("placement: no servers given")
    pods = topo.k
    out = {}
    for n in [*topo.hosts, *topo.switches]:
        out[n.name] = LOCAL if n.kind == "core" else servers[n.pod * len(servers) // pods]
    return out


def _run(cmd: list[str], what: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise ClusterError(f"{what}: {' '.join(cmd[:4])}... exited {r.returncode}: {r.stderr.strip()[:300]}")
    return r


@dataclass
class NamespaceServers:
    """`n` stand-in servers on this machine, each reached over SSH at 169.254.100.(i+2)."""

    n: int
    root: Path
    private_dirs: Sequence[Path] = ()  # directories of this machine each server sees empty (its own)
    addresses: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    def ns(self, i: int) -> str:
        return f"{NS_PREFIX}{i}"

    def __enter__(self) -> NamespaceServers:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if leftovers():
            raise ClusterError(f"namespace servers left from an earlier run: {leftovers()}; run `netkv clean`")
        if not Path("/usr/sbin/sshd").exists():
            raise ClusterError("openssh-server is not installed (scripts/setup.sh installs it)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], "client key")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        _run(["ip", "link", "add", BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge"], "bridge")
        _run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE], "bridge address")
        _run(["ip", "link", "set", BRIDGE, "up"], "bridge up")
        lines = []
        for i in range(1, self.n + 1):
            addr = f"{SUBNET}.{i + 1}"
            self._start_one(i, addr)
            self.addresses.append(addr)
            lines.append(f"Host {addr}\n  User root\n  IdentityFile {self.key}\n")
        lines.append("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
        self.ssh_config.write_text("".join(lines))
        for addr in self.addresses:
            self._wait_ssh(addr)

    def _start_one(self, i: int, addr: str) -> None:
        ns, d = self.ns(i), self.root / f"srv{i}"
        (d / "ovs").mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "hostkey")], f"{ns}: host key")
        _run(["ip", "netns", "add", ns], f"{ns}: namespace")
        _run(["ip", "link", "add", f"{ns}-h", "mtu", str(UNDERLAY_MTU), "type", "veth", "peer", "name", f"{ns}-s"], ns)
        _run(["ip", "link", "set", f"{ns}-h", "master", BRIDGE, "up"], ns)
        _run(["ip", "link", "set", f"{ns}-s", "netns", ns], ns)
        _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", f"{ns}-s"], ns)
        _run(["ip", "-n", ns, "link", "set", f"{ns}-s", "mtu", str(UNDERLAY_MTU), "up"], ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"], ns)
        (d / "sshd_config").write_text(
            f"ListenAddress {addr}\nHostKey {d / 'hostkey'}\nPidFile {d / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.key}.pub\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nUseDNS no\n"
            "StrictModes no\nMaxSessions 1000\nMaxStartups 1000\n"
        )
        log = open(d / "server.log", "wb")
        self._procs.append(
            subprocess.Popen(
                self.server_argv(ns, d),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def server_argv(self, ns: str, d: Path) -> list[str]:
        """The command that runs server `ns` (its files in d): in its network namespace, a PID and a
        mount namespace of its own, its files private, its Open vSwitch, then its sshd."""
        ovs = d / "ovs"
        # a file system of its own: the given run directories empty, this machine's state directory
        # too but for the servers' own directory (a fresh tmpfs holding a bind of it, moved over the
        # state directory); then the server's own Open vSwitch where OVS looks for it, and sshd
        hide = "".join(
            f"mkdir -p {shlex.quote(str(p))} && mount -t tmpfs netkv-server {shlex.quote(str(p))} && "
            for p in self.private_dirs
        )
        if self.root.is_relative_to(statedir.STATE_DIR):
            new = self.root / ".state"
            keep = new / self.root.relative_to(statedir.STATE_DIR)
            hide += (
                f"mkdir -p {new} && mount -t tmpfs netkv-server {new} && mkdir -p {keep}"
                f" && mount --bind {self.root} {keep} && mount --move {new} {statedir.STATE_DIR} && "
            )
        script = (
            f"{hide}mount --bind {ovs} /run/openvswitch"
            f" && ovsdb-tool create {ovs}/conf.db /usr/share/openvswitch/vswitch.ovsschema"
            f" && ovsdb-server {ovs}/conf.db --remote=punix:/run/openvswitch/db.sock"
            f" --pidfile=/run/openvswitch/ovsdb-server.pid --detach --log-file={d}/ovsdb-server.log"
            " && ovs-vsctl --no-wait init"
            f" && GLIBC_TUNABLES={MALLOC_TUNABLES} ovs-vswitchd --pidfile=/run/openvswitch/ovs-vswitchd.pid"
            f" --detach --log-file={d}/ovs-vswitchd.log"
            f" && exec /usr/sbin/sshd -D -e -f {d}/sshd_config"
        )
        ns_opts = ["--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc"]
        return ["ip", "netns", "exec", ns, "unshare", *ns_opts, "sh", "-c", script]

    def ssh(self, addr: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), *SSH_OPTS, f"root@{addr}"]

    def _wait_ssh(self, addr: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([*self.ssh(addr), "ovs-vsctl", "show"], capture_output=True, timeout=15)
            if r.returncode == 0:
                return
            for p in self._procs:
                if p.poll() is not None:
                    raise ClusterError(f"a namespace server exited at start; see {self.root}/srv*/server.log")
            time.sleep(0.3)
        raise ClusterError(f"{addr}: no SSH login with Open vSwitch within {timeout:.0f} s; see {self.root}")

    def stop(self) -> None:
        """Stop each server (ending its PID namespace's first process ends every process in it: sshd,
        Open vSwitch, Mininet's shells, agents), delete the namespaces and the bridge; idempotent."""
        spaces = {_pid_namespace(c.pid) for p in self._procs for c in _children(p.pid)} - {None}
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # unshare and sshd, the namespace's init
            p.wait(10)
        deadline = time.monotonic() + 10
        while spaces and time.monotonic() < deadline:  # the kernel ends the rest of each namespace
            if not any(_pid_namespace(q.pid) in spaces for q in psutil.process_iter()):
                break
            time.sleep(0.05)
        self._procs.clear()
        for i in range(1, self.n + 1):
            _run(["ip", "link", "del", f"{self.ns(i)}-h"], "veth", check=False)  # now, not when the kernel gets to it
            _run(["ip", "netns", "del", self.ns(i)], "namespace", check=False)
        _run(["ip", "link", "del", BRIDGE], "bridge", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RemoteServers:
    """Machines that hold the fabric's pods, reached over SSH as root (keys, no prompt): each runs
    Open vSwitch and has this repository and its virtual environment at the same paths as here."""

    addresses: list[str]
    ssh_config: Path | None = None  # ssh -F; None: ssh's own configuration (~/.ssh/config)

    def ssh(self, addr: str) -> list[str]:
        cfg = ["-F", str(self.ssh_config)] if self.ssh_config else []
        return ["ssh", *cfg, *SSH_OPTS, "-o", "ConnectTimeout=10", f"root@{addr}"]

    def start(self) -> None:
        """Check every server can run the fabric's part; the error names the server and what is missing."""
        checks = (
            (["true"], "no SSH login as root without a prompt (authorise this machine's key: ssh-copy-id root@ADDRESS)"),
            (["ovs-vsctl", "--timeout=5", "show"], "Open vSwitch is not running (ovs-ctl start; scripts/setup.sh installs it)"),
            (["mnexec", "-v"], "Mininet is missing (scripts/setup.sh)"),
            ([sys.executable, "-c", "import netkv.agents.agent"], f"no {sys.executable} with this project (clone it at the same path and run scripts/setup.sh)"),
        )  # fmt: skip
        from netkv.emulation.cleanup import NODE_RE

        for addr in self.addresses:
            for argv, why in checks:
                r = subprocess.run(
                    [*self.ssh(addr), *map(shlex.quote, argv)], capture_output=True, text=True, timeout=60
                )
                if r.returncode != 0:
                    raise ClusterError(f"server {addr}: {why}: {r.stderr.strip()[:200]}")
            r = subprocess.run([*self.ssh(addr), "ovs-vsctl", "list-br"], capture_output=True, text=True, timeout=60)
            left = [b for b in r.stdout.split() if NODE_RE.match(b)]
            if left:
                raise ClusterError(
                    f"server {addr}: {len(left)} bridges of an earlier fabric ({', '.join(left[:3])}): run `netkv clean` there"
                )

    def stop(self) -> None:
        """Nothing of the servers' own: the fabric removes its nodes from them."""


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def _pid_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def default_root() -> Path:
    """This process's directory for namespace servers (a state entry `netkv clean` knows)."""
    return statedir.STATE_DIR / f"{statedir.CLUSTER_PREFIX}{os.getpid()}"


def _namespaces() -> list[str]:
    lines = _run(["ip", "netns", "list"], "netns list", check=False).stdout.splitlines()
    return [line.split()[0] for line in lines if line.startswith(NS_PREFIX)]


def _server_processes() -> list[psutil.Process]:
    """sshd and Open vSwitch daemons of namespace servers (their command lines name a cluster dir)."""
    mark = f"{statedir.STATE_DIR}/{statedir.CLUSTER_PREFIX}"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if mark in cmd and p.pid != os.getpid():
            out.append(p)
    return out


def _links() -> list[str]:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(NS_PREFIX) and n != BRIDGE)


def _live_owner() -> bool:
    """Whether a live process owns namespace servers now (its state directory, its pid running)."""
    for e in statedir.state_entries():
        pid = statedir.owner_pid(e) if e.name.startswith(statedir.CLUSTER_PREFIX) else None
        if pid is not None and psutil.pid_exists(pid):
            return True
    return False


def leftovers() -> list[str]:
    """Namespaces, links and daemons that namespace servers left behind (`netkv clean` removes them);
    none while their owner lives (servers standing in for machines while a fabric runs on them)."""
    if _live_owner():
        return []
    out = [f"netns {n}" for n in _namespaces()] + [f"link {n}" for n in _links()]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        out.append(f"bridge {BRIDGE}")
    out += [f"process {p.pid} ({p.name()})" for p in _server_processes()]
    return out


def clean() -> int:
    """Remove what namespace servers left (daemons, namespaces, bridge); returns how many items."""
    procs = _server_processes()
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    links = _links()
    for n in links:
        _run(["ip", "link", "del", n], "link", check=False)
    names = _namespaces()
    for n in names:
        _run(["ip", "netns", "del", n], "netns", check=False)
    bridge = Path(f"/sys/class/net/{BRIDGE}").exists()
    if bridge:
        _run(["ip", "link", "del", BRIDGE], "bridge", check=False)
    return len(procs) + len(links) + len(names) + int(bridge)


def _by_server(nodes) -> list[tuple]:
    """Nodes grouped by their server, in server order."""
    key = attrgetter("server")
    return [tuple(g) for _, g in groupby(sorted(nodes, key=key), key)]


def mininet_classes(ssh_config: Path | None):
    """Mininet's remote node and link classes, logging in with `ssh -F ssh_config` (None: ssh's own)."""
    from mininet.examples.cluster import MininetCluster, RemoteGRELink, RemoteHost, RemoteOVSSwitch
    from mininet.node import Node, OVSSwitch
    from mininet.util import quietRun

    cfg = ["-F", str(ssh_config)] if ssh_config else []

    class Host(RemoteHost):
        sshbase = ["ssh", *cfg, "-q", *SSH_OPTS, "-tt"]

        def popen(self, *args, **kwargs):
            """A process in this host, over SSH with a terminal: when the local ssh ends (terminate,
            kill) the terminal hangs up and the remote process gets SIGHUP, which Mininet's popen
            (no terminal, detached) never delivers. Arguments are quoted for the remote shell, and of
            `env` only NETKV_* and PYTHON* travel (ssh carries no environment)."""
            if not self.isRemote:
                return super().popen(*args, **kwargs)
            cmd = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
            env = kwargs.pop("env", None) or {}
            keep = [f"{k}={v}" for k, v in env.items() if k.startswith(("NETKV_", "PYTHON"))]
            kwargs.setdefault("stdin", subprocess.DEVNULL)
            argv = [shlex.quote(str(a)) for a in ["env", *keep, *cmd]]
            return Node.popen(self, *argv, mncmd=["mnexec", "-a", str(self.pid)], tt=True, **kwargs)

    class Switch(RemoteOVSSwitch):
        """A remote OVS bridge whose batched ovs-vsctl lines fit a terminal line: a remote command
        goes through ssh's pty, whose line discipline keeps 4095 bytes of a line and drops the rest
        (at k = 4 a pod's batch is ~9 KB: the bridges after the cut never came up)."""

        sshbase = ["ssh", *cfg, "-q", *SSH_OPTS, "-tt"]
        argmax = PTY_LINE

        @classmethod
        def batchStartup(cls, switches, **_kwargs):  # noqa: N802 (Mininet's)
            # RemoteOVSSwitch's calls OVSSwitch.batchStartup, which reads OVSSwitch.argmax (128000)
            for group in _by_server(switches):
                OVSSwitch.batchStartup.__func__(cls, group, run=group[0].cmd)
            return switches

        @classmethod
        def batchShutdown(cls, switches, **_kwargs):  # noqa: N802
            for group in _by_server(switches):
                run = group[0].rcmd
                dels = [f"--if-exists del-br {sw}" for sw in group]
                line = "ovs-vsctl"
                for d in dels:
                    if len(line) + len(d) + 4 >= cls.argmax:
                        run(line)
                        line = "ovs-vsctl"
                    line += (" -- " if line != "ovs-vsctl" else " ") + d
                run(line)
                run("kill -HUP " + " ".join(str(sw.pid) for sw in group))
                for sw in group:
                    sw.terminate()
            return switches

    class Cluster(MininetCluster):
        sshcmd = ["ssh", *cfg, *SSH_OPTS]

    class VXLANLink(RemoteGRELink):
        """RemoteGRELink's tunnel as a VXLAN device (no GRE module here), MTU left as set."""

        VNI = 0

        def makeIntfPair(self, intfname1, intfname2, addr1=None, addr2=None, node1=None, node2=None, deleteIntfs=True):  # noqa: N802 (Mininet's)
            node1 = self.node1 if node1 is None else node1
            node2 = self.node2 if node2 is None else node2
            if getattr(node1, "server", LOCAL) == getattr(node2, "server", LOCAL):  # a veth, MTU untouched
                from mininet.link import Link

                return Link.makeIntfPair(intfname1, intfname2, addr1, addr2, node1, node2, deleteIntfs=deleteIntfs)
            self.makeTunnel(node1, node2, intfname1, intfname2, addr1, addr2)
            self.tunnel = 1
            return None

        def makeTunnel(self, node1, node2, intfname1, intfname2, addr1=None, addr2=None):  # noqa: N802
            if node2.server == LOCAL:
                return self.makeTunnel(node2, node1, intfname2, intfname1, addr2, addr1)
            ip1, ip2 = node1.serverIP, node2.serverIP
            if node1.server == LOCAL:
                ip1 = quietRun(f"ip route get {ip2}").split(" src ")[1].split()[0]
            VXLANLink.VNI += 1
            for node, name, addr, here, there in (
                (node1, intfname1, addr1, ip1, ip2),
                (node2, intfname2, addr2, ip2, ip1),
            ):
                node.rcmd(f"ip link delete {name}")
                err = node.rcmd(
                    f"ip link add name {name} type vxlan id {VXLANLink.VNI} local {here} remote {there} dstport 4789"
                )
                if err:
                    raise ClusterError(f"VXLAN tunnel {name} on {node.server}: {err.strip()}")
                if addr:
                    node.rcmd(f"ip link set {name} address {addr}")
                node.rcmd(f"ip link set dev {name} up")
                if not self.moveIntf(name, node):
                    raise ClusterError(f"could not move {name} into {node} on {node.server}")
            return None

    return Cluster, Host, Switch, VXLANLink


def build_net(
    topo: FatTree, servers: Sequence[str], ssh_config: Path | None, of_host: str, of_port: int, mtu: int = 9000
):
    """A MininetCluster of the fat-tree, placed by `placement`, every switch a userspace OVS bridge
    of its server's Open vSwitch, pointed at the controller at of_host:of_port (not started)."""
    from mininet.node import RemoteController
    from mininet.topo import Topo

    cluster, host_cls, switch_cls, link_cls = mininet_classes(ssh_config)
    place = placement(topo, servers)

    class Placed(Topo):
        def build(self):
            for s in topo.switches:
                self.addSwitch(s.name, dpid=s.dpid_str, datapath="user", server=place[s.name])
            for h in topo.hosts:
                self.addHost(h.name, ip=f"{h.ip}/8", mac=h.mac, server=place[h.name])
            seen = set()
            for lk in topo.links:
                if frozenset((lk.src, lk.dst)) not in seen:
                    seen.add(frozenset((lk.src, lk.dst)))
                    self.addLink(lk.src, lk.dst, port1=lk.src_port or None, port2=lk.dst_port or None)

    net = cluster(
        topo=Placed(),
        servers=[LOCAL, *servers],
        host=host_cls,
        switch=switch_cls,
        link=link_cls,
        controller=lambda name: RemoteController(name, ip=of_host, port=of_port),
        user="root",
        build=False,
        autoSetMacs=False,
        waitConnected=False,
    )
    net.build()
    for node in [*net.hosts, *net.switches]:
        for intf in node.intfList():
            if intf.name != "lo":
                node.cmd(f"ip link set dev {intf.name} mtu {mtu}")
    return net

"""Network runner: controller + Mininet fabric up, health and reachability checks, clean teardown.

Used by `netkv net up` and by `netkv emulate`. Start refuses to run on top of leftovers (and says
how to remove them); stop (also on Ctrl-C, SIGTERM or an exception inside `with Fabric(...)`)
stops Mininet, the controller and every process the run started, then checks nothing is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from netkv.config import TopologyCfg, parse_section
from netkv.controller.client import http_json
from netkv.emulation import cleanup, statedir
from netkv.emulation.pollidle import PollIdle
from netkv.messages import log_reason
from netkv.topology import FatTree

# node setup scripts at a time: every tc, ip and ethtool call takes the kernel's one rtnl lock, and
# at k = 8 (720 nodes) starting them all at once took 160-225 s where 4 at a time took 128 s
SETUP_PARALLEL = 4


class FabricError(RuntimeError):
    """The emulated fabric could not be brought up (the message says why and what to do)."""


@contextlib.contextmanager
def _signals_deferred(log):
    """Ctrl-C, SIGTERM and SIGHUP do not interrupt a teardown (one that stopped half-way left the
    controller running); each is answered with a line saying the cleanup is under way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in sigs}

    def note(signum, frame):
        log(f"signal {signum} during teardown: finishing the cleanup first")

    for s in sigs:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# TCP counters of /proc/net/{snmp,netstat} that tell how transfers lost and recovered packets
TCP_COUNTERS = (
    "Tcp.OutSegs",
    "Tcp.RetransSegs",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPLossProbes",
    "TcpExt.TCPSpuriousRTOs",
)


def parse_proc_net(text: str) -> dict[str, int]:
    """`Proto: names` / `Proto: values` line pairs (/proc/net/snmp, /proc/net/netstat) as
    {"Proto.name": value}."""
    out: dict[str, int] = {}
    lines = [ln.split() for ln in text.splitlines() if ":" in ln]
    for names, values in zip(lines, lines[1:], strict=False):  # a header line, then its values line
        if len(names) < 2 or names[0] != values[0] or _is_int(names[1]) or not _is_int(values[-1]):
            continue
        proto = names[0].rstrip(":")
        out.update((f"{proto}.{k}", int(v)) for k, v in zip(names[1:], values[1:], strict=False) if _is_int(v))
    return out


def parse_tc_root_drops(text: str) -> dict[str, int]:
    """Per device, the packets its root qdisc dropped, from `tc -s qdisc show` (a root's count
    includes its children's: the fair-queue buckets' drops show at the root)."""
    out: dict[str, int] = {}
    dev = None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["qdisc"]:
            dev = words[words.index("dev") + 1] if "dev" in words and "root" in words else None
        elif dev is not None and "(dropped" in line:
            out[dev] = out.get(dev, 0) + int(line.split("(dropped", 1)[1].split(",")[0])
            dev = None
    return out


def _is_int(s: str) -> bool:
    return s.lstrip("-").isdigit()


WMEM_DEFAULT = Path("/proc/sys/net/core/wmem_default")
WMEM_CAP = 256 << 20


def ovs_send_buffer_bytes(spec: FabricSpec, topo: FatTree) -> int:
    """The send buffer an ovs-vswitchd needs so that its switch's queues, not the socket, decide
    what is dropped. The userspace datapath sends every port's packets through one AF_PACKET socket;
    a packet counts against that socket's buffer until its port's qdisc has sent it, and a full
    buffer makes the send fail (EAGAIN: ovs-vswitchd drops the packet, logs "error sending Ethernet
    packet", and no counter of the port shows it). So: every port of the busiest switch with every
    fair-queue bucket full (twice the bytes: a frame's buffer accounting adds its skb), plus a full
    ACK queue (1,000 packets of 2 KB) per port."""
    from netkv.topology.mininet_fabric import emulated_mbps

    q = spec.mtu + 100
    ports: dict[str, int] = {}
    for lk in topo.links:
        if topo.nodes[lk.src].is_switch:
            rate = emulated_mbps(lk.gbps, spec.bandwidth_scale) * 1e6 / 8
            limit = max(2 * q, rate * spec.queue_ms / 1000)
            ports[lk.src] = ports.get(lk.src, 0) + int(2 * max(1, spec.fair_buckets) * limit + 1000 * 2048)
    return min(WMEM_CAP, max(ports.values(), default=0))


def raise_wmem_default(need: int) -> int | None:
    """Raise net.core.wmem_default (one value for every namespace) to `need` while the fabric lives;
    returns the value it had, kept in the state directory until `restore_wmem_default` (a crashed
    run leaves it for `netkv clean`), or None when it was already high enough."""
    cur = int(WMEM_DEFAULT.read_text())
    if cur >= need:
        return None
    statedir.STATE_DIR.mkdir(parents=True, exist_ok=True)
    (statedir.STATE_DIR / f"{statedir.WMEM_PREFIX}{os.getpid()}").write_text(str(cur))
    WMEM_DEFAULT.write_text(str(need))
    return cur


def restore_wmem_default(orig: int, owner: int | None = None) -> None:
    WMEM_DEFAULT.write_text(str(orig))
    (statedir.STATE_DIR / f"{statedir.WMEM_PREFIX}{owner or os.getpid()}").unlink(missing_ok=True)


# what a FAILED-* line of a node's setup script means
_SETUP_FAILURES = {
    "FAILED-TC": "tc refused a command",
    "FAILED-ARP": "ip refused a static ARP entry",
}


def _batch(tool: str, lines: list[str], failed: str) -> str:
    """Shell lines running `tool -batch` over `lines` (a here-document: the script carries them)."""
    return f"{tool} -batch - >/dev/null 2>&1 <<'NETKV_BATCH' || echo {failed}\n" + "\n".join(lines) + "\nNETKV_BATCH\n"


@dataclass
class FabricSpec:
    """Everything needed to build one emulated fabric (wall-clock units)."""

    topology: TopologyCfg = field(default_factory=lambda: TopologyCfg(k=2, gpus_per_server=2))
    bandwidth_scale: float = 4000.0
    mtu: int = 9000
    queue_ms: float = 20.0
    qdisc: str = "bfifo"
    fair_buckets: int = 64  # per-flow fair queueing at switch ports (0: plain drop-tail)
    tcp_cc: str = "cubic"
    ovs_daemons: str = "switch"  # "switch": one ovs-vswitchd per switch; "shared": the system's
    servers: int = 0  # 0: this machine; N: across N stand-in servers (emulation/cluster.py)
    server_hosts: tuple[str, ...] = ()  # or across these machines (SSH as root)
    cluster_address: str = ""  # this machine's address on their network (the controller's)
    ssh_config: str = ""  # ssh -F for reaching them ("": ssh's own defaults)
    max_link_mbps: float = 1000.0
    # per-switch daemons keep the memory they free (topology/ovs_daemon.py MALLOC_TUNABLES); False
    # only for benchmarks that measure glibc's default beside it
    ovs_keep_memory: bool = True
    poll_idle: bool = True  # hold the CPUs in polling idle while the fabric lives (emulation/pollidle.py)
    poll_interval: float = 1.0  # wall seconds
    publish_delay: float = 0.0  # wall seconds
    floor_fraction: float = 0.25
    of_port: int = 6653
    rest_port: int = 8080

    @classmethod
    def from_experiment(cls, exp, **overrides) -> FabricSpec:
        em, te = exp.emulation, exp.telemetry
        spec = cls(
            topology=exp.topology,
            bandwidth_scale=em.bandwidth_scale,
            mtu=em.mtu,
            queue_ms=em.queue_ms,
            max_link_mbps=em.max_link_mbps,
            qdisc=em.qdisc,
            fair_buckets=em.fair_queue_buckets,
            tcp_cc=em.tcp_congestion_control,
            ovs_daemons=em.ovs_daemons,
            poll_idle=em.poll_idle,
            servers=em.servers,
            server_hosts=tuple(em.server_hosts),
            cluster_address=em.cluster_address,
            ssh_config=em.ssh_config,
            # telemetry is specified in real-cluster seconds; the emulation runs time_dilation slower
            poll_interval=te.poll_interval_s * em.time_dilation,
            publish_delay=te.publish_delay_s * em.time_dilation,
            floor_fraction=te.floor_fraction,
        )
        for k, v in overrides.items():
            setattr(spec, k, v)
        return spec

    @classmethod
    def for_fattree(cls, k: int, gpus: int, **kw) -> FabricSpec:
        """A fabric of the default link rates (`netkv net up --k --gpus`, tests, benchmarks)."""
        return cls(topology=parse_section("topology", {"k": k, "gpus_per_server": gpus}, "--k/--gpus"), **kw)

    @property
    def routing(self) -> str:
        return self.topology.routing

    def fattree(self) -> FatTree:
        return FatTree.from_config(self.topology)

    def controller_config(self) -> dict:
        """What the controller is started with: the [topology] section as the experiment has it (the
        controller parses it with netkv.config, as every process does) and the telemetry in wall time."""
        return {
            "topology": dataclasses.asdict(self.topology),
            "bandwidth_scale": self.bandwidth_scale,
            "poll_interval": self.poll_interval,
            "publish_delay": self.publish_delay,
            "floor_fraction": self.floor_fraction,
        }


def require_root(system_ovs: bool = True) -> None:
    """Root and the tools; the system's Open vSwitch running when the fabric uses it (`shared`)."""
    if os.geteuid() != 0:
        raise FabricError("the emulated fabric needs root (Mininet, Open vSwitch); run as root")
    for tool in ("mn", "mnexec", "ovs-vsctl", "ovsdb-tool", "ovsdb-server", "ovs-vswitchd"):
        if shutil.which(tool) is None:
            raise FabricError(f"'{tool}' is missing: run scripts/setup.sh as root")
    if system_ovs and subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode != 0:
        raise FabricError(
            "Open vSwitch is not running (emulation.ovs_daemons = 'shared' uses the system's): "
            "run scripts/setup.sh (it starts ovsdb-server and ovs-vswitchd)"
        )


def controller_command(
    config: Path, rest_port: int, of_port: int, of_host: str = "127.0.0.1", of_socket: Path | None = None
) -> list[str]:
    """The controller's command line: OpenFlow on a Unix socket, or on of_host:of_port (a cluster's
    switches reach it over the servers' network); REST always on 127.0.0.1."""
    listen = (
        ["--of-socket", str(of_socket)] if of_socket is not None else ["--of-host", of_host, "--of-port", str(of_port)]
    )
    return [
        sys.executable,
        "-m",
        "netkv.controller.launcher",
        "--config",
        str(config),
        *listen,
        "--rest-port",
        str(rest_port),
    ]


def make_fabric(spec: FabricSpec, log_dir: Path, log=print) -> Fabric:
    """The fabric the spec asks for: on this machine, or across servers (stand-ins or machines)."""
    if spec.servers or spec.server_hosts:
        from netkv.emulation.cluster_fabric import ClusterFabric

        return ClusterFabric(spec, log_dir, log=log)
    return Fabric(spec, log_dir, log=log)


class Fabric:
    """One controller + one Mininet fat-tree; use as a context manager."""

    of_host = "127.0.0.1"  # where the switches reach the controller (no Unix socket)
    socket_poll_s = 0.1  # how often sockets_ready is asked while agents start

    def __init__(self, spec: FabricSpec, log_dir: Path, log=print):
        self.spec = spec
        # this run's directories (results, agent sockets): on other servers they are not shared
        # (share() copies into them); stand-in servers see them empty, as another machine would
        self.run_dirs: list[Path] = []
        self.topo = spec.fattree()
        self.log_dir = Path(log_dir)
        self.log = log
        self.net = None
        self.ctrl: subprocess.Popen | None = None
        self.timings: dict[str, float] = {}
        self._old_handlers = {}
        self._owns_state = False  # set once this instance has created anything to tear down
        self.ovs_root: Path | None = None  # per-switch OVS daemons and the OpenFlow socket
        self._wmem_orig: int | None = None  # net.core.wmem_default before this fabric raised it
        self.poll_idle = PollIdle()  # held from start() to stop() when spec.poll_idle

    @property
    def per_switch(self) -> bool:
        return self.spec.ovs_daemons == "switch"

    @property
    def of_socket(self) -> Path | None:
        return self.ovs_root / "of.sock" if self.ovs_root is not None else None

    def ofctl_target(self, switch: str) -> str:
        """What ovs-ofctl is given to reach a switch: its bridge name in the system daemon, or the
        bridge's management socket in its own daemon."""
        if self.per_switch:
            from netkv.topology.ovs_daemon import SwitchDaemon

            return SwitchDaemon(switch, self.ovs_root / switch).ofctl_target()
        return switch

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.spec.rest_port}/netkv"

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self):
        self._install_signal_handlers()
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_signal_handlers()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self._restore_signal_handlers()
        return False

    def _install_signal_handlers(self):
        def on_term(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, on_term)
            except ValueError:  # not the main thread
                pass

    def _restore_signal_handlers(self):
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}

    def preflight(self) -> None:
        """Everything that can refuse a start before anything is created: root and tools, link
        rates Mininet can shape, no leftovers of an earlier run."""
        require_root(system_ovs=not self.per_switch)
        from netkv.topology.mininet_fabric import check_rates

        try:
            check_rates(self.topo, self.spec.bandwidth_scale, self.spec.max_link_mbps)
        except ValueError as e:
            raise FabricError(str(e)) from None
        live = statedir.live_runs()
        if live:
            raise FabricError(
                "another emulated run is live: " + "; ".join(live) + "; one machine holds one "
                "fabric at a time: wait for it to end or stop it (Ctrl-C, or kill its pid)"
            )
        left = cleanup.find_leftovers()
        if left:
            raise FabricError("emulation leftovers found: " + "; ".join(left) + f"; {cleanup.CLEAN_HINT}")

    def start(self) -> None:
        self.preflight()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._owns_state = True
        t0 = time.monotonic()
        if self.per_switch:
            self.ovs_root = statedir.claim_ovs_dir()
        # before any ovs-vswitchd opens its sockets; restored at teardown
        self._wmem_orig = raise_wmem_default(ovs_send_buffer_bytes(self.spec, self.topo))
        if self.spec.poll_idle and not self.poll_idle.acquire():
            self.log(
                f"warning: CPUs not held in polling idle ({self.poll_idle.error}): shaped links may run "
                "below their rate on an idle machine (docs/emulation.md, 'Timers and idle CPUs')"
            )
        self._before_controller()
        self.start_controller()
        self._build_mininet()
        self.timings["build_s"] = time.monotonic() - t0
        # the controller writes every switch's rules: ~0.1 s each at k = 8 on this VM
        self.wait_ready(timeout=max(120.0, 1.0 * len(self.topo.switches)), progress_s=15)
        self.timings["ready_s"] = time.monotonic() - t0
        self.log(
            f"fabric up: {len(self.topo.switches)} switches, {self.topo.n_hosts} hosts, "
            f"ready in {self.timings['ready_s']:.1f} s"
        )

    def start_controller(self) -> None:
        cfg = self.log_dir / "controller.json"
        cfg.write_text(json.dumps(self.spec.controller_config(), indent=1))
        logf = open(self.log_dir / "controller.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.of_socket is not None:
            self.of_socket.unlink(missing_ok=True)
        self.ctrl = subprocess.Popen(
            controller_command(cfg, self.spec.rest_port, self.spec.of_port, self.of_host, self.of_socket),
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ctrl.poll() is not None:
                said = log_reason(self.log_dir / "controller.log")
                raise FabricError(
                    f"the controller exited at start (code {self.ctrl.returncode}: {said}); "
                    f"see {self.log_dir / 'controller.log'}"
                )
            try:
                http_json(f"{self.rest}/health", timeout=1)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise FabricError(f"the controller's REST API did not come up; see {self.log_dir / 'controller.log'}")

    def stop_controller(self) -> None:
        if self.ctrl is not None and self.ctrl.poll() is None:
            self.ctrl.terminate()
            try:
                self.ctrl.wait(5)
            except subprocess.TimeoutExpired:
                self.ctrl.kill()
                self.ctrl.wait(5)
        self.ctrl = None

    def kill_controller(self) -> None:
        """SIGKILL the controller (a crash; the switches keep their rules: fail mode secure)."""
        if self.ctrl is not None and self.ctrl.poll() is None:
            self.ctrl.kill()
            self.ctrl.wait(10)
        self.ctrl = None

    def kill_switch(self, name: str) -> None:
        """SIGKILL one switch's ovs-vswitchd (a crash: its datapath goes with it)."""
        if not self.per_switch:
            raise FabricError("killing one switch needs emulation.ovs_daemons = 'switch'")
        d = self.net.get(name).daemon
        pid = int(d.pidfile("ovs-vswitchd").read_text().split()[0])
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(10)
        d.pidfile("ovs-vswitchd").unlink(missing_ok=True)

    def start_switch(self, name: str, timeout: float = 60.0) -> float:
        """Start a killed switch's ovs-vswitchd again on its database: the bridge, ports and controller
        come back, the controller reinstalls the rules. Returns the seconds until the fabric is
        ready again (every switch connected with its rules)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        # the controller notices the lost connection first (else "ready" would be the old state)
        while self.health().get("switches_connected") == len(self.topo.switches):
            if time.monotonic() > deadline:
                raise FabricError(f"the controller did not notice {name}'s daemon go away")
            time.sleep(0.05)
        node = self.net.get(name)
        p = subprocess.run(node.daemon.vswitchd_cmd(node.pid), capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise FabricError(f"{name}: ovs-vswitchd did not restart: {p.stderr.strip()[:200]}")
        self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        return time.monotonic() - t0

    def restart_switch(self, name: str, timeout: float = 60.0) -> float:
        """A switch crash and restart (`kill_switch`, then `start_switch`); returns the seconds from
        the kill until the fabric is ready again."""
        t0 = time.monotonic()
        self.kill_switch(name)
        self.start_switch(name, timeout)
        return time.monotonic() - t0

    def _build_mininet(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import RemoteController

        from netkv.topology.mininet_fabric import DaemonOVSSwitch, NetKVFatTree, UserOVSSwitch

        setLogLevel("error")
        s = self.spec
        mtopo = NetKVFatTree(
            fattree=self.topo,
            bandwidth_scale=s.bandwidth_scale,
            mtu=s.mtu,
            queue_ms=s.queue_ms,
            qdisc=s.qdisc,
            max_mbps=s.max_link_mbps,
        )
        if self.per_switch:
            root, target = str(self.ovs_root), f"unix:{self.of_socket}"
            switch = functools.partial(
                DaemonOVSSwitch, run_root=root, controller=target, keep_memory=self.spec.ovs_keep_memory
            )
            controller = None  # each switch's own daemon is pointed at the controller's socket
        else:
            switch = UserOVSSwitch
            controller = lambda name: RemoteController(name, ip="127.0.0.1", port=s.of_port)  # noqa: E731
        t = self.topo
        self.log(
            f"building the fabric: {len(t.switches)} switches"
            + (" (an ovsdb-server and an ovs-vswitchd each)" if self.per_switch else "")
            + f", {t.n_hosts} hosts, {len(t.links) // 2} links"
        )
        self.net = Mininet(
            topo=mtopo,
            switch=switch,
            build=False,
            autoSetMacs=False,
            controller=controller,
            waitConnected=False,
        )
        t0 = time.monotonic()
        self.net.build()
        self.log(f"  nodes and links built in {time.monotonic() - t0:.1f} s; starting the switches")
        self.net.start()  # OVSSwitch.start re-applies Mininet's tc config, so tune afterwards
        self.log(f"  switches started at {time.monotonic() - t0:.1f} s; shaping and tuning every interface")
        self._tune_interfaces()
        self._static_arp()
        self.log(f"  interfaces tuned at {time.monotonic() - t0:.1f} s; waiting for the controller's routes")

    def _tune_interfaces(self) -> None:
        """MTU and offloads off on every interface, TCP settings in every GPU's namespace, and the
        per-flow fair queues; one script per node (run in the node's namespace), all side by side."""
        from netkv.topology.mininet_fabric import emulated_mbps, fair_queue_batch

        mtu, s = self.spec.mtu, self.spec
        off = "rx off tx off sg off tso off gso off gro off"
        scripts = {}

        def fair_queues(node, names: list[str], mbps_of, host: bool) -> str:
            if s.fair_buckets <= 0:
                return ""
            lines = []
            dels = "".join(f"tc qdisc del dev {n} root >/dev/null 2>&1\n" for n in names)  # Mininet's HTB, if any
            for n in names:
                lines += fair_queue_batch(n, mbps_of(n), mtu, s.queue_ms, s.fair_buckets, host=host)
            return dels + _batch("tc", lines, "FAILED-TC")

        def switch_port_mbps(n: str) -> float:
            sw, port = n.rsplit("-eth", 1)
            return emulated_mbps(self.topo.link_by_port[(sw, int(port))].gbps, s.bandwidth_scale)

        gpu_mbps = emulated_mbps(self.topo.rates.rate("gpu"), s.bandwidth_scale)
        for h in self.net.hosts:
            dev = h.defaultIntf().name
            scripts[h] = (
                f"ip link set {dev} mtu {mtu}\nethtool -K {dev} {off} >/dev/null 2>&1\n"
                f"sysctl -qw net.ipv4.tcp_congestion_control={s.tcp_cc}\n"
                # KV connections are long-lived (like RDMA queue pairs): an idle gap must not reset
                # the congestion window to slow start
                "sysctl -qw net.ipv4.tcp_slow_start_after_idle=0\n"
                # each GPU's own NIC: per-flow fair too, with deep per-flow queues
                + fair_queues(h, [dev], lambda _n: gpu_mbps, host=True)
            )
        for sw in self.net.switches:
            names = [i.name for i in sw.intfList() if i.name != "lo"]
            body = "".join(f"ip link set {n} mtu {mtu}\n" for n in names)
            body += "".join(f"ethtool -K {n} {off} >/dev/null 2>&1\n" for n in names)
            scripts[sw] = body + fair_queues(sw, names, switch_port_mbps, host=False)
        self._run_on_nodes(scripts, "interface setup")

    def _write_node_files(self, files: dict) -> None:
        """Write {node: (path, text)} where each node's shell reads it (here: this machine)."""
        for path, text in files.values():
            path.write_text(text)

    def _run_on_nodes(self, scripts: dict, what: str) -> None:
        """Run one shell script per Mininet node, SETUP_PARALLEL at a time; a line FAILED* fails it."""
        files = {node: self.log_dir / f".setup-{node.name}.sh" for node in scripts}
        self._write_node_files({node: (files[node], body) for node, body in scripts.items()})
        failed, why = [], set()
        pending, running = deque(files), deque()
        width = SETUP_PARALLEL
        while pending or running:
            while pending and len(running) < width:
                node = pending.popleft()
                node.sendCmd(f"sh {files[node]}")
                running.append(node)
            done = running.popleft()
            out = done.waitOutput()
            files[done].unlink(missing_ok=True)
            if "FAILED" in out:
                failed.append(done.name)
                why.update(line.strip() for line in out.splitlines() if line.strip().startswith("FAILED"))
        if failed:
            hints = [_SETUP_FAILURES.get(w, "tc or ip refused a command") for w in sorted(why)]
            raise FabricError(f"{what} failed on {', '.join(failed[:4])}: {'; '.join(dict.fromkeys(hints))}")

    def _static_arp(self) -> None:
        lines = [f"neigh replace {h.ip} lladdr {h.mac} dev {{dev}} nud permanent" for h in self.topo.hosts]
        scripts = {}
        for h in self.net.hosts:
            dev = h.defaultIntf().name
            scripts[h] = _batch("ip", [x.format(dev=dev) for x in lines], "FAILED-ARP")
        self._run_on_nodes(scripts, "static ARP")

    def _kill_host_processes(self) -> None:
        """SIGKILL whatever still runs in a host's network namespace besides its shell (a process
        started in a host outlives Mininet's stop and keeps the namespace, e.g. a script's iperf3)."""
        from netkv.emulation.remote import kill_in_namespaces

        kill_in_namespaces([h.pid for h in self.net.hosts if h.pid])

    # ---- files and sockets of the machines that hold the hosts (here: this one) ------------------
    def share(self, files: list[Path] = (), dirs: list[Path] = ()) -> None:
        """Make these files readable and these directories exist at the same paths wherever hosts
        run (here they already are)."""

    def forget_socket(self, sock_dir: Path, name: str) -> None:
        """Remove agent `name`'s socket before it starts (a killed agent's file stays behind)."""
        (sock_dir / f"{name}.sock").unlink(missing_ok=True)

    def sockets_ready(self, sock_dir: Path, names: list[str]) -> list[str]:
        """Those of `names` whose agent socket this machine can connect to."""
        from netkv.emulation.remote import sockets_present

        return sockets_present(sock_dir, names)

    def _stop_namespaces(self) -> None:
        """Stop every switch's daemons, then end every node's shell: each node is a network
        namespace held by its shell alone (host processes are gone by now), and the kernel deletes a
        namespace's veths with it. Mininet's own stop deletes the 896 links of k = 8 one `ip link
        del` at a time first (half of a 80 s teardown); the system-OVS layout still needs it, for
        its bridges live in the system's daemon."""
        from netkv.topology import ovs_daemon

        net = self.net
        ovs_daemon.stop([sw.daemon for sw in net.switches])
        for node in [*net.switches, *net.hosts]:
            node.terminate()

    def stop(self) -> None:
        if not self._owns_state:
            return  # refused to start (e.g. leftovers): touch nothing
        with _signals_deferred(self.log):
            self._stop()

    def _stop(self) -> None:
        t0 = time.monotonic()
        # the controller first: every link Mininet removes is a port-status event, and rerouting
        # around each one costs the controller seconds of CPU at k = 8 while teardown needs it
        self.stop_controller()
        if self.net is not None:
            self._kill_host_processes()
            try:
                if self.per_switch:
                    self._stop_namespaces()
                else:
                    self.net.stop()
            except Exception as e:  # keep cleaning even if Mininet trips
                self.log(f"warning: Mininet stop failed: {e}")
            self.net = None
        self._after_nodes_stopped()
        self.timings["teardown_nodes_s"] = time.monotonic() - t0
        if self.ovs_root is not None:
            from netkv.topology import ovs_daemon

            stray = ovs_daemon.running_daemons(str(self.ovs_root))  # e.g. a build that failed half-way
            for pid in stray:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.ovs_root, ignore_errors=True)
            self.ovs_root = None
        if self._wmem_orig is not None:
            restore_wmem_default(self._wmem_orig)
            self._wmem_orig = None
        self.poll_idle.release()
        left = cleanup.find_leftovers()
        if left:
            cleanup.clean(verbose=False)
            left = cleanup.find_leftovers()
        self.timings["teardown_s"] = time.monotonic() - t0
        self._owns_state = False
        if left:
            self.log("warning: leftovers after teardown: " + "; ".join(left) + f"; {cleanup.CLEAN_HINT}")

    def _before_controller(self) -> None:
        """What a subclass starts before the controller (e.g. the network it listens on)."""

    def _after_nodes_stopped(self) -> None:
        """What a subclass stops once the nodes are gone, before the leftover check."""

    # ---- checks ------------------------------------------------------------------------------
    def health(self) -> dict:
        return http_json(f"{self.rest}/health")

    def wait_ready(self, timeout: float = 60, progress_s: float = 0) -> dict:
        """Poll the controller's health until every switch is connected and routed; with
        `progress_s`, log how many are every so often."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + progress_s
        h = {}
        while time.monotonic() < deadline:
            try:
                h = self.health()
                if h.get("ready"):
                    return h
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if progress_s and h and time.monotonic() >= next_note:
                next_note += progress_s
                self.log(
                    f"  {h['switches_connected']}/{h['switches_expected']} switches connected, "
                    f"{h['routes_installed']} routed"
                )
            if self.ctrl is not None and self.ctrl.poll() is not None:
                raise FabricError(f"the controller died; see {self.log_dir / 'controller.log'}")
            time.sleep(0.3)
        raise FabricError(f"fabric not ready after {timeout:.0f} s (health: {h})")

    def host(self, name: str):
        return self.net.get(name)

    @staticmethod
    def _on_every_node(nodes: list, cmd: str) -> list[str]:
        """One fixed command's output from each node (all nodes side by side)."""
        for n in nodes:
            n.sendCmd(cmd)
        return [n.waitOutput() for n in nodes]

    def queue_drops(self) -> dict[str, int]:
        """Packets dropped by the shaped ports' queues, summed per kind of hop ("host->server": a GPU's
        NIC, "server->edge", "edge->agg", "agg->core", and down): where a fabric that should be
        lossless loses packets."""
        kind = {n.name: n.kind for n in self.topo.nodes.values()}
        out: dict[str, int] = {}
        for text in self._on_every_node(list(self.net.hosts) + list(self.net.switches), "tc -s qdisc show"):
            for dev, dropped in parse_tc_root_drops(text).items():
                name, _, port = dev.rpartition("-eth")
                if not port.isdigit():
                    continue
                if kind.get(name) == "host":
                    hop = "host->server"
                elif (name, int(port)) in self.topo.link_by_port:
                    lk = self.topo.link_by_port[(name, int(port))]
                    hop = f"{kind[lk.src]}->{kind[lk.dst]}"
                else:
                    continue
                out[hop] = out.get(hop, 0) + dropped
        return out

    def tcp_counters(self) -> dict[str, int]:
        """The hosts' TCP counters (TCP_COUNTERS), summed over their network namespaces: read them
        before and after a policy to see what its transfers (and the background) retransmitted."""
        total = dict.fromkeys(TCP_COUNTERS, 0)
        for text in self._on_every_node(list(self.net.hosts), "cat /proc/net/snmp /proc/net/netstat"):
            got = parse_proc_net(text)
            for k in TCP_COUNTERS:
                total[k] += got.get(k, 0)
        return total

    def reachability(self, pairs: list[tuple[str, str]] | None = None, timeout_s: int = 2) -> list[tuple[str, str]]:
        """Ping every (src, dst) pair (all ordered pairs by default) from one process (raw sockets in
        the hosts' namespaces, `emulation/ping.py`); returns the pairs that never answered."""
        t = self.topo
        if pairs is None:
            idx = [(s, d) for s in range(t.n_hosts) for d in range(t.n_hosts) if s != d]
        else:
            idx = [(t.host_index[s], t.host_index[d]) for s, d in pairs]
        return [(t.hosts[s].name, t.hosts[d].name) for s, d in self._ping(idx, timeout_s)]

    def _ping(self, idx: list[tuple[int, int]], timeout_s: float) -> list[tuple[int, int]]:
        """The (src, dst) host-index pairs that never answered."""
        from netkv.emulation.ping import ping_pairs

        t = self.topo
        sources = {s: self.host(t.hosts[s].name).pid for s in {s for s, _ in idx}}
        return ping_pairs(sources, idx, lambda h: t.hosts[h].ip, timeout_s=timeout_s)

    def dump_flows(self) -> dict[str, str]:
        out = {}
        for sw in self.topo.switches:
            p = subprocess.run(
                ["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", self.ofctl_target(sw.name)],
                capture_output=True,
                text=True,
            )
            out[sw.name] = p.stdout
        return out

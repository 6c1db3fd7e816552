"""Mininet builder of the shared fat-tree: OVS userspace switches, shaped links, no netem.

Every switch is an `OVSSwitch` with the userspace datapath (`datapath='user'`, this machine has no
openvswitch kernel module), OpenFlow 1.3 only, fail mode secure (no learning-switch fallback when
the controller is away), and the dpid of the shared ID scheme. Links are `TCLink`s with only `bw`
set (the tier's real rate / bandwidth_scale), through `ShapedIntf`, which calibrates Mininet's HTB
for jumbo frames: burst and cburst sized to the MTU and rate, and an explicit bfifo leaf queue sized
in time (rate x queue_ms) at switch ports; a GPU's own interface gets a NIC-like 1000-packet queue. netem is never used (sch_netem is absent here). Offloads are turned off
on every interface (TCP stalls on the userspace datapath otherwise) and the MTU is set everywhere.

`.venv/bin/python $(which mn) --custom topology/mn_custom.py --topo netkv-fattree,k=4 --controller remote
 --switch ovs,datapath=user,protocols=OpenFlow13` builds the same fabric by hand (the venv's Python:
 it has the netkv package).
"""

from __future__ import annotations

import math
from pathlib import Path

from mininet.link import TCIntf, TCLink
from mininet.node import OVSSwitch, Switch
from mininet.topo import Topo

from netkv.config import parse_section
from netkv.topology import ovs_daemon
from netkv.topology.fattree import FatTree

OFFLOADS = ("rx", "tx", "sg", "tso", "gso", "gro")


class LinkConfigError(ValueError):
    """The requested emulated links cannot be built faithfully here."""


def emulated_mbps(gbps: float, bandwidth_scale: float) -> float:
    return gbps * 1000.0 / bandwidth_scale


def check_rates(topo: FatTree, bandwidth_scale: float, max_mbps: float = 1000.0) -> dict[str, float]:
    """Emulated Mbit/s per tier; refuses rates above what Mininet's HTB shaping allows."""
    out = {}
    for level in ("gpu", "server", "edge", "core"):
        mbps = emulated_mbps(topo.rates.rate(level), bandwidth_scale)
        if mbps > max_mbps:
            raise LinkConfigError(
                f"emulation.bandwidth_scale: the '{level}' tier needs {mbps:.0f} Mbit/s per link "
                f"({topo.rates.rate(level):g} Gbit/s / {bandwidth_scale:g}), above the {max_mbps:g} Mbit/s "
                "that Mininet can shape (and that the userspace datapath can forward); raise bandwidth_scale "
                f"to at least {math.ceil(topo.rates.rate(level) * 1000 / max_mbps)}"
            )
        if mbps < 0.5:
            raise LinkConfigError(
                f"emulation.bandwidth_scale: the '{level}' tier would get {mbps:.3f} Mbit/s; lower it"
            )
        out[level] = mbps
    return out


# HTB's token bucket per shaped class, in frames. A real port sends at its line rate and no faster;
# every byte of burst lets an idle link send that much at veth speed. With 4 frames (36 KB at MTU
# 9000), a 60 KB KV transfer over an idle 56 Mbit/s GPU link took 0.37x its bytes / rate (measured,
# scripts/bench_fabric.py prints these transfer ratios). One frame is the least a shaper can send.
BURST_FRAMES = 1


class ShapedIntf(TCIntf):
    """TCIntf whose HTB class is sized for the MTU and whose queue is a bfifo sized in time."""

    def config(self, queue_ms: float = 5.0, mtu: int = 9000, qdisc: str = "bfifo", **params):
        self._queue_ms = queue_ms
        self._mtu = mtu
        self._qdisc = qdisc
        for forbidden in ("delay", "jitter", "loss", "max_queue_size"):
            if params.get(forbidden):
                raise LinkConfigError(f"link parameter '{forbidden}' needs netem, which this kernel lacks")
        return super().config(**params)

    def bwCmds(self, bw=None, **kw):  # noqa: N802 (Mininet's name)
        if bw is None:
            return [], " root "
        mtu = getattr(self, "_mtu", 9000)
        rate_bps = bw * 1e6 / 8
        burst = BURST_FRAMES * (mtu + 100)
        limit = int(max(2 * (mtu + 100), rate_bps * getattr(self, "_queue_ms", 5.0) / 1000))
        qdisc = getattr(self, "_qdisc", "bfifo")
        if not isinstance(self.node, Switch):
            # A GPU's own NIC: a real host never tail-drops its own TCP's packets (TCP Small Queues
            # keeps each socket to ~2 packets in the device queue, which backpressures the stack).
            # A time-sized queue here holds only ~3 jumbo frames at low emulated rates (31 KB at
            # 50 Mbit/s); TSQ overfills it, TCP loses packets it never sent and stalls on timers
            # (measured: ~0.4 Mbit/s on a 50 Mbit/s link). So: Linux's default device queue.
            qdisc = "host"
        if qdisc == "host":
            leaf = "pfifo limit 1000"
        elif qdisc == "bfifo":
            leaf = f"bfifo limit {limit}"
        elif qdisc == "pfifo":
            leaf = f"pfifo limit {max(2, limit // (mtu + 100))}"
        elif qdisc == "sfq":
            leaf = f"sfq limit {max(4, limit // (mtu + 100) * 4)} quantum {mtu + 100} perturb 0"
        elif qdisc == "fq_codel":
            leaf = f"fq_codel limit {max(16, limit // 1000)} memory_limit {max(limit, 4 * (mtu + 100))} quantum {mtu + 100}"
        else:
            raise LinkConfigError(f"emulation.qdisc: unknown leaf queue '{qdisc}' (bfifo, pfifo, sfq, fq_codel)")
        cmds = [
            "%s qdisc add dev %s root handle 5:0 htb default 1",
            "%s class add dev %s parent 5:0 classid 5:1 htb "
            + f"rate {bw:f}Mbit ceil {bw:f}Mbit burst {burst} cburst {burst} mtu {mtu + 100} quantum {mtu + 100}",
            "%s qdisc add dev %s parent 5:1 handle 10: " + leaf,
        ]
        return cmds, " parent 10: "


UNSHAPED_MBPS = 100000  # an HTB class that never binds: the TBF below it shapes
HOST_BUCKET_PACKETS = 64  # per-flow queue at a GPU's own NIC: deep enough that TSQ, not drops, limits TCP


def fair_queue_batch(
    dev: str,
    mbps: float,
    mtu: int = 9000,
    queue_ms: float = 5.0,
    buckets: int = 64,
    host: bool = False,
    tbf_extra_bytes: int = 0,
) -> list[str]:
    """`tc -batch` lines that make a switch port's egress a fair queue at `mbps`.

    The kernel here has neither sfq nor fq_codel, and TCP alone shares a shallow drop-tail queue
    very unevenly at these window sizes (measured 30/70 splits). This builds stochastic fair
    queueing from what exists: an HTB parent at the link rate with `buckets` equal child classes
    (guaranteed rate/buckets, ceil = rate, DRR among them) and a u32 hash on the TCP source port
    that spreads flows over the children; each child has a bfifo sized in time. Non-TCP traffic
    goes to the first child. The device must have no root qdisc yet (`tc qdisc del dev DEV root`).

    `tbf_extra_bytes` deepens the TBF's bucket beyond one frame (the fabric keeps one frame;
    scripts/bench_port_shaping.py measures what a deeper one changes).

    `host=True` shapes a GPU's own NIC: the same per-flow fairness (what fq gives a real host), with
    each child queue `HOST_BUCKET_PACKETS` frames deep, since a host never drops its own TCP's packets.

    Pure TCP ACKs (no payload) take a class of their own, served before the data and ahead of the
    TBF, which holds the next data frame until its tokens arrive. At emulated rates a 9,000-byte frame
    occupies a 25 Mbit/s port for 2.9 ms, where a real 400 Gbit/s port sends a 4 KB frame in 82 ns:
    without this class an ACK waits for that frame at every loaded hop, and behind a whole per-flow
    queue whenever its source port hashes into a loaded bucket (every KV connection's ACKs leave from
    the agents' one listen port, 7000, in the bucket of the demo's first elephant, whose client port
    shares its low bits with server port 5400), coupling a link's two directions in a way neither the
    flow model (full duplex, no ACKs) nor a real fabric does. Measured on the fidelity sweep's
    "load x2" (docs/fidelity.md): round_robin's per-transfer error p95 158% -> 26-47% (two runs).
    Only segments without payload qualify: with every packet under 256 bytes in this class, small
    *data* segments (the block headers an agent writes on their own) could overtake their flow's
    queued data, and round_robin's transfers ran 17% slower at the median than with pure ACKs only
    (4%); reordering is the likely cause, not verified. ACK bytes are not charged to the line rate
    (< 1% of a data flow's).
    """
    rate_bps = mbps * 1e6 / 8
    q = mtu + 100
    burst = BURST_FRAMES * q
    limit = int(max(2 * q, rate_bps * queue_ms / 1000))
    if host:
        limit = max(limit, HOST_BUCKET_PACKETS * q)
    cls = f"burst {q} cburst {q} quantum {q} mtu {q}"
    lines = [
        # the port: pure ACKs (class 3:2, first) beside data (3:3, shaped by the TBF below it)
        f"qdisc add dev {dev} root handle 3: htb default 3",
        f"class add dev {dev} parent 3: classid 3:2 htb rate {mbps:f}Mbit ceil {mbps:f}Mbit {cls} prio 0",
        f"qdisc add dev {dev} parent 3:2 handle 2: pfifo limit 1000",
        f"class add dev {dev} parent 3: classid 3:3 htb rate {UNSHAPED_MBPS}Mbit burst 1mb cburst 1mb "
        f"quantum {q} mtu {q} prio 1",
    ]
    for doff in range(5, 16):  # a TCP header of doff words and nothing after it (IPv4, no IP options)
        lines.append(
            f"filter add dev {dev} parent 3: prio 1 protocol ip u32 match u8 0x45 0xff at 0 "
            f"match ip protocol 6 0xff match u16 {20 + 4 * doff} 0xffff at 2 "
            f"match u8 0x{doff << 4:02x} 0xf0 at 32 flowid 3:2"
        )
    lines += [
        # data at the line rate, strictly: TBF never sends ahead of its tokens (HTB lets each class
        # send one frame past them, and a NIC that bursts past its rate overflows the next port's queue)
        f"qdisc add dev {dev} parent 3:3 handle 4: tbf rate {mbps:f}Mbit burst {q + tbf_extra_bytes} mtu {q} "
        f"limit {limit}",
        f"qdisc add dev {dev} parent 4:1 handle 5: htb default 10",
        f"class add dev {dev} parent 5: classid 5:1 htb rate {mbps:f}Mbit ceil {mbps:f}Mbit "
        f"burst {burst} cburst {burst} quantum {q} mtu {q}",
    ]
    for i in range(buckets):
        lines.append(
            f"class add dev {dev} parent 5:1 classid 5:{0x10 + i:x} htb rate {mbps / buckets:f}Mbit "
            f"ceil {mbps:f}Mbit burst {burst} cburst {burst} quantum {q} mtu {q}"
        )
        lines.append(f"qdisc add dev {dev} parent 5:{0x10 + i:x} handle {0x100 + i:x}: bfifo limit {limit}")
    lines.append(f"filter add dev {dev} parent 5: prio 1 handle 2: protocol ip u32 divisor {buckets}")
    lines.append(
        f"filter add dev {dev} parent 5: prio 1 protocol ip u32 ht 800:: match ip protocol 6 0xff "
        f"link 2: hashkey mask 0x{buckets - 1:04x}0000 at 20"
    )
    for i in range(buckets):
        lines.append(
            f"filter add dev {dev} parent 5: prio 1 protocol ip u32 ht 2:{i:x}: match u8 0 0 flowid 5:{0x10 + i:x}"
        )
    return lines


class ShapedLink(TCLink):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("cls1", ShapedIntf)
        kwargs.setdefault("cls2", ShapedIntf)
        super().__init__(*args, **kwargs)


class UserOVSSwitch(OVSSwitch):
    """OVS bridge on the userspace datapath, OpenFlow 1.3, fail mode secure."""

    def __init__(self, name, **params):
        params.setdefault("datapath", "user")
        params.setdefault("protocols", "OpenFlow13")
        params.setdefault("failMode", "secure")
        super().__init__(name, **params)


class DaemonOVSSwitch(Switch):
    """OVS bridge in its own network namespace, served by its own ovsdb-server and ovs-vswitchd
    (topology/ovs_daemon.py says why); userspace datapath, OpenFlow 1.3, fail mode secure, and the
    controller reached over the Unix socket `controller` ("unix:PATH")."""

    def __init__(self, name, run_root: str = "", controller: str = "", keep_memory: bool = True, **params):
        params["inNamespace"] = True
        super().__init__(name, **params)
        if not run_root or not controller:
            raise ValueError("DaemonOVSSwitch needs run_root and controller")
        self.daemon = ovs_daemon.SwitchDaemon(name, Path(run_root) / name, keep_memory)
        self.controller_target = controller

    def start(self, controllers):  # noqa: ARG002 (Mininet's signature; batchStartup does the work)
        pass

    def bridge_cmd(self) -> list[str]:
        ports = [(intf.name, port) for intf, port in self.ports.items() if intf.name != "lo" and port > 0]
        dpid = self.dpid.rjust(16, "0")
        return self.daemon.bridge_cmd(dpid, sorted(ports, key=lambda x: x[1]), self.controller_target)

    @classmethod
    def batchStartup(cls, switches, run=None):  # noqa: N802, ARG003 (Mininet's name and signature)
        by_name = {s.name: s for s in switches}
        daemons = [s.daemon for s in switches]
        ovs_daemon.start(daemons, lambda n: by_name[n].pid)
        ovs_daemon.configure(daemons, {s.name: s.bridge_cmd() for s in switches})
        return switches

    @classmethod
    def batchShutdown(cls, switches, run=None):  # noqa: N802, ARG003
        ovs_daemon.stop([s.daemon for s in switches])
        for s in switches:
            s.deleteIntfs()
        return switches

    def stop(self, deleteIntfs=True):  # noqa: N803
        ovs_daemon.stop([self.daemon])
        super().stop(deleteIntfs)


class NetKVFatTree(Topo):
    """Mininet topology of the shared fat-tree description."""

    def build(
        self,
        k: int = 4,
        gpus: int = 4,
        bandwidth_scale: float = 4000.0,
        gpu_gbps: float = 900.0,
        server_gbps: float = 400.0,
        edge_gbps: float = 400.0,
        core_gbps: float = 400.0,
        oversubscription: float = 1.0,
        mtu: int = 9000,
        queue_ms: float = 5.0,
        qdisc: str = "bfifo",
        max_mbps: float = 1000.0,
        fattree: FatTree | None = None,
    ):
        if fattree is None:  # `mn --topo netkv-fattree,k=...`: the same [topology] section an experiment has
            section = {
                "k": int(k),
                "gpus_per_server": int(gpus),
                "gpu_link_gbps": float(gpu_gbps),
                "server_link_gbps": float(server_gbps),
                "edge_link_gbps": float(edge_gbps),
                "core_link_gbps": float(core_gbps),
                "oversubscription": float(oversubscription),
            }
            fattree = FatTree.from_config(parse_section("topology", section, "mn --topo netkv-fattree"))
        t = fattree
        self.fattree = t
        mbps = check_rates(t, float(bandwidth_scale), max_mbps)
        for s in t.switches:
            self.addSwitch(s.name, dpid=s.dpid_str)
        for h in t.hosts:
            self.addHost(h.name, ip=f"{h.ip}/8", mac=h.mac)
        seen = set()
        for lk in t.links:
            key = frozenset((lk.src, lk.dst))
            if key in seen:
                continue
            seen.add(key)
            params = dict(bw=mbps[lk.level], mtu=int(mtu), queue_ms=float(queue_ms), qdisc=qdisc, txo=False, rxo=False)
            self.addLink(lk.src, lk.dst, port1=lk.src_port or None, port2=lk.dst_port or None, cls=ShapedLink, **params)


def intf_names(topo: FatTree) -> dict[tuple[str, int], str]:
    """(node, port) -> interface name as Mininet names it (hosts: eth0)."""
    out = {}
    for lk in topo.links:
        out[(lk.src, lk.src_port)] = f"{lk.src}-eth{lk.src_port}"
    return out

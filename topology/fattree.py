"""Four-tier fat-tree description: one ID scheme for names, dpids, IPs, MACs, ports and links.

Tiers, bottom up: GPU instance (host) -> server switch -> edge (ToR) -> aggregation -> core, built on
a k-ary fat-tree (Al-Fares et al., SIGCOMM 2008) whose "hosts" are servers with several GPUs each.
Everything else (Mininet builder, Ryu controller, simulator, oracle) reads this one description.

ID scheme (in the spirit of ripl): every node is addressed by (pod, a, b, c):
  host   h{pod}_{edge}_{server}_{gpu}   IP 10.pod.edge.(1 + server*G + gpu)   MAC 02:00:pp:ee:ss:gg
  server s{pod}_{edge}_{server}          dpid 0x01 pp ee ss ...
  edge   e{pod}_{edge}                    dpid 0x02 pp ee ...
  agg    a{pod}_{agg}                     dpid 0x03 pp aa ...
  core   c{group}_{member}                dpid 0x04 gg mm ...  (core (i, j) serves aggregation i of every pod)
Ports: server switch 1..G to its GPUs, G+1 up; edge 1..k/2 down, k/2+1..k up (to aggregation i at
k/2+1+i); aggregation 1..k/2 down (edge i at port 1+i), k/2+1..k up (core (i, j) at k/2+1+j);
core: port 1+pod. Hosts have one interface, eth0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

KINDS = ("host", "server", "edge", "agg", "core")
_DPID_LAYER = {"server": 1, "edge": 2, "agg": 3, "core": 4}
TIER_NAMES = {0: "same server", 1: "same edge", 2: "same pod", 3: "across pods"}


@dataclass(frozen=True)
class Node:
    """One host or switch with every identifier derived from its coordinates."""

    kind: str
    pod: int
    a: int = 0
    b: int = 0
    c: int = 0
    index: int = 0  # position among nodes of the same kind
    octet: int = 0  # last IP octet of a host: 1 + server * G + gpu

    @cached_property
    def name(self) -> str:
        if self.kind == "host":
            return f"h{self.pod}_{self.a}_{self.b}_{self.c}"
        if self.kind == "server":
            return f"s{self.pod}_{self.a}_{self.b}"
        if self.kind == "edge":
            return f"e{self.pod}_{self.a}"
        if self.kind == "agg":
            return f"a{self.pod}_{self.a}"
        return f"c{self.a}_{self.b}"

    @property
    def is_switch(self) -> bool:
        return self.kind != "host"

    @property
    def dpid(self) -> int | None:
        if self.kind == "host":
            return None
        layer = _DPID_LAYER[self.kind]
        pod = 0 if self.kind == "core" else self.pod
        return (layer << 56) | (pod << 48) | (self.a << 40) | (self.b << 32) | (self.c << 24)

    @property
    def dpid_str(self) -> str:
        return f"{self.dpid:016x}"

    @property
    def ip(self) -> str | None:
        if self.kind != "host":
            return None
        return f"10.{self.pod}.{self.a}.{self.octet}"

    @property
    def mac(self) -> str:
        if self.kind == "host":
            vals = (0x02, 0x00, self.pod, self.a, self.b, self.c)
        else:
            vals = (0x0A, _DPID_LAYER[self.kind], self.pod, self.a, self.b, self.c)
        return ":".join(f"{v:02x}" for v in vals)


@dataclass(frozen=True)
class Link:
    """A directed link with its capacity (real-cluster Gbit/s) and the ports at both ends."""

    id: int
    src: str
    dst: str
    src_port: int
    dst_port: int
    gbps: float
    level: str  # "gpu", "server", "edge", "core": the tier of the fabric the link belongs to

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9 / 8


@dataclass
class LinkRates:
    """Real-cluster link rates per tier of the fabric, in Gbit/s."""

    gpu: float = 900.0  # GPU <-> server switch (NVLink-like)
    server: float = 400.0  # server switch <-> edge
    edge: float = 400.0  # edge <-> aggregation
    core: float = 400.0  # aggregation <-> core
    oversubscription: float = 1.0  # divides edge-agg and agg-core rates

    def rate(self, level: str) -> float:
        base = getattr(self, level)
        if level in ("edge", "core"):
            return base / self.oversubscription
        return base


@dataclass
class FatTree:
    """A k-ary fat-tree with `gpus_per_server` GPU instances behind each server switch."""

    k: int = 4
    gpus_per_server: int = 4
    rates: LinkRates = field(default_factory=LinkRates)
    hop_latency_s: float = 1e-6  # per directed link: propagation + forwarding at its far end
    mtu_bytes: int = 4096  # one packet's store-and-forward per link (RoCE / InfiniBand MTU; 0: cut-through)

    def __post_init__(self):
        if self.k < 2 or self.k % 2:
            raise ValueError(f"topology.k: must be an even integer >= 2, got {self.k}")
        if self.k > 64:
            raise ValueError(f"topology.k: must be <= 64 (ID scheme limit), got {self.k}")
        if self.gpus_per_server < 1:
            raise ValueError(f"topology.gpus_per_server: must be >= 1, got {self.gpus_per_server}")
        if (self.k // 2) * self.gpus_per_server > 254:
            raise ValueError("topology: k/2 * gpus_per_server must be <= 254 (hosts of one edge share an IP /24)")
        for lvl in ("gpu", "server", "edge", "core"):
            if getattr(self.rates, lvl) <= 0:
                raise ValueError(f"topology: link rate for tier '{lvl}' must be > 0")
        if self.rates.oversubscription < 1:
            raise ValueError("topology.oversubscription: must be >= 1")
        self._build_nodes()
        self._build_links()

    @classmethod
    def from_config(cls, t) -> FatTree:
        """The fat-tree of an experiment's [topology] section (`netkv.config.TopologyCfg`)."""
        rates = LinkRates(t.gpu_link_gbps, t.server_link_gbps, t.edge_link_gbps, t.core_link_gbps, t.oversubscription)
        return cls(t.k, t.gpus_per_server, rates, t.hop_latency_us * 1e-6, t.mtu_bytes)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def half(self) -> int:
        return self.k // 2

    @property
    def n_servers(self) -> int:
        return self.k**3 // 4

    @property
    def n_hosts(self) -> int:
        return self.n_servers * self.gpus_per_server

    @property
    def n_edge(self) -> int:
        return self.k * self.half

    @property
    def n_agg(self) -> int:
        return self.k * self.half

    @property
    def n_core(self) -> int:
        return self.half**2

    @property
    def n_switches(self) -> int:
        return self.n_servers + self.n_edge + self.n_agg + self.n_core

    # ---- construction ------------------------------------------------------------------------
    def _build_nodes(self):
        k, h, G = self.k, self.half, self.gpus_per_server
        self.hosts: list[Node] = []
        self.servers: list[Node] = []
        self.edges: list[Node] = []
        self.aggs: list[Node] = []
        self.cores: list[Node] = []
        for pod in range(k):
            for e in range(h):
                self.edges.append(Node("edge", pod, e, index=len(self.edges)))
                for s in range(h):
                    self.servers.append(Node("server", pod, e, s, index=len(self.servers)))
                    for g in range(G):
                        self.hosts.append(Node("host", pod, e, s, g, index=len(self.hosts), octet=1 + s * G + g))
            for i in range(h):
                self.aggs.append(Node("agg", pod, i, index=len(self.aggs)))
        for i in range(h):
            for j in range(h):
                self.cores.append(Node("core", 0, i, j, index=len(self.cores)))
        self.switches = self.servers + self.edges + self.aggs + self.cores
        self.nodes = {n.name: n for n in self.hosts + self.switches}
        self.host_index = {n.name: n.index for n in self.hosts}

    def _build_links(self):
        h, G = self.half, self.gpus_per_server
        # Directed links in blocks so that ids follow from coordinates (see _lid_* helpers).
        H, S, E, A = self.n_hosts, self.n_servers, self.n_edge, self.n_agg
        self._base = {
            "h_up": 0,
            "h_down": H,
            "s_up": 2 * H,
            "s_down": 2 * H + S,
            "e_up": 2 * H + 2 * S,
            "e_down": 2 * H + 2 * S + E * h,
            "a_up": 2 * H + 2 * S + 2 * E * h,
            "a_down": 2 * H + 2 * S + 2 * E * h + A * h,
        }
        self.n_links = 2 * H + 2 * S + 2 * E * h + 2 * A * h
        links: list[Link | None] = [None] * self.n_links
        r = self.rates
        for n in self.hosts:
            sw = self.server_of(n.index)
            port = n.c + 1
            links[self._base["h_up"] + n.index] = Link(
                self._base["h_up"] + n.index, n.name, sw.name, 0, port, r.rate("gpu"), "gpu"
            )
            links[self._base["h_down"] + n.index] = Link(
                self._base["h_down"] + n.index, sw.name, n.name, port, 0, r.rate("gpu"), "gpu"
            )
        for s in self.servers:
            e = self.edges[s.pod * h + s.a]
            lid = self._base["s_up"] + s.index
            links[lid] = Link(lid, s.name, e.name, G + 1, s.b + 1, r.rate("server"), "server")
            lid = self._base["s_down"] + s.index
            links[lid] = Link(lid, e.name, s.name, s.b + 1, G + 1, r.rate("server"), "server")
        for e in self.edges:
            for i in range(h):
                ag = self.aggs[e.pod * h + i]
                lid = self._base["e_up"] + e.index * h + i
                links[lid] = Link(lid, e.name, ag.name, h + 1 + i, 1 + e.a, r.rate("edge"), "edge")
                lid = self._base["e_down"] + e.index * h + i
                links[lid] = Link(lid, ag.name, e.name, 1 + e.a, h + 1 + i, r.rate("edge"), "edge")
        for ag in self.aggs:
            for j in range(h):
                co = self.cores[ag.a * h + j]
                lid = self._base["a_up"] + ag.index * h + j
                links[lid] = Link(lid, ag.name, co.name, h + 1 + j, 1 + ag.pod, r.rate("core"), "core")
                lid = self._base["a_down"] + ag.index * h + j
                links[lid] = Link(lid, co.name, ag.name, 1 + ag.pod, h + 1 + j, r.rate("core"), "core")
        assert all(lk is not None for lk in links)
        self.links: list[Link] = links  # type: ignore[assignment]
        self.link_by_ends = {(lk.src, lk.dst): lk for lk in self.links}
        self.link_by_port = {}  # (switch name, port) -> outgoing link
        for lk in self.links:
            if self.nodes[lk.src].is_switch:
                self.link_by_port[(lk.src, lk.src_port)] = lk
        self.capacity_bps = np.array([lk.bytes_per_s for lk in self.links], dtype=float)
        # seconds a byte spends on each link beyond the bandwidth term: latency + one packet's serialization
        self.latency_s = self.hop_latency_s + self.mtu_bytes / self.capacity_bps
        # host coordinates as arrays, for vectorised routing
        self._h_pod = np.array([n.pod for n in self.hosts], dtype=np.int64)
        self._h_edge = np.array([n.pod * h + n.a for n in self.hosts], dtype=np.int64)
        self._h_srv = np.array([n.index // G for n in self.hosts], dtype=np.int64)

    # ---- lookups -----------------------------------------------------------------------------
    def host(self, ref: int | str) -> Node:
        if isinstance(ref, str):
            try:
                return self.hosts[self.host_index[ref]]
            except KeyError:
                raise KeyError(f"unknown host '{ref}'") from None
        return self.hosts[ref]

    def server_of(self, host: int) -> Node:
        return self.servers[host // self.gpus_per_server]

    def edge_of(self, host: int) -> Node:
        n = self.hosts[host]
        return self.edges[n.pod * self.half + n.a]

    def switch_by_dpid(self, dpid: int) -> Node:
        return self._by_dpid[dpid]

    @cached_property
    def _by_dpid(self) -> dict[int, Node]:
        return {s.dpid: s for s in self.switches}

    def host_by_ip(self, ip: str) -> Node:
        return self._by_ip[ip]

    @cached_property
    def _by_ip(self) -> dict[str, Node]:
        return {n.ip: n for n in self.hosts}

    def tier(self, p: int, d: int) -> int:
        """0 same server, 1 same edge switch, 2 same pod, 3 across pods."""
        if self._h_srv[p] == self._h_srv[d]:
            return 0
        if self._h_edge[p] == self._h_edge[d]:
            return 1
        if self._h_pod[p] == self._h_pod[d]:
            return 2
        return 3

    def tiers_row(self, p: int, ds: np.ndarray) -> np.ndarray:
        """Vectorised tier(p, d) for an array of destination hosts."""
        t = np.full(len(ds), 3, dtype=np.int64)
        t[self._h_pod[ds] == self._h_pod[p]] = 2
        t[self._h_edge[ds] == self._h_edge[p]] = 1
        t[self._h_srv[ds] == self._h_srv[p]] = 0
        return t

    # ---- equal-cost paths as link ids ---------------------------------------------------------
    def n_paths(self, tier: int) -> int:
        return {0: 1, 1: 1, 2: self.half, 3: self.half**2}[tier]

    def path_links(self, src: int, dst: int, choice: int) -> list[int]:
        """Directed link ids of equal-cost path number `choice` from host src to host dst.

        Paths are enumerated as: tier 2 -> aggregation i = choice; tier 3 -> core (i, j) with
        choice = i * k/2 + j (aggregation i in both pods, core member j).
        """
        if src == dst:
            raise ValueError("src and dst are the same host")
        b, h = self._base, self.half
        t = self.tier(src, dst)
        up_h, down_h = b["h_up"] + src, b["h_down"] + dst
        if t == 0:
            return [up_h, down_h]
        ss, sd = int(self._h_srv[src]), int(self._h_srv[dst])
        mid_up, mid_down = [b["s_up"] + ss], [b["s_down"] + sd]
        if t == 1:
            return [up_h, *mid_up, *mid_down, down_h]
        es, ed = int(self._h_edge[src]), int(self._h_edge[dst])
        if t == 2:
            i = choice
            return [up_h, *mid_up, b["e_up"] + es * h + i, b["e_down"] + ed * h + i, *mid_down, down_h]
        i, j = divmod(choice, h)
        as_, ad = int(self._h_pod[src]) * h + i, int(self._h_pod[dst]) * h + i
        return [
            up_h,
            *mid_up,
            b["e_up"] + es * h + i,
            b["a_up"] + as_ * h + j,
            b["a_down"] + ad * h + j,
            b["e_down"] + ed * h + i,
            *mid_down,
            down_h,
        ]

    def all_paths(self, src: int, dst: int) -> list[list[int]]:
        """Every equal-cost (shortest) path from src to dst, as link-id lists."""
        return [self.path_links(src, dst, c) for c in range(self.n_paths(self.tier(src, dst)))]

    def path_links_row(self, src: int, dsts: np.ndarray, choices: np.ndarray) -> np.ndarray:
        """Vectorised path_links: an (n, 8) array of link ids, padded with -1."""
        b, h = self._base, self.half
        dsts = np.asarray(dsts, dtype=np.int64)
        n = len(dsts)
        out = np.full((n, 8), -1, dtype=np.int64)
        t = self.tiers_row(src, dsts)
        ss, es, ps = self._h_srv[src], self._h_edge[src], self._h_pod[src]
        sd, ed, pd = self._h_srv[dsts], self._h_edge[dsts], self._h_pod[dsts]
        out[:, 0] = b["h_up"] + src
        out[:, 7] = b["h_down"] + dsts
        up = t >= 1
        out[up, 1] = b["s_up"] + ss
        out[up, 6] = b["s_down"] + sd[up]
        i = np.where(t == 3, choices // h, choices)
        j = choices % h
        m2 = t >= 2
        out[m2, 2] = b["e_up"] + es * h + i[m2]
        out[m2, 5] = b["e_down"] + ed[m2] * h + i[m2]
        m3 = t == 3
        out[m3, 3] = b["a_up"] + (ps * h + i[m3]) * h + j[m3]
        out[m3, 4] = b["a_down"] + (pd[m3] * h + i[m3]) * h + j[m3]
        return out

    def switch_path(self, links: list[int]) -> list[tuple[str, int]]:
        """(switch name, output port) for every hop of a link path."""
        return [
            (self.links[lid].src, self.links[lid].src_port)
            for lid in links
            if self.nodes[self.links[lid].src].is_switch
        ]

    # ---- export ------------------------------------------------------------------------------
    def oversubscription_by_layer(self) -> dict[str, float]:
        """Per switch layer, capacity facing down over capacity facing up (a k-ary fat-tree has k/2
        links each way at edge and aggregation; a server switch has G GPU links and one uplink)."""
        r = self.rates
        gpu, server, edge, core = (r.rate(x) for x in ("gpu", "server", "edge", "core"))
        return {"server": self.gpus_per_server * gpu / server, "edge": server / edge, "agg": edge / core}

    def summary(self) -> dict:
        r = self.rates
        return {
            "k": self.k,
            "gpus_per_server": self.gpus_per_server,
            "hosts": self.n_hosts,
            "servers": self.n_servers,
            "switches": {
                "server": self.n_servers,
                "edge": self.n_edge,
                "agg": self.n_agg,
                "core": self.n_core,
                "total": self.n_switches,
            },
            "directed_links": self.n_links,
            "link_gbps": {lvl: r.rate(lvl) for lvl in ("gpu", "server", "edge", "core")},
            "oversubscription": r.oversubscription,  # the config knob: divides edge-agg and agg-core rates
            "oversubscription_by_layer": self.oversubscription_by_layer(),  # down:up per switch layer
            "hop_latency_us": self.hop_latency_s * 1e6,
            "mtu_bytes": self.mtu_bytes,
            "equal_cost_paths": {TIER_NAMES[t]: self.n_paths(t) for t in range(4)},
        }

    def to_json(self, routing=None) -> dict:
        """Full description: nodes with ids, directed links, and (optionally) every routed path."""
        doc = {
            "summary": self.summary(),
            "hosts": [
                {
                    "name": n.name,
                    "index": n.index,
                    "ip": n.ip,
                    "mac": n.mac,
                    "pod": n.pod,
                    "edge": n.a,
                    "server": n.b,
                    "gpu": n.c,
                    "switch": self.server_of(n.index).name,
                }
                for n in self.hosts
            ],
            "switches": [{"name": s.name, "kind": s.kind, "dpid": s.dpid_str, "pod": s.pod} for s in self.switches],
            "links": [
                {
                    "id": lk.id,
                    "src": lk.src,
                    "dst": lk.dst,
                    "src_port": lk.src_port,
                    "dst_port": lk.dst_port,
                    "gbps": lk.gbps,
                    "level": lk.level,
                }
                for lk in self.links
            ],
        }
        if routing is not None:
            doc["routes"] = {
                f"{s.name}>{d.name}": [self.links[lid].dst for lid in routing.path(s.index, d.index)][:-1]
                for s in self.hosts
                for d in self.hosts
                if s.index != d.index
            }
            doc["routing"] = routing.strategy.name
        return doc

    def dumps(self, routing=None) -> str:
        return json.dumps(self.to_json(routing), indent=1)

"""Controller logic in plain Python: proactive flow rules, port-counter telemetry, the cost oracle.

The Ryu app (controller/ryu_app.py) only translates OpenFlow events to calls on `FabricLogic` and
its `Rule`s to flow mods, so everything here is testable without Ryu or Mininet.

Flow tables, highest priority first within a table:
  table 0
    200  ARP                                  -> CONTROLLER   (server switches; answered from the ID scheme)
    100  ipv4_dst = a host below this switch  -> the port towards it (downward: unique in a fat-tree)
     50  ipv4_src, ipv4_dst (one host pair)   -> an uplink: the pairs the class tables below do not
                                                 route as the routing function does (after a link
                                                 failure; every pair for a strategy without classes)
     20  any IPv4                             -> table 1 (edge and aggregation switches)
     10  any IPv4                             -> the uplink (server switches: one uplink)
      0  table-miss                           -> drop (no flooding, no packet-in storms; IPv6 is dropped)
  table 1  ipv4_src = a source host  -> metadata[0:16]  = its class, table 2
  table 2  ipv4_dst = a destination  -> metadata[16:32] = its class, table 3
  table 3  metadata = (source class, destination class) -> the uplink
A host's class is its index mod M (M: the number of equal-cost paths across pods, a multiple of the
number within a pod) and, for a destination, whether it is in the switch's pod: the built-in
sum-mod and dst-mod strategies choose a path from those classes alone, so an edge or aggregation
switch needs sources + destinations + classes^2 rules instead of one per host pair (k = 8: 60 k
rules for the fabric instead of 483 k). The class tables are derived from the routed pairs and
checked against every pair: a pair they would route differently gets its own rule at priority 50.
With these tables a packet follows exactly `Routing.path(src, dst)`.

Telemetry units are the emulated fabric's: bytes, Mbit/s, wall-clock seconds. Each directed link's
rate comes from one port counter: tx_bytes of the port it leaves a switch by, or, for a host's
uplink, rx_bytes of the switch port it enters. Rates are byte deltas over the delta of the port's
own duration counters (falling back to reply arrival times when a switch reports no duration).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from netkv.config import parse_section
from netkv.topology import FatTree, NoPathError, Routing

P_ARP, P_DOWN, P_PAIR, P_CLASS, P_UP, P_MISS = 200, 100, 50, 20, 10, 0
T_SRC, T_DST, T_CLASS = 1, 2, 3  # tables of the class lookup
DST_SHIFT = 16  # metadata bits 0-15: source class; 16-31: destination class
SRC_MASK, DST_MASK = 0xFFFF, 0xFFFF0000
CONTROLLER = "CONTROLLER"


@dataclass(frozen=True)
class Rule:
    """One flow entry. `out` is a port, CONTROLLER or None; with `goto` None as well, a rule at a
    priority above 0 deletes the entry of that match (table 0's pair rules), at 0 it drops.
    `meta` = (value, mask) writes metadata before `goto`."""

    dpid: int
    priority: int
    match: tuple  # sorted (field, value) pairs in OpenFlow 1.3 OXM names
    out: int | str | None  # port number, CONTROLLER, or None = drop / delete
    table: int = 0
    goto: int | None = None
    meta: tuple[int, int] | None = None

    @property
    def match_dict(self) -> dict:
        return dict(self.match)

    @property
    def deletes(self) -> bool:
        return self.out is None and self.goto is None and self.priority != P_MISS


def _m(**kw) -> tuple:
    return tuple(sorted(kw.items()))


@dataclass
class LinkState:
    rate_bps: float = 0.0  # bytes/s, emulated
    sampled_at: float | None = None
    up: bool = True
    history: deque = field(default_factory=lambda: deque(maxlen=120))


class FabricLogic:
    """Routing rules, port telemetry and the oracle of one emulated fabric."""

    def __init__(
        self,
        topo: FatTree,
        routing: str = "sum-mod",
        bandwidth_scale: float = 1.0,
        publish_delay: float = 0.0,
        floor_fraction: float = 0.25,
        clock=time.time,
    ):
        self.topo = topo
        self.routing = Routing(topo, routing)
        self.scale = bandwidth_scale
        self.publish_delay = publish_delay
        self.floor_fraction = floor_fraction
        self.clock = clock
        # emulated capacity (bytes/s) per link
        self.cap = [lk.bytes_per_s / bandwidth_scale for lk in topo.links]
        self.links = [LinkState() for _ in topo.links]
        self._pending: deque = deque()  # (publish_at, link id, rate, sampled_at)
        self._last: dict[tuple[int, int], tuple[int, int, float, float]] = {}
        self.port_up: dict[tuple[int, int], bool] = {}
        self.connected: set[int] = set()
        self.installed: set[int] = set()
        self.polls = 0
        self.replies = 0
        self.last_reply_at: float | None = None
        self.started_at = clock()
        self._n_classes = topo.n_paths(3)  # a multiple of n_paths(2)
        pairs = self._compute_pair_ports()
        self._build_class_tables(pairs)
        self._overrides = self._overrides_of(pairs)  # the pair rules in force (none for sum-mod)
        # counter source per link: (dpid, port, "tx"|"rx") and the reverse map
        self.counter_of: dict[tuple[int, int, str], int] = {}
        for lk in topo.links:
            src, dst = topo.nodes[lk.src], topo.nodes[lk.dst]
            if src.is_switch:
                self.counter_of[(src.dpid, lk.src_port, "tx")] = lk.id
            else:
                self.counter_of[(dst.dpid, lk.dst_port, "rx")] = lk.id

    @classmethod
    def from_config(cls, cfg: dict, clock=time.time) -> FabricLogic:
        """Build from the JSON the network runner hands the controller (its [topology] section is
        parsed and checked by netkv.config, like an experiment file's)."""
        t = parse_section("topology", cfg["topology"], "controller config")
        return cls(
            FatTree.from_config(t),
            t.routing,
            cfg.get("bandwidth_scale", 1.0),
            cfg.get("publish_delay", 0.0),
            cfg.get("floor_fraction", 0.25),
            clock,
        )

    # ---- rules -------------------------------------------------------------------------------
    def _compute_pair_ports(self) -> dict[int, dict[tuple[int, int], int]]:
        """dpid -> {(src host, dst host): uplink port} at edge and aggregation switches, for the
        pairs the routing function sends up through them under the current link states."""
        t = self.topo
        out: dict[int, dict[tuple[int, int], int]] = {}
        for s in t.hosts:
            for d in t.hosts:
                if s.index == d.index or t.tier(s.index, d.index) < 2:
                    continue
                try:
                    hops = self.routing.switch_path(s.index, d.index)
                except NoPathError:
                    continue
                for name, port in hops:
                    node = t.nodes[name]
                    if node.kind == "edge" and node.name == t.edge_of(s.index).name:
                        out.setdefault(node.dpid, {})[(s.index, d.index)] = port
                    elif node.kind == "agg" and node.pod == s.pod and t.tier(s.index, d.index) == 3:
                        out.setdefault(node.dpid, {})[(s.index, d.index)] = port
        return out

    def _dst_class(self, pod: int, d: int) -> int:
        return (d % self._n_classes) * 2 + (self.topo.hosts[d].pod == pod)

    def _build_class_tables(self, pairs: dict[int, dict[tuple[int, int], int]]) -> None:
        """Per switch: the sources and destinations it routes up, and the port most of the pairs
        of each (source class, destination class) take (the routing function's when it uses
        classes only, as sum-mod and dst-mod do)."""
        M = self._n_classes
        self._srcs: dict[int, list[int]] = {}
        self._dsts: dict[int, list[int]] = {}
        self._class_port: dict[int, dict[tuple[int, int], int]] = {}
        for dpid, ports in pairs.items():
            pod = self.topo.switch_by_dpid(dpid).pod
            votes: dict[tuple[int, int], Counter] = {}
            for (s, d), port in ports.items():
                votes.setdefault((s % M, self._dst_class(pod, d)), Counter())[port] += 1
            self._srcs[dpid] = sorted({s for s, _ in ports})
            self._dsts[dpid] = sorted({d for _, d in ports})
            self._class_port[dpid] = {key: c.most_common(1)[0][0] for key, c in votes.items()}

    def _overrides_of(self, pairs: dict[int, dict[tuple[int, int], int]]) -> dict[int, dict[tuple[int, int], int]]:
        """dpid -> {(src, dst): port} for the pairs the class tables would not send out that port."""
        M = self._n_classes
        out: dict[int, dict[tuple[int, int], int]] = {}
        for dpid, ports in pairs.items():
            pod = self.topo.switch_by_dpid(dpid).pod
            srcs, dsts = set(self._srcs.get(dpid, ())), set(self._dsts.get(dpid, ()))
            table = self._class_port.get(dpid, {})
            for (s, d), port in ports.items():
                via = table.get((s % M, self._dst_class(pod, d))) if s in srcs and d in dsts else None
                if via != port:
                    out.setdefault(dpid, {})[(s, d)] = port
        return out

    def _pair_rule(self, dpid: int, s: int, d: int, port: int | None) -> Rule:
        h = self.topo.hosts
        return Rule(dpid, P_PAIR, _m(eth_type=0x0800, ipv4_src=h[s].ip, ipv4_dst=h[d].ip), port)

    def _below(self, sw) -> list:
        t = self.topo
        if sw.kind == "server":
            return [h for h in t.hosts if t.server_of(h.index).name == sw.name]
        if sw.kind == "edge":
            return [h for h in t.hosts if h.pod == sw.pod and h.a == sw.a]
        if sw.kind == "agg":
            return [h for h in t.hosts if h.pod == sw.pod]
        return list(t.hosts)

    def _down_port(self, sw, host) -> int:
        if sw.kind == "server":
            return host.c + 1
        if sw.kind == "edge":
            return host.b + 1
        if sw.kind == "agg":
            return host.a + 1
        return host.pod + 1

    def rules(self, dpid: int) -> list[Rule]:
        """Every rule of one switch."""
        sw = self.topo.switch_by_dpid(dpid)
        rules = [Rule(dpid, P_MISS, (), None)]
        for h in self._below(sw):
            rules.append(Rule(dpid, P_DOWN, _m(eth_type=0x0800, ipv4_dst=h.ip), self._down_port(sw, h)))
        if sw.kind == "server":
            rules.append(Rule(dpid, P_ARP, _m(eth_type=0x0806), CONTROLLER))
            rules.append(Rule(dpid, P_UP, _m(eth_type=0x0800), self.topo.gpus_per_server + 1))
        elif sw.kind in ("edge", "agg"):
            rules += [self._pair_rule(dpid, s, d, port) for (s, d), port in self._overrides.get(dpid, {}).items()]
            rules += self._class_rules(dpid)
        return rules

    def _class_rules(self, dpid: int) -> list[Rule]:
        """Table 0's jump and tables 1-3 of one edge or aggregation switch."""
        pod, M, h = self.topo.switch_by_dpid(dpid).pod, self._n_classes, self.topo.hosts
        ip = (("eth_type", 0x0800),)
        out = [Rule(dpid, P_CLASS, ip, None, goto=T_SRC)]
        for s in self._srcs.get(dpid, ()):
            out.append(Rule(dpid, P_PAIR, _m(eth_type=0x0800, ipv4_src=h[s].ip), None, T_SRC, T_DST, (s % M, SRC_MASK)))
        for d in self._dsts.get(dpid, ()):
            meta = (self._dst_class(pod, d) << DST_SHIFT, DST_MASK)
            out.append(Rule(dpid, P_PAIR, _m(eth_type=0x0800, ipv4_dst=h[d].ip), None, T_DST, T_CLASS, meta))
        for (sc, dc), port in sorted(self._class_port.get(dpid, {}).items()):
            out.append(Rule(dpid, P_PAIR, _m(metadata=sc | dc << DST_SHIFT), port, T_CLASS))
        return out

    def all_rules(self) -> list[Rule]:
        return [r for s in self.topo.switches for r in self.rules(s.dpid)]

    # ---- port status -------------------------------------------------------------------------
    def link_of_port(self, dpid: int, port: int) -> list[int]:
        """Both directed links of the cable at a switch port."""
        name = self.topo.switch_by_dpid(dpid).name
        lk = self.topo.link_by_port.get((name, port))
        if lk is None:
            return []
        back = self.topo.link_by_ends[(lk.dst, lk.src)]
        return [lk.id, back.id]

    def on_port_status(self, dpid: int, port: int, up: bool) -> list[Rule]:
        """A port went down or up: reroute around it. Returns the pair rules to (re)write;
        a rule with out=None means delete it.

        A cable between two switches is up only while both of its ports are up (taking one end
        down makes the other lose carrier, and the two ends report in any order).
        """
        ids = self.link_of_port(dpid, port)
        if not ids:
            return []
        self.port_up[(dpid, port)] = up
        lk = self.topo.links[ids[0]]
        peer = self.topo.nodes[lk.dst]
        cable_up = up
        if peer.is_switch:
            cable_up = up and self.port_up.get((peer.dpid, lk.dst_port), True)
        changed = False
        for lid in ids:
            if self.links[lid].up != cable_up:
                changed = True
            self.links[lid].up = cable_up
            self.routing.mark(lid, cable_up)
        if not changed:
            return []
        old = self._overrides
        new = self._overrides = self._overrides_of(self._compute_pair_ports())
        out = []
        for dpid in sorted(old.keys() | new.keys()):
            o, n = old.get(dpid, {}), new.get(dpid, {})
            out += [
                self._pair_rule(dpid, *key, n.get(key))
                for key in sorted(o.keys() | n.keys())
                if o.get(key) != n.get(key)
            ]
        return out

    # ---- telemetry ---------------------------------------------------------------------------
    def on_port_stats(self, dpid: int, stats, now: float | None = None) -> None:
        """stats: iterable of (port_no, rx_bytes, tx_bytes, duration_s or None)."""
        now = self.clock() if now is None else now
        self.replies += 1
        self.last_reply_at = now
        for port, rx, tx, dur in stats:
            key = (dpid, port)
            t_port = dur if dur is not None and dur > 0 else now
            prev = self._last.get(key)
            self._last[key] = (rx, tx, t_port, now)
            if prev is None:
                continue
            prx, ptx, pt, _ = prev
            dt = t_port - pt
            if dt <= 0:
                continue
            for kind, cur, old in (("tx", tx, ptx), ("rx", rx, prx)):
                lid = self.counter_of.get((dpid, port, kind))
                if lid is not None:
                    rate = max(cur - old, 0) / dt
                    self._pending.append((now + self.publish_delay, lid, rate, now))
        self._publish(now)

    def _publish(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, lid, rate, at = self._pending.popleft()
            st = self.links[lid]
            st.rate_bps, st.sampled_at = rate, at
            st.history.append((at, rate))

    def residual_bps(self, lid: int) -> float:
        """Emulated bytes/s left on a link (0 when down; never below the floor otherwise)."""
        st = self.links[lid]
        if not st.up:
            return 0.0
        cap = self.cap[lid]
        return max(cap - st.rate_bps, self.floor_fraction * cap)

    # ---- REST views --------------------------------------------------------------------------
    def host(self, name: str) -> int:
        try:
            return self.topo.host_index[name]
        except KeyError:
            pass
        try:
            return self.topo.host_by_ip(name).index
        except KeyError:
            raise KeyError(f"unknown host '{name}'") from None

    def links_view(self, history: bool = False) -> dict:
        now = self.clock()
        self._publish(now)
        out = []
        for lk, st in zip(self.topo.links, self.links):
            cap = self.cap[lk.id]
            d = {
                "id": lk.id,
                "src": lk.src,
                "dst": lk.dst,
                "level": lk.level,
                "capacity_mbps": cap * 8 / 1e6,
                "rate_mbps": st.rate_bps * 8 / 1e6,
                "utilisation": st.rate_bps / cap,
                "sampled_at": st.sampled_at,
                "up": st.up,
            }
            if history:
                d["history"] = [[a, r * 8 / 1e6] for a, r in st.history]
            out.append(d)
        return {"now": now, "publish_delay_s": self.publish_delay, "links": out}

    def path_view(self, src: str, dst: str) -> dict:
        s, d = self.host(src), self.host(dst)
        if s == d:
            raise ValueError("src and dst are the same host")
        try:
            lids = self.routing.path(s, d)
        except NoPathError as e:
            return {"src": src, "dst": dst, "reachable": False, "error": str(e)}
        res = [self.residual_bps(x) for x in lids]
        b = min(range(len(lids)), key=lambda i: res[i])
        return {
            "src": self.topo.hosts[s].name,
            "dst": self.topo.hosts[d].name,
            "reachable": True,
            "tier": self.topo.tier(s, d),
            "switches": [self.topo.links[x].dst for x in lids[:-1]],
            "links": lids,
            "bottleneck_link": lids[b],
            "bottleneck_residual_mbps": res[b] * 8 / 1e6,
        }

    def cost_view(self, src: str, dst: str, nbytes: float) -> dict:
        if not (nbytes >= 0) or math.isinf(nbytes):
            raise ValueError("bytes must be a finite number >= 0")
        now = self.clock()
        self._publish(now)
        p = self.path_view(src, dst)
        if not p["reachable"]:
            return {**p, "seconds": None, "age_s": None}
        res = p["bottleneck_residual_mbps"] * 1e6 / 8
        seconds = 0.0 if nbytes == 0 else (nbytes / res if res > 0 else math.inf)
        times = [self.links[x].sampled_at for x in p["links"]]
        age = None if any(x is None for x in times) else now - min(times)
        return {
            "src": p["src"],
            "dst": p["dst"],
            "bytes": nbytes,
            "seconds": seconds if math.isfinite(seconds) else None,
            "age_s": age,
            "bottleneck_residual_mbps": p["bottleneck_residual_mbps"],
        }

    def health_view(self) -> dict:
        want = {s.dpid for s in self.topo.switches}
        return {
            "switches_expected": len(want),
            "switches_connected": len(self.connected & want),
            "routes_installed": len(self.installed & want),
            "ready": self.installed >= want and self.connected >= want,
            "polls": self.polls,
            "stats_replies": self.replies,
            "last_reply_at": self.last_reply_at,
            "links_down": sum(not s.up for s in self.links),
            "uptime_s": self.clock() - self.started_at,
        }

    def arp_mac(self, ip: str) -> str | None:
        try:
            return self.topo.host_by_ip(ip).mac
        except KeyError:
            return None

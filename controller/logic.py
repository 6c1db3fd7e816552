"""Controller logic in plain Python: proactive flow rules, port-counter telemetry, the cost oracle.

The Ryu app (controller/ryu_app.py) only translates OpenFlow events to calls on `FabricLogic` and
its `Rule`s to flow mods, so everything here is testable without Ryu or Mininet.

Flow table (table 0), highest priority first:
  200  ARP                                  -> CONTROLLER   (server switches; answered from the ID scheme)
  100  ipv4_dst = a host below this switch  -> the port towards it (downward: unique in a fat-tree)
   50  ipv4_src, ipv4_dst (per host pair)   -> the uplink the routing function chose (edge and agg)
   10  any IPv4                             -> the uplink (server switches: one uplink)
    0  table-miss                           -> drop (no flooding, no packet-in storms; IPv6 is dropped)
With this table a packet follows exactly `Routing.path(src, dst)`.

Telemetry units are the emulated fabric's: bytes, Mbit/s, wall-clock seconds. Each directed link's
rate comes from one port counter: tx_bytes of the port it leaves a switch by, or, for a host's
uplink, rx_bytes of the switch port it enters. Rates are byte deltas over the delta of the port's
own duration counters (falling back to reply arrival times when a switch reports no duration).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from netkv.config import parse_section
from netkv.topology import FatTree, NoPathError, Routing

P_ARP, P_DOWN, P_PAIR, P_UP, P_MISS = 200, 100, 50, 10, 0
CONTROLLER = "CONTROLLER"


@dataclass(frozen=True)
class Rule:
    dpid: int
    priority: int
    match: tuple  # sorted (field, value) pairs in OpenFlow 1.3 OXM names
    out: int | str | None  # port number, CONTROLLER, or None = drop

    @property
    def match_dict(self) -> dict:
        return dict(self.match)


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
        self._pair_rules = self._compute_pair_rules()
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
    def _compute_pair_rules(self) -> dict[tuple[int, str, str], int]:
        """(dpid, src ip, dst ip) -> uplink port at edge and aggregation switches."""
        t = self.topo
        out = {}
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
                        out[(node.dpid, s.ip, d.ip)] = port
                    elif node.kind == "agg" and node.pod == s.pod and t.tier(s.index, d.index) == 3:
                        out[(node.dpid, s.ip, d.ip)] = port
        return out

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
            for (d, src, dst), port in self._pair_rules.items():
                if d == dpid:
                    rules.append(Rule(dpid, P_PAIR, _m(eth_type=0x0800, ipv4_src=src, ipv4_dst=dst), port))
        return rules

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
        old = self._pair_rules
        new = self._compute_pair_rules()
        self._pair_rules = new
        out = []
        for key in old.keys() | new.keys():
            if old.get(key) != new.get(key):
                d, src, dst = key
                out.append(Rule(d, P_PAIR, _m(eth_type=0x0800, ipv4_src=src, ipv4_dst=dst), new.get(key)))
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

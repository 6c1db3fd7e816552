"""Check installed OpenFlow tables against the routing function (parses `ovs-ofctl dump-flows`).

`walk(tables, topo, src, dst)` forwards a packet src -> dst through the parsed tables, highest
priority match first, and returns the directed links it crosses, to compare with Routing.path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from netkv.topology import FatTree

_FIELD = re.compile(r"(\w+)=([^,\s]+)")


@dataclass
class Flow:
    priority: int
    match: dict
    actions: str

    def matches(self, pkt: dict) -> bool:
        for k, v in self.match.items():
            if pkt.get(k) != v:
                return False
        return True

    @property
    def out_port(self) -> int | str | None:
        m = re.match(r"output:(\d+)", self.actions)
        if m:
            return int(m.group(1))
        if self.actions.startswith("CONTROLLER"):
            return "CONTROLLER"
        return None


def parse_dump(text: str) -> list[Flow]:
    """Flows of `ovs-ofctl -O OpenFlow13 --no-names dump-flows BR` output."""
    flows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "actions=" not in line or line.startswith("OFPST_FLOW") or line.startswith("NXST_FLOW"):
            continue
        head, actions = line.rsplit("actions=", 1)
        prio = 32768
        match: dict = {}
        for part in head.replace(" ", "").split(","):
            if not part:
                continue
            if "=" in part:
                k, v = part.split("=", 1)
                if k == "priority":
                    prio = int(v)
                elif k in ("nw_src", "nw_dst", "ipv4_src", "ipv4_dst"):
                    match[{"ipv4_src": "nw_src", "ipv4_dst": "nw_dst"}.get(k, k)] = v
                elif k in (
                    "cookie",
                    "duration",
                    "table",
                    "n_packets",
                    "n_bytes",
                    "idle_age",
                    "hard_age",
                    "reset_counts",
                    "send_flow_rem",
                ):
                    continue
                else:
                    match[k] = v
            elif part in ("ip", "arp", "ipv6", "tcp", "udp"):
                match["dl_type"] = {
                    "ip": "0x0800",
                    "tcp": "0x0800",
                    "udp": "0x0800",
                    "arp": "0x0806",
                    "ipv6": "0x86dd",
                }[part]
        flows.append(Flow(prio, match, actions.strip()))
    flows.sort(key=lambda f: -f.priority)
    return flows


def walk(tables: dict[str, list[Flow]], topo: FatTree, src: int, dst: int, max_hops: int = 16) -> list[int]:
    """Links a TCP/IP packet from host src to host dst crosses through the given flow tables."""
    s, d = topo.hosts[src], topo.hosts[dst]
    pkt = {"dl_type": "0x0800", "nw_src": s.ip, "nw_dst": d.ip}
    lk = topo.link_by_ends[(s.name, topo.server_of(src).name)]
    links = [lk.id]
    node = lk.dst
    for _ in range(max_hops):
        if node == d.name:
            return links
        if not topo.nodes[node].is_switch:
            raise AssertionError(f"packet {s.name}->{d.name} delivered to the wrong host {node}")
        flow = next((f for f in tables[node] if f.matches(pkt)), None)
        if flow is None or not isinstance(flow.out_port, int):
            raise AssertionError(f"packet {s.name}->{d.name} dropped at {node} (rule: {flow})")
        lk = topo.link_by_port[(node, flow.out_port)]
        links.append(lk.id)
        node = lk.dst
    raise AssertionError(f"packet {s.name}->{d.name} loops")

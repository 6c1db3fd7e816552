"""Check installed OpenFlow tables against the routing function (parses `ovs-ofctl dump-flows`).

`walk(tables, topo, src, dst)` forwards a packet src -> dst through the parsed flows of every
switch (table 0 first; write_metadata and goto_table followed; highest priority match first in
each table) and returns the directed links it crosses, to compare with Routing.path.
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
    table: int = 0

    def matches(self, pkt: dict) -> bool:
        for k, v in self.match.items():
            if k == "metadata":
                value, _, mask = v.partition("/")
                m = int(mask, 0) if mask else (1 << 64) - 1
                if pkt.get("metadata", 0) & m != int(value, 0) & m:
                    return False
            elif pkt.get(k) != v:
                return False
        return True

    @property
    def goto(self) -> int | None:
        m = re.search(r"goto_table:(\d+)", self.actions)
        return int(m.group(1)) if m else None

    @property
    def write_metadata(self) -> tuple[int, int] | None:
        m = re.search(r"write_metadata:(0x[0-9a-f]+)(?:/(0x[0-9a-f]+))?", self.actions)
        if not m:
            return None
        return int(m.group(1), 16), int(m.group(2), 16) if m.group(2) else (1 << 64) - 1

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
        prio, table = 32768, 0
        match: dict = {}
        for part in head.replace(" ", "").split(","):
            if not part:
                continue
            if "=" in part:
                k, v = part.split("=", 1)
                if k == "priority":
                    prio = int(v)
                elif k == "table":
                    table = int(v)
                elif k in ("nw_src", "nw_dst", "ipv4_src", "ipv4_dst"):
                    match[{"ipv4_src": "nw_src", "ipv4_dst": "nw_dst"}.get(k, k)] = v
                elif k in (
                    "cookie",
                    "duration",
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
        flows.append(Flow(prio, match, actions.strip(), table))
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
        flow = _lookup(tables[node], dict(pkt))
        if flow is None or not isinstance(flow.out_port, int):
            raise AssertionError(f"packet {s.name}->{d.name} dropped at {node} (rule: {flow})")
        lk = topo.link_by_port[(node, flow.out_port)]
        links.append(lk.id)
        node = lk.dst
    raise AssertionError(f"packet {s.name}->{d.name} loops")


def _lookup(flows: list[Flow], pkt: dict) -> Flow | None:
    """The flow that finally acts on a packet: from table 0 along write_metadata / goto_table."""
    table = 0
    for _ in range(256):
        flow = next((f for f in flows if f.table == table and f.matches(pkt)), None)
        if flow is None or flow.goto is None:
            return flow
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            pkt["metadata"] = (pkt.get("metadata", 0) & ~mask) | (value & mask)
        if flow.goto <= table:
            raise AssertionError(f"goto_table:{flow.goto} from table {table} (must go forward)")
        table = flow.goto
    return None

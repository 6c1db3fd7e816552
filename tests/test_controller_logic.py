"""Controller logic without Ryu or Mininet: rules realise the routing function; telemetry; REST views."""

import random

import pytest

from netkv.controller.flowcheck import parse_dump, walk
from netkv.controller.logic import CONTROLLER, FabricLogic
from netkv.topology import FatTree


def render(rules):
    """Rules as `ovs-ofctl -O OpenFlow13 --no-names dump-flows` would print them."""
    lines = []
    for r in rules:
        m = r.match_dict
        parts = [f"priority={r.priority}"]
        if m.get("eth_type") == 0x0800:
            parts.append("ip")
        if m.get("eth_type") == 0x0806:
            parts.append("arp")
        if "metadata" in m:
            parts.append(f"metadata={m['metadata']:#x}")
        if "ipv4_src" in m:
            parts.append(f"nw_src={m['ipv4_src']}")
        if "ipv4_dst" in m:
            parts.append(f"nw_dst={m['ipv4_dst']}")
        if r.goto is not None:
            act = f"goto_table:{r.goto}"
            if r.meta is not None:
                act = f"write_metadata:{r.meta[0]:#x}/{r.meta[1]:#x},{act}"
        else:
            act = "drop" if r.out is None else ("CONTROLLER:65535" if r.out == CONTROLLER else f"output:{r.out}")
        lines.append(
            f" cookie=0x0, duration=1.0s, table={r.table}, n_packets=0, n_bytes=0, {','.join(parts)} actions={act}"
        )
    return "\n".join(lines)


def tables(logic):
    return {s.name: parse_dump(render(logic.rules(s.dpid))) for s in logic.topo.switches}


def installed(logic):
    """The switches' tables as the controller first writes them: (dpid, table, priority, match) -> rule."""
    return {(r.dpid, r.table, r.priority, r.match): r for r in logic.all_rules()}


def apply(table, changes):
    """Apply what on_port_status returns, as the switches do (add / modify / delete strict)."""
    for r in changes:
        key = (r.dpid, r.table, r.priority, r.match)
        if r.deletes:
            table.pop(key, None)
        else:
            table[key] = r


def walk_installed(logic, table):
    by_switch = {}
    for r in table.values():
        by_switch.setdefault(r.dpid, []).append(r)
    return {s.name: parse_dump(render(by_switch.get(s.dpid, []))) for s in logic.topo.switches}


@pytest.mark.parametrize("k,G,strategy", [(2, 2, "sum-mod"), (4, 4, "sum-mod"), (4, 4, "dst-mod"), (4, 2, "hash")])
def test_rules_realise_every_routed_path(k, G, strategy):
    logic = FabricLogic(FatTree(k, G), strategy)
    tb = tables(logic)
    for s in range(logic.topo.n_hosts):
        for d in range(logic.topo.n_hosts):
            if s != d:
                assert walk(tb, logic.topo, s, d) == logic.routing.path(s, d)


def test_class_tables_replace_pair_rules():
    """sum-mod routes by host classes: no rule per host pair, and k = 8 stays at tens of thousands
    of rules (one per pair: 483 k, which the controller could not install in time)."""
    logic = FabricLogic(FatTree(8, 4))
    rules = logic.all_rules()
    assert len(rules) < 70_000
    assert not [r for r in rules if r.table == 0 and "ipv4_src" in r.match_dict]
    rng = random.Random(1)
    tb = tables(logic)
    n = logic.topo.n_hosts
    for _ in range(300):
        s, d = rng.sample(range(n), 2)
        assert walk(tb, logic.topo, s, d) == logic.routing.path(s, d)
    # hash has no classes: the class tables carry the majority and pair rules the rest
    hashed = FabricLogic(FatTree(4, 4), "hash")
    assert [r for r in hashed.all_rules() if r.table == 0 and "ipv4_src" in r.match_dict]


def test_rule_counts_are_compact():
    logic = FabricLogic(FatTree(4, 4))
    n = len(logic.all_rules())
    assert n < 2500  # class tables at the upward choice points (edge, aggregation)


def test_port_down_reroutes_and_up_restores():
    logic = FabricLogic(FatTree(4, 4))
    t = logic.topo
    s, d = 0, 63
    before = logic.routing.path(s, d)
    core = next(x for x in before if t.links[x].level == "core")
    lk = t.links[core]
    table = installed(logic)
    changes = logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=False)
    assert changes and all(r.table == 0 and "ipv4_src" in r.match_dict for r in changes)
    apply(table, changes)
    tb = walk_installed(logic, table)
    after = walk(tb, t, s, d)
    assert core not in after and after == logic.routing.path(s, d)
    for x in range(t.n_hosts):  # every pair follows the rerouted function on the updated tables
        for y in range(t.n_hosts):
            if x != y:
                assert walk(tb, t, x, y) == logic.routing.path(x, y)
    assert logic.links_view()["links"][core]["up"] is False
    assert logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=False) == []  # no change twice
    # the far end reports down, then the near end flaps up: the cable stays down until both are up
    far = (t.nodes[lk.dst].dpid, lk.dst_port)
    logic.on_port_status(*far, up=False)
    assert logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=True) == []
    assert core not in walk(tables(logic), t, s, d)
    restore = logic.on_port_status(*far, up=True)
    assert restore and all(r.deletes for r in restore)  # back to the class tables alone
    apply(table, restore)
    assert table == installed(logic) and walk(walk_installed(logic, table), t, s, d) == before


def test_port_stats_to_link_rates_with_publish_delay():
    clock = [100.0]
    logic = FabricLogic(FatTree(2, 2), bandwidth_scale=4000, publish_delay=1.0, clock=lambda: clock[0])
    t = logic.topo
    sw = t.nodes["s0_0_0"]
    up = t.link_by_ends[("s0_0_0", "e0_0")]
    host_up = t.link_by_ends[("h0_0_0_0", "s0_0_0")]
    logic.on_port_stats(sw.dpid, [(up.src_port, 0, 0, 10.0), (1, 0, 0, 10.0)], now=100.0)
    logic.on_port_stats(sw.dpid, [(up.src_port, 0, 5_000_000, 11.0), (1, 2_500_000, 0, 11.0)], now=100.5)
    clock[0] = 101.0
    assert logic.links_view()["links"][up.id]["rate_mbps"] == 0.0  # not published yet
    clock[0] = 101.6
    v = logic.links_view()["links"]
    assert v[up.id]["rate_mbps"] == pytest.approx(40.0)  # 5 MB over the ports' 1 s duration delta
    assert v[host_up.id]["rate_mbps"] == pytest.approx(20.0)  # host uplink from rx of the switch port
    assert v[up.id]["utilisation"] == pytest.approx(0.4)  # 400G / 4000 = 100 Mbit/s
    assert v[up.id]["sampled_at"] == 100.5


def test_rest_views_and_errors():
    logic = FabricLogic(FatTree(2, 2), bandwidth_scale=4000)
    p = logic.path_view("h0_0_0_0", "10.1.0.2")
    assert p["tier"] == 3 and p["switches"][0] == "s0_0_0" and p["switches"][-1] == "s1_0_0"
    assert p["bottleneck_residual_mbps"] == pytest.approx(100.0)
    c = logic.cost_view("h0_0_0_0", "h1_0_0_1", 12_500_000)
    assert c["seconds"] == pytest.approx(1.0) and c["age_s"] is None
    with pytest.raises(KeyError):
        logic.path_view("h9_9_9_9", "h0_0_0_0")
    with pytest.raises(ValueError):
        logic.cost_view("h0_0_0_0", "h1_0_0_1", -1)
    assert logic.arp_mac("10.1.0.2") == t_mac(logic, "h1_0_0_1")
    assert logic.health_view()["ready"] is False


def t_mac(logic, name):
    return logic.topo.host(name).mac


def test_parse_real_ovs_dump_format():
    text = """ cookie=0x0, duration=5.1s, table=0, n_packets=3, n_bytes=294, priority=200,arp actions=CONTROLLER:65535
 cookie=0x0, duration=5.1s, table=0, n_packets=0, n_bytes=0, priority=50,ip,nw_src=10.0.0.1,nw_dst=10.1.0.2 actions=output:4
 cookie=0x0, duration=5.1s, table=0, n_packets=9, n_bytes=0, priority=0 actions=drop"""
    fl = parse_dump(text)
    assert [f.priority for f in fl] == [200, 50, 0]
    assert fl[1].match == {"dl_type": "0x0800", "nw_src": "10.0.0.1", "nw_dst": "10.1.0.2"}
    assert fl[1].out_port == 4 and fl[0].out_port == "CONTROLLER" and fl[2].out_port is None


def test_parse_real_ovs_multi_table_dump():
    """Printed by Open vSwitch 3.1 (`ovs-ofctl -O OpenFlow13 --no-names dump-flows`) for flows of
    the class-table layout: the walk follows write_metadata and goto_table to the output."""
    text = """OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x0, duration=0.040s, table=0, n_packets=0, n_bytes=0, priority=20,ip actions=goto_table:1
 cookie=0x0, duration=0.028s, table=1, n_packets=0, n_bytes=0, priority=10,ip,nw_src=10.0.0.2 actions=write_metadata:0x5/0xffff,goto_table:2
 cookie=0x0, duration=0.015s, table=2, n_packets=0, n_bytes=0, priority=10,ip,nw_dst=10.1.0.3 actions=write_metadata:0x70000/0xffff0000,goto_table:3
 cookie=0x0, duration=0.003s, table=3, n_packets=0, n_bytes=0, priority=10,metadata=0x70004 actions=output:2
 cookie=0x0, duration=0.003s, table=3, n_packets=0, n_bytes=0, priority=10,metadata=0x70005 actions=output:3
"""
    from netkv.controller.flowcheck import _lookup

    fl = parse_dump(text)
    assert [f.table for f in fl].count(3) == 2 and fl[0].goto == 1
    pkt = {"dl_type": "0x0800", "nw_src": "10.0.0.2", "nw_dst": "10.1.0.3"}
    assert _lookup(fl, dict(pkt)).out_port == 3
    assert _lookup(fl, {**pkt, "nw_src": "10.0.0.9"}) is None  # no source class: dropped

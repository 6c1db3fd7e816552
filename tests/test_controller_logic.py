"""Controller logic without Ryu or Mininet: rules realise the routing function; telemetry; REST views."""

import pytest

from netkv.controller.flowcheck import parse_dump, walk
from netkv.controller.logic import CONTROLLER, FabricLogic
from netkv.topology import FatTree


def render(rules):
    """Rules as `ovs-ofctl --no-names dump-flows` would print them."""
    lines = []
    for r in rules:
        m = r.match_dict
        parts = [f"priority={r.priority}"]
        if m.get("eth_type") == 0x0800:
            parts.append("ip")
        if m.get("eth_type") == 0x0806:
            parts.append("arp")
        if "ipv4_src" in m:
            parts.append(f"nw_src={m['ipv4_src']}")
        if "ipv4_dst" in m:
            parts.append(f"nw_dst={m['ipv4_dst']}")
        act = "drop" if r.out is None else ("CONTROLLER:65535" if r.out == CONTROLLER else f"output:{r.out}")
        lines.append(f" cookie=0x0, duration=1.0s, table=0, n_packets=0, n_bytes=0, {','.join(parts)} actions={act}")
    return "\n".join(lines)


def tables(logic):
    return {s.name: parse_dump(render(logic.rules(s.dpid))) for s in logic.topo.switches}


@pytest.mark.parametrize("k,G", [(2, 2), (4, 4)])
def test_rules_realise_every_routed_path(k, G):
    logic = FabricLogic(FatTree(k, G))
    tb = tables(logic)
    for s in range(logic.topo.n_hosts):
        for d in range(logic.topo.n_hosts):
            if s != d:
                assert walk(tb, logic.topo, s, d) == logic.routing.path(s, d)


def test_rule_counts_are_compact():
    logic = FabricLogic(FatTree(4, 4))
    n = len(logic.all_rules())
    assert n < 8000  # per-pair rules only at the upward choice points (edge, aggregation)


def test_port_down_reroutes_and_up_restores():
    logic = FabricLogic(FatTree(4, 4))
    t = logic.topo
    s, d = 0, 63
    before = logic.routing.path(s, d)
    core = next(x for x in before if t.links[x].level == "core")
    lk = t.links[core]
    changes = logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=False)
    assert changes
    tb = tables(logic)
    after = walk(tb, t, s, d)
    assert core not in after and after == logic.routing.path(s, d)
    assert logic.links_view()["links"][core]["up"] is False
    assert logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=False) == []  # no change twice
    # the far end reports down, then the near end flaps up: the cable stays down until both are up
    far = (t.nodes[lk.dst].dpid, lk.dst_port)
    logic.on_port_status(*far, up=False)
    assert logic.on_port_status(t.nodes[lk.src].dpid, lk.src_port, up=True) == []
    assert core not in walk(tables(logic), t, s, d)
    assert logic.on_port_status(*far, up=True)
    assert walk(tables(logic), t, s, d) == before


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

"""Fat-tree description, ID scheme and routing function."""

from collections import Counter

import numpy as np
import pytest

from netkv.topology import FatTree, LinkRates, Routing


@pytest.mark.parametrize("k,G", [(4, 4), (8, 4)])
def test_counts(k, G):
    t = FatTree(k, G)
    assert t.n_servers == k**3 // 4
    assert t.n_hosts == k**3 // 4 * G
    assert (t.n_edge, t.n_agg, t.n_core) == (k * k // 2, k * k // 2, (k // 2) ** 2)
    assert len(t.switches) == t.n_servers + k * k + (k // 2) ** 2
    # undirected links: hosts + servers + edge-agg + agg-core, each both ways
    und = t.n_hosts + t.n_servers + k * (k // 2) ** 2 + (k // 2) ** 2 * k
    assert len(t.links) == 2 * und
    if (k, G) == (4, 4):
        assert (t.n_hosts, len(t.switches)) == (64, 36)


def test_ids_unique_and_derived():
    t = FatTree(4, 4)
    for attr in ("name", "dpid", "mac"):
        vals = [getattr(n, attr) for n in t.hosts + t.switches if getattr(n, attr) is not None]
        assert len(vals) == len(set(vals)), attr
    ips = [h.ip for h in t.hosts]
    assert len(set(ips)) == len(ips)
    h = t.host("h1_0_1_2")
    assert (h.pod, h.a, h.b, h.c) == (1, 0, 1, 2)
    assert h.ip == "10.1.0.7" and h.mac == "02:00:01:00:01:02"
    assert t.switch_by_dpid(t.nodes["c1_0"].dpid).name == "c1_0"
    assert t.host_by_ip("10.1.0.7").name == "h1_0_1_2"
    # every switch port maps to one outgoing link and ports are unique per switch
    ports = Counter((lk.src, lk.src_port) for lk in t.links if t.nodes[lk.src].is_switch)
    assert max(ports.values()) == 1


def _check_path(t, s, d, links):
    assert t.links[links[0]].src == t.hosts[s].name
    assert t.links[links[-1]].dst == t.hosts[d].name
    for a, b in zip(links, links[1:]):
        assert t.links[a].dst == t.links[b].src
    nodes = [t.links[x].src for x in links] + [t.hosts[d].name]
    assert len(nodes) == len(set(nodes)), "loop"
    assert len(links) == {0: 2, 1: 4, 2: 6, 3: 8}[t.tier(s, d)]


@pytest.mark.parametrize("k", [4, 8])
def test_every_routed_path_valid_shortest_and_tiered(k):
    import networkx as nx

    t = FatTree(k, 4)
    r = Routing(t)
    g = nx.DiGraph()
    g.add_edges_from((lk.src, lk.dst) for lk in t.links)
    rng = np.random.default_rng(k)
    pairs = [(s, d) for s in range(t.n_hosts) for d in range(t.n_hosts) if s != d]
    if len(pairs) > 20000:
        pairs = [pairs[i] for i in rng.choice(len(pairs), 20000, replace=False)]
    for s, d in pairs:
        p = r.path(s, d)
        _check_path(t, s, d, p)
        # shortest: equal to the graph's shortest path length
        if (s + d) % 97 == 0:
            assert len(p) == nx.shortest_path_length(g, t.hosts[s].name, t.hosts[d].name)
    # tier definition
    assert t.tier(0, 1) == 0
    assert t.tier(0, 4) == 1
    assert t.tier(0, 4 * (k // 2)) == 2
    assert t.tier(0, t.n_hosts - 1) == 3


def test_all_paths_are_the_equal_cost_set():
    import networkx as nx

    t = FatTree(4, 2)
    g = nx.DiGraph()
    g.add_edges_from((lk.src, lk.dst) for lk in t.links)
    for s, d in [(0, 1), (0, 2), (0, 5), (0, 12)]:
        mine = {tuple(t.links[x].dst for x in p) for p in t.all_paths(s, d)}
        ref = {tuple(p[1:]) for p in nx.all_shortest_paths(g, t.hosts[s].name, t.hosts[d].name)}
        assert mine == ref


@pytest.mark.parametrize("k", [4, 8])
def test_routing_spreads_over_all_cores(k):
    t = FatTree(k, 4)
    r = Routing(t)
    use = Counter()
    for s in range(t.n_hosts):
        for d in range(t.n_hosts):
            if t.tier(s, d) == 3:
                core = [t.links[x].dst for x in r.path(s, d) if t.links[x].dst.startswith("c")]
                use[core[0]] += 1
    assert set(use) == {c.name for c in t.cores}
    assert max(use.values()) / min(use.values()) < 1.05


def test_vector_rows_equal_scalar_paths():
    t = FatTree(4, 4)
    r = Routing(t)
    dsts = np.arange(t.n_hosts)
    for s in (0, 17, 63):
        rows = r.path_row(s, dsts)
        for d in range(t.n_hosts):
            if d != s:
                assert sorted(x for x in rows[d] if x >= 0) == sorted(r.path(s, d))


def test_failed_link_is_avoided_and_restored():
    t = FatTree(4, 4)
    r = Routing(t)
    s, d = 0, 63
    before = r.path(s, d)
    core_link = next(x for x in before if t.links[x].level == "core")
    r.mark(core_link, up=False)
    after = r.path(s, d)
    assert core_link not in after
    _check_path(t, s, d, after)
    rows = r.path_row(s, np.array([d]))
    assert sorted(x for x in rows[0] if x >= 0) == sorted(after)
    # only pairs whose path crossed the failed link move
    moved = [
        (a, b) for a in range(t.n_hosts) for b in range(t.n_hosts) if a != b and Routing(t).path(a, b) != r.path(a, b)
    ]
    assert moved and all(core_link in Routing(t).path(a, b) for a, b in moved)
    r.mark(core_link, up=True)
    assert r.path(s, d) == before


def test_bad_parameters():
    with pytest.raises(ValueError, match="even"):
        FatTree(3, 4)
    with pytest.raises(ValueError, match="gpus_per_server"):
        FatTree(4, 0)


def test_oversubscription_is_stated_per_layer_down_over_up():
    """The config's `oversubscription` divides edge and core rates; what a layer really is, down:up,
    follows from the rates (the paper-like file is 18:1 at the server switch and 1:1 above it)."""
    paper = FatTree(4, 4, LinkRates(900, 200, 400, 400, 2.0))
    assert paper.oversubscription_by_layer() == {"server": 18.0, "edge": 1.0, "agg": 1.0}
    tapered = FatTree(4, 2, LinkRates(400, 400, 100, 50, 1.0))
    assert tapered.oversubscription_by_layer() == {"server": 2.0, "edge": 4.0, "agg": 2.0}
    assert paper.summary()["oversubscription_by_layer"]["server"] == 18.0


def test_netkv_topo_prints_down_up_per_layer(capsys):
    from netkv.cli import main

    assert main(["topo", "--k", "4", "--gpus", "2"]) == 0
    assert "  oversubscription (down:up): server switch 4.5:1, edge 1:1, aggregation 1:1" in capsys.readouterr().out

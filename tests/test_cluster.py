"""Cluster placement of the fat-tree (no Mininet): whole pods per server, the core local, so only
aggregation-core links cross servers."""

import pytest

from netkv.config import parse_section
from netkv.emulation.cluster import LOCAL, ClusterError, placement
from netkv.topology import FatTree


def _topo(k, gpus=2):
    return FatTree.from_config(parse_section("topology", {"k": k, "gpus_per_server": gpus}))


@pytest.mark.parametrize(
    "k, servers", [(2, ["A", "B"]), (4, ["A", "B"]), (4, ["A", "B", "C", "D"]), (8, ["A", "B", "C"])]
)
def test_pods_stay_whole_and_only_agg_core_links_cross_servers(k, servers):
    t = _topo(k)
    place = placement(t, servers)
    assert set(place) == {n.name for n in [*t.hosts, *t.switches]}
    for n in [*t.hosts, *t.switches]:
        if n.kind == "core":
            assert place[n.name] == LOCAL
        else:
            assert place[n.name] == servers[n.pod * len(servers) // k]
    kinds = {n.name: n.kind for n in t.switches}
    crossing = {(lk.src, lk.dst) for lk in t.links if place[lk.src] != place[lk.dst]}
    assert crossing and all({kinds.get(a), kinds.get(b)} == {"agg", "core"} for a, b in crossing)
    # every server holds pods, and the pods are spread as evenly as blocks allow
    per = [sum(1 for p in range(k) if servers[p * len(servers) // k] == s) for s in servers]
    assert max(per) - min(per) <= 1 and min(per) >= 1


def test_placement_needs_a_server():
    with pytest.raises(ClusterError, match="no servers"):
        placement(_topo(2), [])

"""Network cost oracles: static bottlenecks, counter residuals with floor and age, committed transfers,
rows over dead links, the interface every oracle offers."""

import math

import numpy as np
import pytest

from netkv.scheduler.oracle import CounterOracle, Snapshot, StaticOracle

from conftest import FAR, NEAR, ROUTING, TOPO, P, congested_snapshot


def test_static_oracle_uses_bottleneck_capacity():
    o = StaticOracle(TOPO, ROUTING)
    same_server = TOPO.host_index["h0_0_0_1"]
    sec, age = o.cost(P, same_server, 1e9)
    assert sec == pytest.approx(1e9 / (900e9 / 8)) and age is None
    sec, _ = o.cost(P, FAR, 1e9)
    assert sec == pytest.approx(1e9 / (400e9 / 8))
    row, _ = o.cost_row(P, np.array([same_server, FAR]), np.array([1e9, 0.0]))
    assert row == pytest.approx([1e9 / (900e9 / 8), 0.0])


def test_counter_oracle_residual_floor_age_and_down_links():
    snap = congested_snapshot(P, FAR, util=0.75)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.25, floor_fraction=0.02)
    sec, age = o.cost(P, FAR, 1e9)
    assert sec == pytest.approx(1e9 / (0.25 * 400e9 / 8))
    assert age == pytest.approx(0.25)
    full = congested_snapshot(P, FAR, util=1.2)  # counters can read above capacity
    o2 = CounterOracle(TOPO, ROUTING, lambda: full, lambda: 10.0, floor_fraction=0.02)
    assert o2.cost(P, FAR, 1e9)[0] == pytest.approx(1e9 / (0.02 * 400e9 / 8))
    # a link reported down: pairs still routed over it cost infinity; 0 bytes cost 0
    lk = ROUTING.path(P, FAR)[3]
    dead = Snapshot(10.0, np.zeros(TOPO.n_links), down=frozenset([lk]), version=2)
    o3 = CounterOracle(TOPO, ROUTING, lambda: dead, lambda: 10.0)
    assert math.isinf(o3.cost(P, FAR, 1e9)[0])
    row, _ = o3.cost_row(P, np.array([FAR, NEAR]), np.array([0.0, 1e9]))
    assert row[0] == 0.0 and math.isfinite(row[1])


def test_counter_oracle_counts_committed_transfers_until_seen():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    base = o.cost(P, FAR, 1e9)[0]
    o.commit("a", P, FAR, 25e9, 1.0)  # 25 GB/s expected on the path: half of 400 Gbit/s
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(2 * base)
    o.started("a", 9.0)  # started before the snapshot: the counters show it, do not count twice
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(base)
    o.started("a", 11.0)
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(2 * base)
    o.release("a")
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(base)
    off = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0, count_committed=False)
    off.commit("a", P, FAR, 25e9, 1.0)
    assert off.cost(P, FAR, 1e9)[0] == pytest.approx(base)


def test_counter_oracle_without_telemetry_falls_back_to_static():
    o = CounterOracle(TOPO, ROUTING, lambda: None, lambda: 0.0)
    assert o.cost(P, FAR, 1e9) == StaticOracle(TOPO, ROUTING).cost(P, FAR, 1e9)


def test_committed_transfers_count_only_when_their_windows_overlap():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    base = o.cost(P, FAR, 1e9)[0]
    o.commit("later", P, FAR, 25e9, 1.0, start=20.0)  # runs 20..21
    assert o.cost(P, FAR, 1e9, at=20.5)[0] == pytest.approx(2 * base)
    assert o.cost(P, FAR, 1e9, at=12.0)[0] == pytest.approx(base)
    assert o.cost(P, FAR, 1e9, at=22.0)[0] == pytest.approx(base)


def test_a_row_over_a_dead_link_is_exact_and_quiet():
    import warnings

    lk = ROUTING.path(P, FAR)[3]
    dead = Snapshot(10.0, np.zeros(TOPO.n_links), down=frozenset([lk]), version=2)
    o = CounterOracle(TOPO, ROUTING, lambda: dead, lambda: 10.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings leak out of the row computation
        row, age = o.cost_row(P, np.array([FAR, NEAR, FAR]), np.array([0.0, 1e9, 1e9]))
    assert row[0] == 0.0 and math.isinf(row[2]) and age == 0.25
    assert row[1] == pytest.approx(1e9 / (400e9 / 8))


def test_cost_row_counts_committed_transfers_in_the_window_asked_about():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    dsts = np.array([FAR, NEAR])
    base, age = o.cost_row(P, dsts, np.array([1e9, 1e9]))
    assert age == 0.0
    o.commit("later", P, FAR, 25e9, 1.0, start=20.0)  # runs 20..21 on P's uplinks and FAR's path
    during, _ = o.cost_row(P, dsts, np.array([1e9, 1e9]), at=20.5)
    before, _ = o.cost_row(P, dsts, np.array([1e9, 1e9]), at=12.0)
    assert during[0] == pytest.approx(2 * base[0]) and before[0] == pytest.approx(base[0])


def test_rows_follow_the_source_and_the_routing():
    """The row cache is keyed by source and routing state: same destination array, other source or
    a rerouted path, other answer."""
    r = ROUTING.__class__(TOPO)
    lk = r.path(P, FAR)[3]  # P's edge -> aggregation link towards FAR, 90% busy
    rates = np.zeros(TOPO.n_links)
    rates[lk] = 0.9 * TOPO.capacity_bps[lk]
    snap = Snapshot(10.0, rates)
    o = CounterOracle(TOPO, r, lambda: snap, lambda: 10.0)
    dsts = np.array([FAR, NEAR])
    nb = np.array([1e9, 1e9])
    from_p, _ = o.cost_row(P, dsts, nb)
    other = TOPO.host_index["h1_1_1_1"]
    from_other, _ = o.cost_row(other, dsts, nb)
    assert from_p[0] == pytest.approx(1e9 / (0.25 * 400e9 / 8))  # the floor on P's congested path
    assert from_other[0] == pytest.approx(1e9 / (400e9 / 8)) and from_other[0] < from_p[0]
    # take that link down in the routing: the path moves off it
    r.set_down([lk])
    moved, _ = o.cost_row(P, dsts, nb)
    assert lk not in r.path(P, FAR) and moved[0] < from_p[0]
    # FAR's own link down: no path at all, an infinite cost (the row stays finite for NEAR)
    r.set_down([r.path(P, FAR)[-1]])
    gone, _ = o.cost_row(P, dsts, nb)
    assert math.isinf(gone[0]) and math.isfinite(gone[1])
    assert math.isinf(o.cost(P, FAR, 1e9)[0])


def test_commit_ignores_empty_transfers_and_unusable_estimates():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    base = o.cost(P, FAR, 1e9)[0]
    o.commit("empty", P, FAR, 0.0, 1.0)
    assert "empty" not in o.committed
    o.commit("no-estimate", P, FAR, 1e9, math.inf)  # recorded, but with no rate to count
    assert o.committed["no-estimate"].rate == 0.0 and o.cost(P, FAR, 1e9)[0] == base


def test_a_new_snapshot_object_is_read_even_with_the_same_version():
    snaps = [Snapshot(10.0, np.zeros(TOPO.n_links))]
    o = CounterOracle(TOPO, ROUTING, lambda: snaps[-1], lambda: 10.0)
    idle = o.cost(P, FAR, 1e9)[0]
    snaps.append(congested_snapshot(P, FAR, util=0.5))
    snaps[-1].version = 0  # a source that does not number its snapshots
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(2 * idle)
    row, _ = o.cost_row(P, np.array([FAR]), np.array([1e9]))
    assert row[0] == pytest.approx(2 * idle)


def test_a_zero_time_estimate_is_committed_without_a_rate():
    o = CounterOracle(TOPO, ROUTING, lambda: Snapshot(10.0, np.zeros(TOPO.n_links)), lambda: 10.0)
    o.commit("instant", P, FAR, 1e9, 0.0)
    assert o.committed["instant"].rate == 0.0 and o.committed["instant"].duration == 0.0


def test_per_link_sample_times_set_the_age_and_what_in_flight_transfers_count():
    """Links sampled at different instants: a decision's age is that of the oldest sample on its
    path, and a transfer in flight counts only on the links whose sample predates its start."""
    path = ROUTING.path(P, FAR)
    at = np.full(TOPO.n_links, 9.0)
    at[path[0]] = 8.0  # the path's first link was sampled earliest
    at[path[1]] = 9.6  # and its second after the transfer below started
    other = ROUTING.path(P, NEAR)
    snap = Snapshot(8.0, np.zeros(TOPO.n_links), version=1, link_sampled_at=at)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0, floor_fraction=0.01)
    assert o.cost(P, FAR, 1e9)[1] == pytest.approx(2.0)
    if path[0] not in other:
        assert o.cost(P, NEAR, 1e9)[1] == pytest.approx(1.0)
    o.commit("x", P, FAR, 1e9, 0.02)  # 50 GB/s while it runs
    o.started("x", 9.5)
    bw = o.residual(snap)
    cap = TOPO.capacity_bps
    assert bw[path[1]] == pytest.approx(cap[path[1]])  # its sample (9.6) already shows the transfer
    for lid in (path[0], path[2]):  # sampled before it started: the scheduler adds it
        assert bw[lid] == pytest.approx(max(cap[lid] - 5e10, 0.01 * cap[lid]))
    # a snapshot without per-link times: everything dates from sampled_at (started after: counted)
    flat = Snapshot(9.0, np.zeros(TOPO.n_links), version=2)
    assert o.residual(flat)[path[1]] == pytest.approx(max(cap[path[1]] - 5e10, 0.01 * cap[path[1]]))


def _fair(snap, **kw):
    from netkv.scheduler.oracle import FairShareOracle

    return FairShareOracle(TOPO, ROUTING, lambda: snap, lambda: 10.25, **kw)


def test_fair_share_gives_a_new_flow_its_share_of_a_link_an_elephant_fills():
    full = congested_snapshot(P, FAR, util=1.0)
    sec, _ = _fair(full).cost(P, FAR, 1e9)
    assert sec == pytest.approx(1e9 / (0.5 * 400e9 / 8))  # shares with one elephant: half
    counters = CounterOracle(TOPO, ROUTING, lambda: full, lambda: 10.25, floor_fraction=0.25)
    assert counters.cost(P, FAR, 1e9)[0] == pytest.approx(1e9 / (0.25 * 400e9 / 8))  # the floor
    # a flow held back elsewhere at 30%: the 70% it leaves is what a new flow gets
    light = congested_snapshot(P, FAR, util=0.3)
    assert _fair(light).cost(P, FAR, 1e9)[0] == pytest.approx(1e9 / (0.7 * 400e9 / 8))
    # a link reported down still costs infinity
    lk = ROUTING.path(P, FAR)[3]
    dead = Snapshot(10.0, np.zeros(TOPO.n_links), down=frozenset([lk]), version=2)
    assert math.isinf(_fair(dead).cost(P, FAR, 1e9)[0])


def test_fair_share_counts_the_schedulers_own_transfers_as_flows():
    idle = Snapshot(10.0, np.zeros(TOPO.n_links), version=1, link_sampled_at=np.full(TOPO.n_links, 10.0))
    o = _fair(idle)
    cap = 400e9 / 8
    # two own transfers decided, not started, expected over [11, 12] s on P -> FAR's path
    o.commit("a", P, FAR, cap * 0.5, 1.0, start=11.0)
    o.commit("b", P, FAR, cap * 0.5, 1.0, start=11.0)
    assert o.cost(P, FAR, 1e9, at=11.5)[0] == pytest.approx(1e9 / (cap / 3))
    assert o.cost(P, FAR, 1e9, at=20.0)[0] == pytest.approx(1e9 / cap)  # after them: the whole link
    # started before the links were sampled and seen in the counters at their rate: still two flows,
    # not one unknown elephant on top
    o.started("a", 9.0)
    o.started("b", 9.0)
    seen = congested_snapshot(P, FAR, util=1.0)
    seen.link_sampled_at = np.full(TOPO.n_links, 10.0)
    o.source = lambda: seen
    assert o.cost(P, FAR, 1e9)[0] == pytest.approx(1e9 / (cap / 3))


def test_probe_oracle_prices_measured_pairs_by_their_train_and_the_rest_statically():
    from netkv.scheduler.oracle import ProbeOracle

    now = [10.0]
    o = ProbeOracle(TOPO, ROUTING, lambda: now[0])
    static = StaticOracle(TOPO, ROUTING)
    lat = float(TOPO.latency_s[ROUTING.path(P, FAR)].sum())
    # nothing measured yet: the static answer, no age
    assert o.cost(P, FAR, 1e9) == (static.cost(P, FAR, 1e9)[0], None)
    dsts = np.array([FAR, NEAR])
    row, age = o.cost_row(P, dsts, np.array([1e9, 1e9]))
    assert row == pytest.approx(static.cost_row(P, dsts, np.array([1e9, 1e9]))[0]) and age is None
    o.record(P, FAR, 5e9, at=9.5)  # a train saw 5 GB/s (a tenth of the 400 Gbit/s path)
    sec, age = o.cost(P, FAR, 1e9)
    assert sec == pytest.approx(1e9 / 5e9 + lat) and age == pytest.approx(0.5)
    row, age = o.cost_row(P, dsts, np.array([1e9, 1e9]))
    assert row[0] == pytest.approx(1e9 / 5e9 + lat)  # measured
    assert row[1] == pytest.approx(static.cost(P, NEAR, 1e9)[0])  # never measured: static
    assert age == pytest.approx(0.5)
    o.record(P, FAR, 10e9, at=9.9)  # the latest train replaces the older one (the row is rebuilt)
    assert o.cost_row(P, dsts, np.array([1e9, 0.0]))[0] == pytest.approx([1e9 / 10e9 + lat, 0.0])
    o.record(P, NEAR, 0.0, at=9.9)  # a train that got nothing through: the pair costs infinity
    assert math.isinf(o.cost(P, NEAR, 1e9)[0]) and o.cost(P, NEAR, 0.0)[0] == 0.0


def test_probe_pairs_visit_every_pair_once_per_cycle_in_a_seeded_order():
    from netkv.scheduler.oracle import probe_pairs

    a = probe_pairs([1, 2, 3], [4, 5], seed=7)
    assert sorted(a) == [(p, d) for p in (1, 2, 3) for d in (4, 5)]
    assert a == probe_pairs([1, 2, 3], [4, 5], seed=7) and a != probe_pairs([1, 2, 3], [4, 5], seed=8)

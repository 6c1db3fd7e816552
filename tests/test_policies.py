"""Policies choose the obviously right decode instance in constructed cases; the oracles."""

import math

import numpy as np
import pytest

from netkv import DATA_DIR
from netkv.compute import MODEL_PRESETS, ComputeModel, load_profile
from netkv.scheduler.core import Scheduler
from netkv.scheduler.oracle import CounterOracle, Snapshot, StaticOracle
from netkv.scheduler.policies import Query, registry
from netkv.scheduler.view import ClusterView
from netkv.topology import FatTree, Routing
from netkv.trace import Request

TOPO = FatTree(4, 4)
ROUTING = Routing(TOPO)
MODEL = MODEL_PRESETS["llama3-8b"]
COMPUTE = ComputeModel(load_profile(DATA_DIR / "h200-llama3-hf-eager.csv", MODEL.name), MODEL)

P = TOPO.host_index["h0_0_0_0"]
FAR = TOPO.host_index["h2_1_1_3"]  # other pod
NEAR = TOPO.host_index["h0_1_0_3"]  # same pod, other edge


def req(n_tokens=16384, ids=None):
    ids = ids if ids is not None else tuple(range(1000, 1000 + math.ceil(n_tokens / 512)))
    return Request(0, 0.0, n_tokens, 100, tuple(ids))


def view(decode, prefill=(P,)):
    return ClusterView(list(prefill), list(decode), COMPUTE)


def congested_snapshot(src, dst, util=1.0, spare=None):
    """Links of src->dst's path loaded to `util` (except those on the path src->spare)."""
    rates = np.zeros(TOPO.n_links)
    keep = set(ROUTING.path(src, spare)) if spare is not None else set()
    for lk in ROUTING.path(src, dst):
        if lk not in keep:
            rates[lk] = util * TOPO.capacity_bps[lk]
    return Snapshot(10.0, rates, version=1)


def test_netkv_avoids_congested_path_least_loaded_takes():
    v = view([FAR, NEAR])
    v.active[1] = 1  # NEAR is busier...
    v.ctx_total[1] = 2000
    v.remaining[1] = 50
    v.touch_all()
    snap = congested_snapshot(P, FAR, spare=NEAR)  # ...but FAR's path is saturated
    oracle = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.5)
    q = lambda: Query(req(), 0, v)  # noqa: E731
    assert registry.create("least_loaded").choose(q(), oracle) == 0
    assert registry.create("netkv").choose(q(), oracle) == 1
    # with an idle network, netkv takes the idle instance too
    idle = CounterOracle(TOPO, ROUTING, lambda: Snapshot(10.0, np.zeros(TOPO.n_links)), lambda: 10.5)
    assert registry.create("netkv").choose(q(), idle) == 0


def test_cache_load_aware_picks_the_prefix_holder():
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"]])
    r = req()
    v.decode_index.add(2, r.hash_ids[0])
    for b in r.hash_ids[:20]:
        v.decode_index.add(1, b)
    q = Query(r, 0, v)
    assert list(q.hits) == [0, 20, 1]
    assert registry.create("cache_load_aware").choose(q, StaticOracle(TOPO, ROUTING)) == 1
    # a heavy load on the holder outweighs the hit when overlap_weight is small
    v.kv_used[1] = 1000
    v.touch_all()
    pol = registry.create("cache_load_aware", {"overlap_weight": 1.0})
    assert pol.choose(Query(r, 0, v), None) != 1


def test_round_robin_cycles_and_skips_dead():
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"]])
    rr = registry.create("round_robin")
    picks = [rr.choose(Query(req(), 0, v), None) for _ in range(4)]
    assert picks == [0, 1, 2, 0]
    v.set_decode_alive(1, False)
    picks = [rr.choose(Query(req(), 0, v), None) for _ in range(3)]
    assert 1 not in picks


@pytest.mark.parametrize("name", ["random", "least_loaded", "cache_load_aware", "netkv"])
def test_no_policy_picks_a_dead_instance(name):
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"]])
    v.set_decode_alive(0, False)
    v.set_decode_alive(2, False)
    pol = registry.create(name, {}, seed=5)
    for _ in range(20):
        assert pol.choose(Query(req(), 0, v), StaticOracle(TOPO, ROUTING)) == 1


def test_registry_lists_all_policies_and_rejects_unknown():
    assert set(registry.names()) >= {"round_robin", "random", "least_loaded", "cache_load_aware", "netkv"}
    with pytest.raises(ValueError, match="unknown policy"):
        registry.get("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        registry.create("netkv", {"bogus": 1})


def test_scheduler_decision_fields():
    v = view([FAR, NEAR])
    s = Scheduler("netkv", {}, 1, v, StaticOracle(TOPO, ROUTING), TOPO)
    d = s.decide(req(1000))
    assert d.bytes_to_send == 1000 * MODEL.kv_bytes_per_token
    assert d.blocks_to_send == 2
    assert d.decision_us > 0 and d.prefill_choice_us > 0
    assert d.tier == TOPO.tier(P, d.decode_host)


# ---- oracles --------------------------------------------------------------------------------


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

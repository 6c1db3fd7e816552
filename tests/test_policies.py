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
    r = req()  # 32 blocks
    v.decode_index.add(2, r.hash_ids[0])
    for b in r.hash_ids[:20]:
        v.decode_index.add(1, b)
    q = Query(r, 0, v)
    assert list(q.hits) == [0, 20, 1]
    assert registry.create("cache_load_aware").choose(q, StaticOracle(TOPO, ROUTING)) == 1
    # the holder also holds 1,000 blocks of load: cost = w x missing + load
    v.kv_used[1] = 1000
    v.touch_all()
    small = registry.create("cache_load_aware", {"overlap_weight": 0.5})  # 0.5 x 12 + 1032 > 0.5 x 31 + 32
    assert small.choose(Query(r, 0, v), None) == 2
    big = registry.create("cache_load_aware", {"overlap_weight": 100.0})  # 100 x 12 + 1032 < 100 x 31 + 32
    assert big.choose(Query(r, 0, v), None) == 1


def test_cache_load_aware_counts_kv_pending_and_its_own_blocks():
    v = view([FAR, NEAR])
    v.kv_pending[0] = 10  # blocks of sequences queued or inbound at FAR
    v.touch_all()
    pol = registry.create("cache_load_aware")
    assert all(pol.choose(Query(req(), 0, v), None) == 1 for _ in range(10))
    v.kv_used[1] = 10  # now equal loads: a tie, broken at random between the two
    v.touch_all()
    assert {pol.choose(Query(req(), 0, v), None) for _ in range(30)} == {0, 1}


def test_least_loaded_counts_running_waiting_and_inbound_sequences():
    pol = registry.create("least_loaded")
    for field in ("active", "queued", "inbound"):
        v = view([FAR, NEAR])
        getattr(v, field)[0] = 1
        v.touch_all()
        assert all(pol.choose(Query(req(), 0, v), None) == 1 for _ in range(10)), field
    v = view([FAR, NEAR])  # equal sequences: the lighter KV use wins
    v.active[:] = 2
    v.kv_used[:] = [50, 40]
    v.touch_all()
    assert all(pol.choose(Query(req(), 0, v), None) == 1 for _ in range(10))


def _idle_oracle():
    return CounterOracle(TOPO, ROUTING, lambda: Snapshot(10.0, np.zeros(TOPO.n_links)), lambda: 10.0)


def test_netkv_weighs_the_wait_for_room_in_the_batch():
    """Equal transfer (both across pods). Slot 0: a full batch of short contexts with many tokens
    left (long wait, short next step). Slot 1: room in a batch of long contexts (half-step wait,
    long next step). The wait decides for slot 1; without the wait term the next step decides for 0."""
    far2 = TOPO.host_index["h3_0_0_0"]
    v = view([FAR, far2])
    B = COMPUTE.max_batch
    v.active[:] = [B, B - 1]
    v.ctx_total[:] = [100.0 * B, 8000.0 * (B - 1)]
    v.remaining[:] = [20000.0 * B, 10.0 * (B - 1)]
    v.touch_all()
    wait, first = v.est_wait_s(32), v.first_step_s(16384)
    assert wait[0] > wait[1] + (first[1] - first[0]) and first[1] > first[0]
    pol = registry.create("netkv", {}, seed=2)
    assert all(pol.choose(Query(req(), 0, v), _idle_oracle()) == 1 for _ in range(10))
    no_wait = registry.create("netkv", {"wait_weight": 0.0}, seed=2)
    assert all(no_wait.choose(Query(req(), 0, v), _idle_oracle()) == 0 for _ in range(10))


def test_netkv_weighs_the_first_decode_step():
    """Equal transfer and zero wait on both: FAR idle, far2 with a full batch about to finish (no
    remaining tokens, so no wait) whose next step with the new sequence is far longer."""
    far2 = TOPO.host_index["h3_0_0_0"]
    v = view([far2, FAR])
    v.active[0] = COMPUTE.max_batch
    v.ctx_total[0] = 4000.0 * COMPUTE.max_batch
    v.remaining[0] = 0.0
    v.touch_all()
    assert list(v.est_wait_s(32)) == [0.0, 0.0]
    first = v.first_step_s(16384)
    assert first[0] > first[1]
    pol = registry.create("netkv", {}, seed=3)
    assert all(pol.choose(Query(req(), 0, v), _idle_oracle()) == 1 for _ in range(20))


def test_netkv_weighs_the_transfer_and_counts_decode_prefix_hits():
    """Two candidates across pods, one already holding most of the prefix: fewer bytes to move."""
    far2 = TOPO.host_index["h3_0_0_0"]
    v = view([FAR, far2])
    r = req()
    for b in r.hash_ids[:24]:
        v.decode_index.add(1, b)
    q = Query(r, 0, v)
    assert list(q.missing_bytes) == [16384 * MODEL.kv_bytes_per_token, (16384 - 24 * 512) * MODEL.kv_bytes_per_token]
    pol = registry.create("netkv", {}, seed=1)
    assert all(pol.choose(Query(r, 0, v), _idle_oracle()) == 1 for _ in range(20))
    # transfer_weight 0: the network no longer matters and the two tie
    blind = registry.create("netkv", {"transfer_weight": 0.0}, seed=1)
    assert {blind.choose(Query(r, 0, v), _idle_oracle()) for _ in range(30)} == {0, 1}


def test_netkv_cost_is_the_weighted_sum_of_its_terms():
    """The chosen slot is the argmin of w_t x transfer + w_w x wait + first step, term by term."""
    rng = np.random.default_rng(7)
    hosts = [TOPO.host_index[h] for h in ("h0_0_0_1", "h0_0_1_2", "h0_1_0_3", "h1_0_0_0", "h2_1_1_3", "h3_1_0_1")]
    for trial in range(40):
        v = view(hosts)
        v.active[:] = rng.integers(0, COMPUTE.max_batch + 1, len(hosts))
        v.ctx_total[:] = v.active * rng.uniform(100, 8000, len(hosts))
        v.remaining[:] = v.active * rng.uniform(0, 400, len(hosts))
        v.inbound[:] = rng.integers(0, 3, len(hosts))
        v.touch_all()
        snap = Snapshot(10.0, rng.uniform(0, 1, TOPO.n_links) * TOPO.capacity_bps)
        oracle = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
        wt, ww = rng.choice([0.5, 1.0, 3.0]), rng.choice([0.25, 1.0, 2.0])
        q = Query(req(8192), 0, v)
        transfer, _ = oracle.cost_row(P, v.decode_hosts, q.missing_bytes)
        cost = wt * transfer + ww * v.est_wait_s(q.req.n_blocks) + v.first_step_s(8192)
        pol = registry.create("netkv", {"transfer_weight": float(wt), "wait_weight": float(ww)})
        assert pol.choose(q, oracle) == int(np.argmin(cost)), trial


def test_est_wait_is_half_a_step_with_room_and_littles_law_without():
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"], TOPO.host_index["h2_0_0_0"]])
    v.active[:] = [0, 4, COMPUTE.max_batch, 4]
    v.ctx_total[:] = [0, 4000, 128000, 4000]
    v.remaining[:] = [0, 400, 12800, 400]
    v.queued[3] = 2  # someone already waits at slot 3: no room for a newcomer
    v.inbound[3] = 1
    v.touch_all()
    step = v.step_s()
    c = COMPUTE
    assert step[0] == 0.0
    assert step[1] == pytest.approx(c.step_a + 4 * c.step_b + 4000 * c.step_c)
    wait = v.est_wait_s(10)
    assert wait[0] == 0.0
    assert wait[1] == pytest.approx(step[1] / 2)
    # full batch: (waiting + 1) sequences must finish at active / (remaining / active x step) per second
    assert wait[2] == pytest.approx(1 * (12800 / c.max_batch) * step[2] / c.max_batch)
    assert wait[3] == pytest.approx(4 * (400 / 4) * step[3] / 4)
    # no KV room for the newcomer: the same Little's-law wait at slot 1
    v.kv_used[1] = c.kv_blocks - 5
    v.touch(1)
    assert v.est_wait_s(10)[1] == pytest.approx(1 * (400 / 4) * step[1] / 4)
    assert v.est_wait_s(5)[1] == pytest.approx(step[1] / 2)
    # touching one slot refreshes it alone, and the vectorised refresh agrees with the per-slot one
    v.remaining[2] = 6400
    v.touch(2)
    one = v.est_wait_s(10).copy()
    v.touch_all()
    assert np.allclose(v.est_wait_s(10), one)
    assert one[2] == pytest.approx(0.5 * wait[2])


def test_refreshing_many_slots_at_once_equals_refreshing_each():
    """Over 16 touched slots the view refreshes its estimates in one vectorised pass; it must agree
    with the per-slot refresh (idle slots, single sequences, full batches and waiting ones included)."""
    rng = np.random.default_rng(11)
    n = 24
    act = rng.integers(0, COMPUTE.max_batch + 1, n)
    act[:4] = [0, 1, COMPUTE.max_batch, 1]
    queued, inbound = rng.integers(0, 2, n), rng.integers(0, 3, n)
    kv = rng.integers(0, COMPUTE.kv_blocks, n)
    import copy

    c = copy.copy(COMPUTE)
    c.step_b = 2e-4  # the H200 profile's fit has no per-sequence term; give it one so it is checked
    a, b = ClusterView([P], list(range(n)), c), ClusterView([P], list(range(n)), c)
    b.step_s()  # b's initial refresh (all slots dirty) happens now, before its state is set
    for v in (a, b):
        v.active[:] = act
        v.ctx_total[:] = act * 3000.0
        v.remaining[:] = act * 200.0
        v.queued[:], v.inbound[:], v.kv_used[:] = queued, inbound, kv
    a.touch_all()  # one vectorised pass
    for s in range(n):  # one slot at a time
        b.touch(s)
        b.step_s()
    for fn in (lambda v: v.step_s(), lambda v: v.est_wait_s(40), lambda v: v.first_step_s(1000)):
        assert np.allclose(fn(a), fn(b))
    assert len(set(np.round(a.est_wait_s(40), 9))) > 10  # the case is not degenerate
    assert a.step_s()[0] == 0.0 and a.est_wait_s(40)[0] == 0.0


def test_the_prefill_choice_weighs_backlog_and_prefix_hits():
    pre = [P, TOPO.host_index["h0_0_0_1"], TOPO.host_index["h0_0_0_2"]]
    v = ClusterView(pre, [FAR], COMPUTE)
    s = Scheduler("round_robin", {}, 1, v, StaticOracle(TOPO, ROUTING), TOPO)
    r = req(8192)
    pf = COMPUTE.prefill_s(8192)
    v.prefill_backlog_s[:] = [0.5, 0.2, 0.3]
    assert s.choose_prefill(r) == (1, 0, pytest.approx(0.2 + pf))
    # slot 2 holds 12 of the 16 blocks: its prefill is much shorter
    for b in r.hash_ids[:12]:
        v.prefill_index.add(2, b)
    slot, hits, finish = s.choose_prefill(r)
    assert (slot, hits) == (2, 12) and finish == pytest.approx(0.3 + COMPUTE.prefill_s(8192 - 12 * 512))
    v.prefill_alive[2] = False
    assert s.choose_prefill(r)[0] == 1
    v.prefill_alive[:] = False
    with pytest.raises(RuntimeError, match="no live prefill"):
        s.choose_prefill(r)


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


# ---- terms the first mutation runs found untested -------------------------------------------------


def test_least_loaded_breaks_ties_by_kv_use_without_outweighing_a_sequence():
    pol = registry.create("least_loaded")
    v = view([FAR, NEAR])
    v.active[:] = [1, 0]
    v.kv_used[:] = [0, 100]  # one sequence more outweighs any KV use
    v.touch_all()
    assert pol.choose(Query(req(), 0, v), None) == 1
    v.active[:] = [0, 1]
    v.kv_used[:] = [COMPUTE.kv_blocks, 0]  # even a full KV cache weighs less than one sequence
    v.touch_all()
    assert pol.choose(Query(req(), 0, v), None) == 0


class _Recording:
    """An oracle that records the start time it is asked about."""

    name = "rec"

    def __init__(self):
        self.at = []

    def cost_row(self, src, dsts, nbytes, at=None):
        self.at.append(at)
        return np.zeros(len(dsts)), None


def test_netkv_asks_the_oracle_about_the_expected_transfer_start():
    v = view([FAR, NEAR])
    o = _Recording()
    registry.create("netkv").choose(Query(req(), 0, v, transfer_start=12.5), o)
    assert o.at == [12.5]


@pytest.mark.parametrize("name", ["round_robin", "random", "least_loaded", "cache_load_aware", "netkv"])
def test_no_live_decode_instance_is_an_error(name):
    v = view([FAR, NEAR])
    v.set_decode_alive(0, False)
    v.set_decode_alive(1, False)
    assert not v.all_alive and list(v.decode_alive) == [False, False]
    with pytest.raises(RuntimeError, match=r"^no live decode instance$"):
        registry.create(name).choose(Query(req(), 0, v), _idle_oracle())
    v.set_decode_alive(0, True)
    v.set_decode_alive(1, True)
    assert v.all_alive


def test_seeded_policies_repeat_and_differ_by_seed():
    v = view(list(range(16)))
    def seq(seed, n=30):
        pol = registry.create("random", {}, seed)
        return [pol.choose(Query(req(), 0, v), None) for _ in range(n)]

    assert seq(4) == seq(4) and seq(4) != seq(5)
    direct = registry.get("random")({})  # the default seed is 0
    assert [direct.choose(Query(req(), 0, v), None) for _ in range(30)] == seq(0)


def test_round_robin_resumes_after_the_slot_it_gave():
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"], TOPO.host_index["h2_0_0_0"]])
    rr = registry.create("round_robin")
    assert rr.choose(Query(req(), 0, v), None) == 0
    v.set_decode_alive(1, False)
    v.set_decode_alive(2, False)
    assert [rr.choose(Query(req(), 0, v), None) for _ in range(3)] == [3, 0, 3]


def test_the_registry_refuses_nameless_and_duplicate_policies():
    from netkv.scheduler.policies.base import Policy
    from netkv.scheduler.policies.registry import POLICIES, register

    class Nameless(Policy):
        pass

    with pytest.raises(TypeError, match=r"^Nameless has no policy name$"):
        register(Nameless)

    class Imposter(Policy):
        name = "netkv"

    with pytest.raises(ValueError, match=r"^policy name 'netkv' registered twice$"):
        register(Imposter)
    nk = registry.get("netkv")
    assert register(nk) is nk and POLICIES.get("netkv") is nk  # registering the same class again is harmless

    class Fresh(Policy):
        name = "zz_test_fresh"

    try:
        assert register(Fresh) is Fresh and registry.get("zz_test_fresh") is Fresh
    finally:
        POLICIES.discard("zz_test_fresh")


def test_first_step_adds_the_new_sequence_and_its_context():
    import copy

    c = copy.copy(COMPUTE)
    c.step_b = 2e-4  # the H200 profile's fit has no per-sequence term; give it one so it is checked
    v = ClusterView([P], [FAR, NEAR], c)
    v.active[:] = [3, 0]
    v.ctx_total[:] = [6000.0, 0.0]
    v.touch_all()
    got = v.first_step_s(2000)
    assert got[0] == pytest.approx(c.step_a + 4 * c.step_b + (6000 + 2000) * c.step_c)
    assert got[1] == pytest.approx(c.step_a + 1 * c.step_b + 2000 * c.step_c)


# ---- oracle details -------------------------------------------------------------------------------


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


def test_argmin_takes_the_cheapest_live_slot_and_any_live_one_when_none_is_reachable():
    from netkv.scheduler.policies.base import Policy

    pol = Policy({}, seed=0)
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"]])
    v.set_decode_alive(0, False)
    assert all(pol.argmin(np.array([0.0, 2.0, 1.0]), v) == 2 for _ in range(10))
    inf = np.full(3, np.inf)
    assert {pol.argmin(inf, v) for _ in range(40)} == {1, 2}  # unreachable everywhere: any live slot


def test_the_decision_records_its_estimate_for_the_expected_start_and_its_wall_times():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    v = view([FAR])
    s = Scheduler("netkv", {}, 1, v, o, TOPO)
    base = s.decide(req(1024))
    o.commit("far-future", P, FAR, 25e9, 1.0, start=1000.0)  # overlaps nothing near now
    d = s.decide(req(1024))
    assert d.transfer_start == pytest.approx(10.0 + COMPUTE.prefill_s(1024))
    assert d.est_transfer_s == base.est_transfer_s
    assert 0 < d.decision_us < 1e6 and 0 < d.prefill_choice_us < 1e6  # microseconds of wall time


def test_commit_ignores_empty_transfers_and_unusable_estimates():
    snap = Snapshot(10.0, np.zeros(TOPO.n_links), version=1)
    o = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    base = o.cost(P, FAR, 1e9)[0]
    o.commit("empty", P, FAR, 0.0, 1.0)
    assert "empty" not in o.committed
    o.commit("no-estimate", P, FAR, 1e9, math.inf)  # recorded, but with no rate to count
    assert o.committed["no-estimate"].rate == 0.0 and o.cost(P, FAR, 1e9)[0] == base


def test_register_refuses_a_class_without_a_name_attribute():
    from netkv.scheduler.policies.registry import register

    class Bare:
        pass

    with pytest.raises(TypeError, match="Bare has no policy name"):
        register(Bare)


def test_view_arrays_hold_host_indices_even_when_empty():
    v = ClusterView([], [], COMPUTE)
    assert v.decode_hosts.dtype == np.int64 and v.prefill_hosts.dtype == np.int64
    assert v.n_decode == 0 and v.n_prefill == 0


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


def test_unknown_policy_parameters_name_the_known_ones():
    with pytest.raises(ValueError) as e:
        registry.create("netkv", {"bogus": 1})
    assert str(e.value) == "unknown parameter 'bogus' (known: transfer_weight, wait_weight)"
    with pytest.raises(ValueError) as e:
        registry.create("round_robin", {"x": 1})
    assert str(e.value) == "unknown parameter 'x' (known: none)"
    with pytest.raises(ValueError, match=r"^parameter 'wait_weight' must be a number, got True$"):
        registry.create("netkv", {"wait_weight": True})


def test_view_counts_are_integers():
    v = view([FAR, NEAR])
    for name in ("active", "queued", "inbound", "kv_used", "kv_pending", "prefill_queued"):
        assert getattr(v, name).dtype.kind == "i", name
    assert v._kv_free.dtype.kind == "i" and v._batch_full.dtype == bool

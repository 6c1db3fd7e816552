"""Policies choose the obviously right decode instance in constructed cases; the oracles."""

import numpy as np
import pytest

from netkv.scheduler.core import Scheduler
from netkv.scheduler.oracle import CounterOracle, Snapshot, StaticOracle
from netkv.scheduler.policies import Query, registry
from netkv.scheduler.view import ClusterView

from conftest import COMPUTE, FAR, MODEL, NEAR, ROUTING, TOPO, P, congested_snapshot, req, view


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
        oracle = CounterOracle(TOPO, ROUTING, lambda s=snap: s, lambda: 10.0)
        wt, ww = rng.choice([0.5, 1.0, 3.0]), rng.choice([0.25, 1.0, 2.0])
        q = Query(req(8192), 0, v)
        transfer, _ = oracle.cost_row(P, v.decode_hosts, q.missing_bytes)
        cost = wt * transfer + ww * v.est_wait_s(q.req.n_blocks) + v.first_step_s(8192)
        pol = registry.create("netkv", {"transfer_weight": float(wt), "wait_weight": float(ww)})
        assert pol.choose(q, oracle) == int(np.argmin(cost)), trial


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


def test_exact_prefill_ties_are_shared_at_random_not_given_to_the_lowest_slot():
    """Idle prefill instances without a prefix hit tie exactly: each takes a fair share (seeded, so
    a run repeats), only among the tied ones; a unique minimum still wins outright."""
    pre = [P, TOPO.host_index["h0_0_0_1"], TOPO.host_index["h0_0_0_2"], TOPO.host_index["h0_0_0_3"]]

    def picks(seed, backlog):
        v = ClusterView(pre, [FAR], COMPUTE)
        v.prefill_backlog_s[:] = backlog
        s = Scheduler("round_robin", {}, seed, v, StaticOracle(TOPO, ROUTING), TOPO)
        return [s.choose_prefill(req(4096))[0] for _ in range(400)]

    got = picks(1, [0.0, 0.0, 0.0, 0.0])
    counts = [got.count(i) for i in range(4)]
    assert all(70 <= c <= 130 for c in counts), counts  # 100 expected each
    assert picks(1, [0.0] * 4) == got and picks(2, [0.0] * 4) != got
    assert set(picks(1, [0.1, 0.0, 0.1, 0.0])) == {1, 3}  # only the tied minimum shares
    assert set(picks(1, [0.1, 0.2, 0.0, 0.3])) == {2}


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


# ---- oracle details -------------------------------------------------------------------------------


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


def test_register_refuses_a_class_without_a_name_attribute():
    from netkv.scheduler.policies.registry import register

    class Bare:
        pass

    with pytest.raises(TypeError, match="Bare has no policy name"):
        register(Bare)


def test_unknown_policy_parameters_name_the_known_ones():
    with pytest.raises(ValueError) as e:
        registry.create("netkv", {"bogus": 1})
    assert str(e.value) == "unknown parameter 'bogus' (known: transfer_weight, wait_weight)"
    with pytest.raises(ValueError) as e:
        registry.create("round_robin", {"x": 1})
    assert str(e.value) == "unknown parameter 'x' (known: none)"
    with pytest.raises(ValueError, match=r"^parameter 'wait_weight' must be a number, got True$"):
        registry.create("netkv", {"wait_weight": True})


def test_netkv_checks_room_for_the_input_and_the_output_blocks():
    """The instance reserves input + output blocks: a candidate whose free KV holds the input but not
    the output makes the newcomer wait, so netkv takes the identical candidate with room."""
    a, b = TOPO.host_index["h0_0_0_2"], TOPO.host_index["h0_0_0_3"]  # same server as P: equal transfers
    r = req(16384)  # 32 input blocks; + 100 output tokens = 33 blocks reserved
    need = COMPUTE.blocks_for(r.input_tokens + r.output_tokens)
    assert need == r.n_blocks + 1
    for seed in range(20):
        v = view([a, b])
        v.active[:] = 4
        v.ctx_total[:] = 4000
        v.remaining[:] = 400
        v.kv_used[:] = [COMPUTE.kv_blocks - r.n_blocks, 0]  # slot 0: room for the input only
        v.touch_all()
        pol = registry.create("netkv", {}, seed=seed)
        assert pol.choose(Query(r, 0, v), StaticOracle(TOPO, ROUTING)) == 1, seed


def test_a_candidate_whose_cost_is_nan_is_never_chosen():
    """0 x inf (a zero weight on an unreachable candidate's transfer) gives NaN: unpriceable, skipped."""
    from netkv.scheduler.policies.base import Policy

    class _View:
        all_alive = True
        decode_alive = np.ones(4, dtype=bool)

    p = Policy({}, seed=0)
    for nan_at in range(3):
        cost = np.array([3.0, 2.0, 1.0, 5.0])
        cost[nan_at] = np.nan
        assert p.argmin(cost, _View()) == (2 if nan_at != 2 else 1)

"""The NetKV variants: netkv_tbt prices the decode slowdown it causes (and sees sequences on their
way), netkv_joint picks the prefill and the decode together."""

import numpy as np
import pytest

from netkv.scheduler.core import Scheduler
from netkv.scheduler.oracle import CounterOracle, Snapshot, StaticOracle
from netkv.scheduler.policies import Query, registry

from conftest import COMPUTE, FAR, NEAR, ROUTING, TOPO, P, congested_snapshot, req, view

IDLE = CounterOracle(TOPO, ROUTING, lambda: Snapshot(10.0, np.zeros(TOPO.n_links)), lambda: 10.5)


def test_netkv_tbt_sees_the_long_contexts_already_heading_to_an_instance():
    """Two idle instances; NEAR has four long sequences inbound (chosen, KV on its way). netkv sees
    two empty batches and takes the cheaper transfer, NEAR; netkv_tbt sees the batch NEAR will run
    and goes to FAR, whose transfer costs a few ms more."""
    v = view([FAR, NEAR])
    v.inbound[1], v.ctx_pending[1], v.kv_pending[1] = 4, 4 * 60_000, 4 * 120
    v.touch_all()
    q = lambda: Query(req(8192), 0, v)  # noqa: E731
    assert registry.create("netkv").choose(q(), IDLE) == 1
    assert registry.create("netkv_tbt").choose(q(), IDLE) == 0
    assert registry.create("netkv_tbt", {"batch_weight": 0}).choose(q(), IDLE) == 0  # the own term alone
    # without its slowdown terms it is netkv
    off = registry.create("netkv_tbt", {"own_weight": 0, "batch_weight": 0})
    assert off.choose(q(), IDLE) == 1


def test_netkv_tbt_prices_the_delay_a_long_batch_absorbs():
    """Same running context on both; NEAR runs 100 sequences with long outputs left, FAR runs 1:
    the new sequence slows 100 others on NEAR. Only the batch term tells them apart."""
    v = view([FAR, NEAR])
    for s, n in ((0, 1), (1, 100)):
        v.active[s], v.ctx_total[s], v.remaining[s] = n, 200_000, 500 * n
    v.touch_all()
    q = lambda: Query(req(1024), 0, v)  # noqa: E731
    static = StaticOracle(TOPO, ROUTING)
    batch_only = registry.create("netkv_tbt", {"own_weight": 0, "batch_weight": 1})
    assert batch_only.choose(q(), static) == 0
    # priced at zero, the cheaper transfer and first step decide
    assert registry.create("netkv_tbt", {"own_weight": 0, "batch_weight": 0}).choose(q(), static) == 1


def test_the_view_tracks_pending_context_through_the_runtime_verbs():
    v = view([FAR, NEAR])
    v.ctx_pending[1] = 5000
    v.touch_all()
    base = COMPUTE.step_a + COMPUTE.step_b * 1 + COMPUTE.step_c * 100
    assert v.step_after_joins_s(100)[0] == pytest.approx(base)
    v.inbound[1] = 1
    assert v.step_after_joins_s(100)[1] == pytest.approx(base + COMPUTE.step_b + COMPUTE.step_c * 5000)


def _sched(policy, prefill_hosts, decode_hosts, snap):
    v = view(decode_hosts, prefill=prefill_hosts)
    oracle = CounterOracle(TOPO, ROUTING, lambda: snap, lambda: 10.0)
    return Scheduler(policy, {}, 1, v, oracle, TOPO), v


def test_netkv_joint_takes_a_later_prefill_next_to_an_uncongested_path():
    """Prefill A = P finishes first but every byte from it crosses a saturated uplink; prefill B,
    next to the decode instance, finishes 20 ms later. netkv fixes A; netkv_joint picks (B, d)."""
    B = TOPO.host_index["h2_1_1_0"]  # same server as FAR
    snap = congested_snapshot(P, FAR)
    for name, want in (("netkv", P), ("netkv_joint", B)):
        s, v = _sched(name, [P, B], [FAR], snap)
        # B is busy for 20 ms: the common rule prefers A
        d = _decide_with_backlog(s, v, [0.0, 0.02])
        assert int(v.prefill_hosts[d.prefill_slot]) == want, name
        assert d.decode_host == FAR


def _decide_with_backlog(s, v, backlog):
    v.prefill_backlog_s[:] = backlog
    return s.decide(req(32768))


def test_netkv_joint_agrees_with_the_common_rule_when_the_network_is_idle():
    B = NEAR
    s, v = _sched("netkv_joint", [P, B], [FAR, TOPO.host_index["h0_0_0_1"]], Snapshot(10.0, np.zeros(TOPO.n_links)))
    d = _decide_with_backlog(s, v, [0.0, 0.05])
    assert int(v.prefill_hosts[d.prefill_slot]) == P and d.decode_host == TOPO.host_index["h0_0_0_1"]


def test_prefill_candidates_are_the_earliest_with_ties_in_random_order():
    s, _ = _sched("netkv_joint", [P, NEAR, FAR], [FAR], Snapshot(10.0, np.zeros(TOPO.n_links)))
    finish = np.array([0.3, 0.1, np.inf])
    assert s.prefill_candidates(finish, 4).tolist() == [1, 0]  # a dead one (inf) is never a candidate
    firsts = {int(s.prefill_candidates(np.array([0.1, 0.1, 0.2]), 1)[0]) for _ in range(50)}
    assert firsts == {0, 1}


def test_netkv_joint_refuses_a_fractional_candidate_count():
    with pytest.raises(ValueError, match="candidates"):
        registry.create("netkv_joint", {"candidates": 1.5})

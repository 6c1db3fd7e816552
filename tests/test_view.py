"""The cluster view: wait and first-step estimates, lazy refresh equal to a full one, integer counts."""

import copy

import numpy as np
import pytest

from netkv.scheduler.view import ClusterView

from conftest import COMPUTE, FAR, NEAR, TOPO, P, view


def test_est_wait_is_half_a_step_with_room_and_littles_law_without():
    v = view([FAR, NEAR, TOPO.host_index["h1_0_0_2"], TOPO.host_index["h2_0_0_0"]])
    v.active[:] = [0, 4, COMPUTE.max_batch, COMPUTE.max_batch - 3]
    v.ctx_total[:] = [0, 4000, 128000, 4000]
    v.remaining[:] = [0, 400, 12800, 400]
    v.queued[3] = 2  # with one inbound, they take the last 3 batch slots at slot 3: no room left
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
    a3 = COMPUTE.max_batch - 3
    assert wait[3] == pytest.approx(4 * (400 / a3) * step[3] / a3)
    # no KV room for the newcomer: the same Little's-law wait at slot 1; blocks promised to queued
    # and inbound sequences (kv_pending) are not free either
    v.kv_used[1] = c.kv_blocks - 5
    v.touch(1)
    assert v.est_wait_s(10)[1] == pytest.approx(1 * (400 / 4) * step[1] / 4)
    assert v.est_wait_s(5)[1] == pytest.approx(step[1] / 2)
    v.kv_used[1], v.kv_pending[1] = c.kv_blocks - 20, 15
    v.touch(1)
    assert v.est_wait_s(6)[1] == pytest.approx(1 * (400 / 4) * step[1] / 4)
    assert v.est_wait_s(5)[1] == pytest.approx(step[1] / 2)
    v.kv_used[1], v.kv_pending[1] = 0, 0
    # a sequence queued only until the next iteration boundary does not make the batch full
    v.queued[1] = 1
    v.touch(1)
    assert v.est_wait_s(10)[1] == pytest.approx(step[1] / 2)
    v.queued[1] = 0
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


def test_first_step_adds_the_new_sequence_and_its_context():

    c = copy.copy(COMPUTE)
    c.step_b = 2e-4  # the H200 profile's fit has no per-sequence term; give it one so it is checked
    v = ClusterView([P], [FAR, NEAR], c)
    v.active[:] = [3, 0]
    v.ctx_total[:] = [6000.0, 0.0]
    v.touch_all()
    got = v.first_step_s(2000)
    assert got[0] == pytest.approx(c.step_a + 4 * c.step_b + (6000 + 2000) * c.step_c)
    assert got[1] == pytest.approx(c.step_a + 1 * c.step_b + 2000 * c.step_c)


def test_view_arrays_hold_host_indices_even_when_empty():
    v = ClusterView([], [], COMPUTE)
    assert v.decode_hosts.dtype == np.int64 and v.prefill_hosts.dtype == np.int64
    assert v.n_decode == 0 and v.n_prefill == 0


def test_view_counts_are_integers():
    v = view([FAR, NEAR])
    for name in ("active", "queued", "inbound", "kv_used", "kv_pending", "prefill_queued"):
        assert getattr(v, name).dtype.kind == "i", name
    assert v._kv_free.dtype.kind == "i" and v._batch_full.dtype == bool

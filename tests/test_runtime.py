"""The runtime both drivers share, and the emulated scheduler service driving it from agent messages."""

import asyncio
import math
import time

import numpy as np
import pytest

from netkv.agents.protocol import block_sizes
from netkv.results import RunDir
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import Snapshot
from netkv.scheduler.runtime import Runtime, Tracked
from netkv.scheduler.service import SchedulerService
from netkv.simulator.engine import Simulation
from netkv.trace import BLOCK_TOKENS, window_from_config

from conftest import FakeWriter, make_exp


def _runtime(policy="netkv", **overrides):
    cluster = Cluster.build(make_exp(**overrides))
    snap = Snapshot(0.0, np.zeros(cluster.topo.n_links), version=1)
    rt = Runtime(cluster, policy, lambda: 0.0, lambda: snap)
    return cluster, rt, window_from_config(cluster.exp)


def test_a_request_walks_through_the_verbs_and_leaves_nothing_behind():
    cluster, rt, reqs = _runtime()
    v, t = rt.view, Tracked(reqs[0], "netkv")
    r = t.req
    d = rt.decide(t, 0.0)
    ps, ds = d.prefill_slot, d.decode_slot
    assert t.dec is d and t.rec.prefill == cluster.topo.hosts[d.prefill_host].name
    assert t.need == math.ceil((r.input_tokens + r.output_tokens) / BLOCK_TOKENS)
    assert (v.inbound[ds], v.kv_pending[ds], v.prefill_queued[ps]) == (1, t.need, 1)
    assert v.ctx_pending[ds] == r.input_tokens
    assert t.est_prefill == cluster.compute.prefill_s(r.input_tokens) and rt.queued_est[ps] == t.est_prefill
    assert d.bytes_to_send > 0 and list(rt.oracle.committed) == [r.id]

    dur = rt.prefill_started(t, ps, 0, 1.0)
    assert dur == cluster.compute.prefill_s(r.input_tokens) and rt.busy_until[ps] == 1.0 + dur
    assert (v.prefill_queued[ps], rt.queued_est[ps], t.rec.t_prefill_start) == (0, 0.0, 1.0)
    rt.prefill_ended(t, ps, 1.0 + dur)
    assert rt.busy_until[ps] == 1.0 + dur and rt.prefill_caches[ps].match(r.hash_ids) == len(r.hash_ids)
    rt.transfer_started(t, 2.0)
    assert rt.oracle.committed[r.id].started_at == 2.0
    rt.kv_arrived(t, ds, 3.0)
    assert v.inbound[ds] == 0 and rt.oracle.committed == {} and t.rec.t_transfer_end == 3.0
    assert rt.decode_caches[ds].match(r.hash_ids) == len(r.hash_ids)
    rt.admitted(t, ds, 3.5)
    assert v.kv_pending[ds] == 0 and v.ctx_pending[ds] == 0 and t.rec.t_admit == 3.5


def test_the_next_decision_sees_the_backlog_the_first_left():
    cluster, rt, reqs = _runtime(
        placement={"layout": "explicit", "prefill": ["h0_0_0_0"], "decode": ["h0_0_0_1", "h1_0_0_1"]}
    )
    a, b = Tracked(reqs[0], "netkv"), Tracked(reqs[1], "netkv")
    rt.decide(a, 0.0)
    rt.prefill_started(a, 0, 0, 0.0)
    now = rt.busy_until[0] / 2
    rt.decide(b, now)
    # the running prefill has busy_until - now left; b's own estimate is queued behind it
    assert rt.view.prefill_backlog_s[0] == pytest.approx(rt.busy_until[0] - now) and now > 0
    assert rt.queued_est[0] == b.est_prefill > 0


def test_a_lost_transfer_and_a_failure_release_what_the_decision_took():
    _cluster, rt, reqs = _runtime()
    t = Tracked(reqs[0], "netkv")
    d = rt.decide(t, 0.0)
    rt.kv_lost(t, d.decode_slot)
    assert rt.view.inbound[d.decode_slot] == 0 and rt.view.kv_pending[d.decode_slot] == 0
    assert rt.view.ctx_pending[d.decode_slot] == 0
    assert rt.oracle.committed == {}
    rt.failed(t, "KV incomplete")
    assert (t.rec.status, t.rec.fail_reason) == ("failed", "KV incomplete")


def test_decode_state_from_an_agent_sets_the_view_and_the_cache_capacity():
    cluster, rt, _ = _runtime()
    rt.decode_state(1, active=3, queued=2, kv_used=100, ctx_total=9000.0, remaining=300.0)
    v = rt.view
    assert (v.active[1], v.queued[1], v.kv_used[1], v.ctx_total[1], v.remaining[1]) == (3, 2, 100, 9000.0, 300.0)
    assert rt.decode_caches[1].capacity == cluster.compute.kv_blocks - 100
    assert v.step_s()[1] == pytest.approx(cluster.compute.step_s(3, 9000.0))


@pytest.mark.parametrize("oracle,polls", [("counters", True), ("static", False)])
def test_the_oracle_says_whether_the_simulator_polls_telemetry(oracle, polls):
    sim = Simulation(make_exp(telemetry={"oracle": oracle, "poll_interval_s": 0.1}), "netkv")
    recs = sim.run()
    assert sim.oracle.uses_telemetry is polls
    assert (sim._snap is not None) is polls
    assert {r.oracle for r in recs} == {oracle}
    ages = [r.telemetry_age_s for r in recs]
    if polls:  # from t = 0 on there is a sample: the controller polled the idle fabric before the trace
        assert all(a is not None and 0 <= a <= 0.1 for a in ages) and any(ages)
    else:
        assert ages == [None] * len(ages)


# ---- the emulated scheduler service, without sockets ----------------------------------------------


def _service(tmp_path, requests=3, **overrides):
    cluster = Cluster.build(make_exp(trace={"requests": requests, "rate_multiplier": 4.0}, **overrides))
    svc = SchedulerService(
        cluster, "netkv", RunDir(tmp_path), tmp_path, "http://127.0.0.1:9/netkv", log=lambda *a: None
    )
    svc.writers = {h: FakeWriter() for h in svc.host_slot}
    svc.t0 = time.time()
    svc.snap = Snapshot(0.0, np.zeros(cluster.topo.n_links), version=1)
    return svc


def test_the_service_dispatches_and_follows_a_request_to_completion(tmp_path):
    svc = _service(tmp_path)
    lv = svc.live[0]
    asyncio.run(svc.dispatch(lv))
    r, d, D = lv.req, lv.dec, svc.D
    dh, ph = lv.rec.decode, lv.rec.prefill
    (expect,) = svc.writers[dh].sent
    (prefill,) = svc.writers[ph].sent
    sizes = block_sizes(
        min(d.decode_hit_blocks * BLOCK_TOKENS, r.input_tokens),
        r.input_tokens,
        svc.compute.model.kv_bytes_per_token,
        svc.exp.emulation.byte_scale,
    )
    assert expect == {
        "op": "expect",
        "id": r.id,
        "input": r.input_tokens,
        "output": r.output_tokens,
        "need": lv.need,
        "hash_ids": list(r.hash_ids),
        "bytes": sum(sizes),
        "blocks": len(sizes),
    }
    assert prefill["op"] == "prefill" and prefill["decode_ip"] == svc.topo.host(dh).ip
    assert lv.rec.oracle == "counters" and svc.fallback_decisions == 0
    ps, ds = d.prefill_slot, d.decode_slot
    w = lambda t: svc.t0 + t * D  # noqa: E731  (real-cluster seconds -> the agents' wall clock)
    svc.on_event(ph, {"ev": "prefill_start", "id": r.id, "t": w(0.1), "hits": 0})
    assert svc.view.prefill_queued[ps] == 0 and svc.rt.busy_until[ps] == pytest.approx(0.1 + lv.est_prefill)
    svc.on_event(ph, {"ev": "prefill_end", "id": r.id, "t": w(0.3)})
    svc.on_event(ph, {"ev": "xfer_start", "id": r.id, "t": w(0.3)})
    assert svc.oracle.committed[r.id].started_at == pytest.approx(0.3)
    svc.on_event(dh, {"ev": "kv_arrived", "id": r.id, "ok": True, "bytes": sum(sizes), "t": w(0.4)})
    assert svc.view.inbound[ds] == 0 and svc.oracle.committed == {}
    svc.on_event(dh, {"ev": "admitted", "id": r.id, "t": w(0.45)})
    assert svc.view.kv_pending[ds] == 0
    svc.on_event(dh, {"ev": "done", "id": r.id, "tokens": [w(0.5), w(0.55), w(0.6)]})
    rec = lv.rec
    assert rec.status == "completed" and svc.finished == 1 and lv.done
    assert (rec.t_prefill_start, rec.t_prefill_end, rec.t_transfer_end, rec.t_admit) == pytest.approx(
        (0.1, 0.3, 0.4, 0.45)
    )
    assert rec.t_first_token == pytest.approx(0.5) and rec.gaps == pytest.approx([0.05, 0.05])
    assert svc.kv_received[dh] == svc.kv_expected[dh] == sum(sizes)


def test_the_service_fails_a_broken_transfer_and_a_dead_agent_s_requests(tmp_path):
    svc = _service(tmp_path, requests=3)
    for lv in svc.live:
        asyncio.run(svc.dispatch(lv))
    a = svc.live[0]
    ds = a.dec.decode_slot
    pending = int(svc.view.kv_pending[ds])
    svc.on_event(a.rec.decode, {"ev": "kv_arrived", "id": a.req.id, "ok": False, "reason": "short read"})
    assert (a.rec.status, a.rec.fail_reason) == ("failed", f"KV incomplete at {a.rec.decode}: short read")
    assert svc.view.kv_pending[ds] == pending - a.need and a.req.id not in svc.oracle.committed
    b = svc.live[1]
    svc.agent_died(b.rec.decode)
    role, slot = svc.host_slot[b.rec.decode]
    assert role == "decode" and not svc.view.decode_alive[slot]
    assert b.rec.status == "failed" and b.rec.fail_reason == f"decode agent {b.rec.decode} died"
    s = svc.write(partial=False)
    assert s["requests"] == 3 and s["completed"] == 0 and s["failed"] == 3  # the third never finished
    assert s["emulation"]["dead_agents"] == {b.rec.decode: f"decode agent {b.rec.decode} died"}


def test_without_telemetry_the_service_decides_with_the_static_fallback_and_says_so(tmp_path):
    svc = _service(tmp_path, requests=2)
    svc.snap = None
    asyncio.run(svc.dispatch(svc.live[0]))
    assert svc.live[0].rec.oracle == "static-fallback" and svc.fallback_decisions == 1
    assert svc.live[0].rec.telemetry_age_s is None


def test_the_service_fails_a_request_too_large_for_any_decode_instance_without_dispatching_it(tmp_path):
    svc = _service(tmp_path, requests=1, compute={"decode_kv_blocks": 1})
    lv = svc.live[0]
    asyncio.run(svc.dispatch(lv))
    assert lv.rec.status == "failed" and lv.rec.fail_reason.startswith("needs ") and lv.dec is None
    assert all(w.sent == [] for w in svc.writers.values()) and svc.finished == 1

"""The scheduler service's journal: a killed service, restarted, rebuilds the same state from it, asks
the agents for the events it missed, and sends again only what never reached an agent."""

import asyncio
import json
import time

import numpy as np
import pytest

from netkv.agents.protocol import read_msg, send_msg
from netkv.results import RunDir
from netkv.scheduler import journal as jr
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import Snapshot
from netkv.scheduler.service import SchedulerService, resumed_file

from conftest import FakeWriter, make_exp


def _svc(tmp_path, resume=False, requests=4):
    cluster = Cluster.build(make_exp(trace={"requests": requests, "rate_multiplier": 4.0}))
    svc = SchedulerService(
        cluster, "netkv", RunDir(tmp_path), tmp_path, "http://127.0.0.1:9/netkv", log=lambda *a: None, resume=resume
    )
    return svc


class _Agents:
    """Numbers each agent's events as the agents do."""

    def __init__(self, svc):
        self.svc, self.n = svc, {}

    def ev(self, host, ev, **kw):
        self.n[host] = self.n.get(host, 0) + 1
        self.svc.receive(host, {"ev": ev, "host": host, "seq": self.n[host], **kw})


def _first_service(tmp_path):
    """A service that dispatched four requests and heard part of their lives, then was killed."""
    a = _svc(tmp_path)
    a.writers = {h: FakeWriter() for h in a.host_slot}
    a.t0 = time.time()
    a.journal.write({"k": "start", "t0": a.t0})
    a.snap = Snapshot(0.0, np.zeros(a.topo.n_links), version=1)
    for lv in a.live:
        asyncio.run(a.dispatch(lv))
    w = lambda t: a.t0 + t * a.D  # noqa: E731
    ag = _Agents(a)
    r0, r1, r2 = a.live[0], a.live[1], a.live[2]
    for ev, t in (("prefill_start", 0.1), ("prefill_end", 0.2), ("xfer_start", 0.2)):
        ag.ev(r0.rec.prefill, ev, id=0, t=w(t), hits=0)
    ag.ev(r0.rec.decode, "kv_arrived", id=0, t=w(0.3), ok=True, bytes=r0.emu_bytes)
    ag.ev(r0.rec.decode, "admitted", id=0, t=w(0.31))
    ag.ev(r0.rec.decode, "state", active=1, queued=0, kv_used=r0.need, ctx_total=5.0, remaining=3.0)
    ag.ev(r0.rec.decode, "done", id=0, tokens=[w(0.4), w(0.45)])
    ag.ev(r1.rec.prefill, "prefill_start", id=1, t=w(0.5), hits=0)
    ag.ev(r2.rec.prefill, "xfer_failed", id=2, t=w(0.6), reason="reset by peer")
    return a, ag


def _state(s):
    v = s.view
    return {
        "rows": [lv.rec.to_row() for lv in s.live],
        "view": [
            x.tolist() for x in (v.prefill_queued, v.inbound, v.kv_pending, v.kv_used, s.rt.busy_until, s.rt.queued_est)
        ],
        "committed": sorted(s.oracle.committed),
        "finished": s.finished,
        "seq": s.seq,
        "emu": [(lv.emu_bytes, lv.emu_blocks, lv.send_from) for lv in s.live],
    }


def test_a_resumed_service_rebuilds_the_killed_one_s_state_from_its_journal(tmp_path):
    a, _ = _first_service(tmp_path)
    before = _state(a)
    assert before["finished"] == 2 and a.live[0].rec.status == "completed" and a.live[2].rec.status == "failed"
    # killed: nothing written but the journal; a second service replays it
    b = _svc(tmp_path, resume=True)
    b.replay_journal(jr.read(b.journal.path))
    assert _state(b) == before
    # an agent sends again what the journal has (a resume racing its last events): nothing changes
    for r in jr.read(b.journal.path):
        if r["k"] == "ev":
            b.receive(r["h"], r["m"])
    assert _state(b) == before
    assert b.t0 == a.t0 and b.fallback_decisions == a.fallback_decisions == 0
    # the replayed decisions were not chosen again, and the next decision chooses afresh
    assert b.rt.sched.replay == {}


def test_a_torn_last_line_is_dropped_and_a_bad_line_is_named(tmp_path):
    a, _ = _first_service(tmp_path)
    p = a.journal.path
    whole = p.read_text()
    p.write_text(whole + '{"k": "ev", "h": "h0_0_0_0", "m": {"ev": "prefill_en')  # killed mid-write
    assert len(jr.read(p)) == whole.count("\n")
    jr.Journal(p, resume=True).write({"k": "resume", "at": 1.0})  # the torn line is cut, not extended
    assert jr.read(p)[-1] == {"k": "resume", "at": 1.0}
    lines = p.read_text().split("\n")
    lines[3] = "not json"
    p.write_text("\n".join(lines))
    with pytest.raises(jr.JournalError, match=r"journal-netkv\.jsonl:4: not a journal record"):
        jr.read(p)
    with pytest.raises(jr.JournalError, match="no journal to resume from"):
        jr.Journal(tmp_path / "journal-x.jsonl", resume=True)


async def _fake_agent(path, known, got, after):
    """An agent's control socket as a resumed service meets it: hello, then 'resumed' with the ids
    it already has; keeps the ops it receives."""

    async def conn(r, w):
        host = path.stem
        await send_msg(w, {"ev": "hello", "host": host})
        while (m := await read_msg(r)) is not None:
            if m.get("op") == "resume":
                after[host] = m["after"]
                await send_msg(w, {"ev": "resumed", "host": host, "known": known.get(host, [])})
            else:
                got.append((host, m["op"], m["id"]))

    return await asyncio.start_unix_server(conn, path=str(path))


def _resume_among_fake_agents(svc, tmp_path, known, absent=None):
    """Resume `svc` with a fake agent on every socket but `absent`'s; returns the ops the agents got
    and the `after` each was asked for."""
    got, after = [], {}

    async def go():
        hosts = [h for h in svc.host_slot if h != absent]
        servers = [await _fake_agent(tmp_path / f"{h}.sock", known, got, after) for h in hosts]
        try:
            await svc._resume()
            await asyncio.sleep(0.3)  # the agents read what was sent
        finally:
            for s in servers:
                s.close()

    asyncio.run(go())
    return got, after


def test_resuming_sends_again_only_what_never_reached_an_agent(tmp_path):
    a, ag = _first_service(tmp_path)
    r1, r3 = a.live[1], a.live[3]
    # request 1 reached both its agents; request 3's prefill op was lost with the killed service
    known = {r1.rec.decode: [1], r1.rec.prefill: [1]}
    known.setdefault(r3.rec.decode, []).append(3)
    b = _svc(tmp_path, resume=True)
    got, after = _resume_among_fake_agents(b, tmp_path, known)
    assert got == [(r3.rec.prefill, "prefill", 3)]  # not 0 and 2 (ended), not 1 (arrived)
    assert after == {h: ag.n.get(h, 0) for h in b.host_slot}  # each agent: its last journaled event
    assert json.loads(resumed_file(tmp_path, "netkv").read_text())["replayed"] == len(jr.read(b.journal.path)) - 1
    assert b.resumes == 1 and jr.read(b.journal.path)[-1]["resent"] == 1


def test_an_agent_gone_while_the_service_was_down_fails_its_requests_at_resume(tmp_path):
    a, _ = _first_service(tmp_path)
    r1 = a.live[1]
    b = _svc(tmp_path, resume=True)
    gone = r1.rec.prefill
    got, _ = _resume_among_fake_agents(b, tmp_path, {}, absent=gone)
    r1 = b.live[1]
    assert gone in b.dead and r1.rec.status == "failed" and "died" in r1.rec.fail_reason
    assert all(h != gone for h, _, _ in got)


def test_the_wait_for_the_last_requests_is_in_real_cluster_seconds(tmp_path, monkeypatch):
    """emulation.drain_timeout_s counts real-cluster seconds: at time dilation 8 a decode takes 8x
    longer on the wall clock, and so does the wait after the last arrival (a fixed wall-clock wait
    failed the longest decodes of a paper-scale run at dilation 8)."""
    from netkv.scheduler import service as sv

    cluster = Cluster.build(make_exp(trace={"requests": 3}, emulation={"time_dilation": 8.0, "drain_timeout_s": 40.0}))
    svc = SchedulerService(cluster, "netkv", RunDir(tmp_path), tmp_path, "http://127.0.0.1:9/x", log=lambda *a: None)
    waited = []

    async def nothing(*_a, **_k):
        return None

    async def wait_for(aw, timeout):
        aw.close()
        waited.append(timeout)
        raise TimeoutError

    for name in ("connect", "_telemetry", "_progress", "dispatch"):
        monkeypatch.setattr(svc, name, nothing)
    svc._readers = {}  # no agents: nothing to listen to
    monkeypatch.setattr(sv.asyncio, "sleep", nothing)
    monkeypatch.setattr(sv.asyncio, "wait_for", wait_for)
    asyncio.run(svc.run())
    assert waited == [320.0]
    reasons = {lv.rec.fail_reason for lv in svc.live}
    assert reasons == {
        "timeout: not finished 40 s after the last arrival (320 s wall at time dilation 8; emulation.drain_timeout_s)"
    }

"""Scheduler service of the emulated testbed: replays the trace against live agents and the REST oracle.

python -m netkv.scheduler.service --experiment RUN/experiment.json --policy P --run-dir DIR --sock-dir DIR --rest URL

The experiment is the validated JSON the orchestrator wrote (`netkv.config.to_dict`), so the service
sees exactly the sections (and the request window) of the run. The bookkeeping is the shared
`Runtime`'s (netkv.scheduler.runtime), as in the simulator; this module only drives it in real time.

Replays the trace window in dilated real time (arrival x time_dilation wall seconds); picks prefill
and decode with the same Scheduler and policy code as the simulator; the counter oracle reads the
controller's /links (polled in the background, so a decision sees telemetry aged by the poll
interval, the publish delay and the fetch). While the REST API does not answer, decisions fall back
to the static oracle and say so (`oracle` = "static-fallback"). It dispatches over the agents' Unix
sockets, collects their events and writes the same per-request JSONL and summary as the simulator,
in real-cluster units. Every request ends completed or failed with a reason; an agent whose socket
closes is marked dead, its requests fail and it is no longer chosen. SIGINT/SIGTERM write what is
known, mark the rest failed ("interrupted") and flag the results partial.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np

from netkv.agents.protocol import block_sizes, read_msg, send_msg
from netkv.config import ConfigError, load_json
from netkv.controller.client import ControllerClient
from netkv.results import RunDir, atomic_write, summarize_exp
from netkv.scheduler import journal as jr
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import Snapshot
from netkv.scheduler.runtime import Runtime, Tracked
from netkv.trace import BLOCK_TOKENS, TraceError, window_from_config


def clock_file(sock_dir: Path, policy: str) -> Path:
    """Where a policy's replay records the wall-clock instant of its trace time 0 ({"t0": seconds})."""
    return Path(sock_dir) / f"clock-{policy}.json"


def reset_timeout_s(pairs: int) -> float:
    """How long the agents get to reset: 30 s, plus 5 ms per prefill-decode KV connection to open."""
    return 30.0 + 0.005 * pairs


def probes_file(run_root: Path, policy: str) -> Path:
    """Where the prober writes a policy's packet trains (one JSON line each; netkv.agents.prober)."""
    return Path(run_root) / policy / "probes.jsonl"


class ProbeFeed:
    """Feeds the probe oracle the trains the prober has written since the last look."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None
        self._part = ""
        self.trains = self.empty = 0

    def poll(self, oracle, topo, to_trace) -> None:
        """Read the new complete lines; `to_trace(wall)`: a wall time on the trace clock."""
        if self._fh is None:
            try:
                self._fh = open(self.path)
            except FileNotFoundError:
                return  # the prober has not written yet
        data = self._part + self._fh.read()
        lines = data.split("\n")
        self._part = lines.pop()  # an incomplete last line waits for the rest
        for line in lines:
            if not line.strip():
                continue
            x = json.loads(line)
            if "totals" in x:
                continue
            self.trains += 1
            if x["rate_Bps"] is None:  # fewer than two packets of the train arrived
                self.empty += 1
                continue
            oracle.record(topo.host_index[x["src"]], topo.host_index[x["dst"]], x["rate_Bps"], to_trace(x["t"]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def resumed_file(sock_dir: Path, policy: str) -> Path:
    """Where a restarted service says it has resumed ({"at": wall seconds, "replayed": records})."""
    return Path(sock_dir) / f"resumed-{policy}.json"


# what a dispatch record keeps of the request's record (the rest follows from the agents' events)
DECISION_FIELDS = (
    "prefill",
    "decode",
    "tier",
    "decision_us",
    "prefill_choice_us",
    "est_transfer_s",
    "telemetry_age_s",
    "oracle",
    "decode_hit_blocks",
    "blocks_sent",
    "bytes_sent",
)


class _Live(Tracked):
    """A request with what the service adds: its emulated KV size and whether it has ended."""

    __slots__ = ("emu_bytes", "emu_blocks", "send_from", "done")

    def __init__(self, req, policy):
        super().__init__(req, policy)
        self.emu_bytes = 0
        self.emu_blocks = 0
        self.send_from = 0
        self.done = False


class SchedulerService:
    def __init__(
        self, cluster: Cluster, policy: str, run: RunDir, sock_dir: Path, rest: str, log=print, resume: bool = False
    ):
        """`resume`: a restarted service; it rebuilds its state from the policy's journal and picks the
        agents' events up where the journal ends."""
        exp = self.exp = cluster.exp
        self.policy, self.rundir, self.sock_dir, self.log = policy, run, Path(sock_dir), log
        self.rest = ControllerClient(rest)
        self.D = exp.emulation.time_dilation
        self.B = exp.emulation.bandwidth_scale
        self.requests = window_from_config(exp)
        self.t0 = None
        self.snap: Snapshot | None = None
        self._snap_version = 0
        self.rest_failures = 0
        self.rt = rt = Runtime(cluster, policy, self.now, lambda: self.snap)
        self.topo, self.compute, self.view, self.oracle = rt.topo, rt.compute, rt.view, rt.oracle
        self.live = [_Live(r, policy) for r in self.requests]
        self.host_slot = {}
        for i, h in enumerate(cluster.prefill_hosts):
            self.host_slot[self.topo.hosts[h].name] = ("prefill", i)
        for i, h in enumerate(cluster.decode_hosts):
            self.host_slot[self.topo.hosts[h].name] = ("decode", i)
        self.writers: dict[str, asyncio.StreamWriter] = {}
        self.finished = 0
        self.fallback_decisions = 0
        self.kv_received: dict[str, int] = {}
        self.kv_expected: dict[str, int] = {}
        self.dead: dict[str, str] = {}
        self.interrupted = False
        self._all_done = asyncio.Event()
        self.resume = resume
        self.resumes = 0  # times this policy's replay was resumed from its journal
        self.seq: dict[str, int] = {}  # per agent: the last event journaled
        self._replaying = False
        self.journal = jr.Journal(jr.journal_path(run.root, policy), resume=resume)
        self.probes = ProbeFeed(probes_file(run.root, policy)) if getattr(self.oracle, "probes", False) else None

    # ---- clocks ------------------------------------------------------------------------------
    def now(self) -> float:
        """Real-cluster seconds since the replay started."""
        return (time.time() - self.t0) / self.D if self.t0 is not None else 0.0

    def real(self, t_wall: float) -> float:
        return (t_wall - self.t0) / self.D

    # ---- agents ------------------------------------------------------------------------------
    async def connect(self) -> None:
        hosts = list(self.host_slot)
        readers = {}
        for h in hosts:
            r, w = await self._open_agent(h)
            self.writers[h] = w
            readers[h] = r
        # prefill agents keep long-lived KV connections to every decode agent (opened at reset)
        peers = [self.topo.host(h).ip for h, (role, _) in self.host_slot.items() if role == "decode"]
        n_prefill = sum(role == "prefill" for role, _ in self.host_slot.values())
        for h, w in self.writers.items():
            await send_msg(w, {"op": "reset", "peers": peers if self.host_slot[h][0] == "prefill" else []})
        await self._await_resets(readers, reset_timeout_s(n_prefill * len(peers)))
        self._readers = readers

    async def _await_resets(self, readers: dict, timeout: float, progress_s: float = 15.0) -> None:
        """Wait for every agent's reset_done (prefill agents first connect to every decode agent)."""

        async def one(h: str, r) -> None:
            while (msg := await read_msg(r)) and msg.get("ev") == "peer_unreachable":
                # no idle connection to that peer: the first transfer to it opens one (and fails if it must)
                self.log(f"[netkv] {h}: KV peer {msg.get('ip')} not reached at reset: {msg.get('reason')}")
            if not msg or msg.get("ev") != "reset_done":
                raise RuntimeError(f"agent {h} did not reset: {msg}")

        tasks = {asyncio.ensure_future(one(h, r)): h for h, r in readers.items()}
        deadline = time.monotonic() + timeout
        pending = set(tasks)
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(
                        f"{len(pending)} of {len(tasks)} agents did not reset within {timeout:.0f} s "
                        f"(first: {sorted(tasks[t] for t in pending)[0]}); their logs are in the run's agents/ folder"
                    )
                done, pending = await asyncio.wait(pending, timeout=min(progress_s, left))
                for t in done:
                    t.result()  # an agent that answered something else
                if pending and len(tasks) > 1:
                    self.log(f"[netkv] agents reset: {len(tasks) - len(pending)}/{len(tasks)}")
        finally:
            for t in pending:
                t.cancel()

    async def _open_agent(self, h: str, tries: int = 300):
        """Connect to agent h's control socket (retrying every 0.1 s) and read its hello."""
        path = self.sock_dir / f"{h}.sock"
        for _ in range(tries):
            try:
                r, w = await asyncio.open_unix_connection(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"agent {h} does not answer on {path}")
        hello = await read_msg(r)
        if not hello or hello.get("host") != h:
            raise RuntimeError(f"agent socket {path} answered {hello}")
        return r, w

    async def _listen(self, host: str, reader) -> None:
        try:
            while True:
                msg = await read_msg(reader)
                if msg is None:
                    break
                self.receive(host, msg)
        except (ConnectionError, json.JSONDecodeError, asyncio.IncompleteReadError) as e:
            self.log(f"agent {host}: {e}")
        if not self.interrupted:
            self.agent_died(host)

    def receive(self, host: str, msg: dict) -> None:
        """An agent's event off its socket: acted on and journaled, once (a resumed agent may send
        again what the journal already has)."""
        seq = msg.get("seq")
        if seq is not None:
            if seq <= self.seq.get(host, 0):
                return
            self.seq[host] = seq
        self.on_event(host, msg)
        self.journal.write({"k": "ev", "h": host, "m": msg})

    def agent_died(self, host: str) -> None:
        if host in self.dead:
            return
        role, slot = self.host_slot[host]
        self.dead[host] = f"{role} agent {host} died"
        if not self._replaying:
            self.journal.write({"k": "dead", "h": host})
            self.log(f"[netkv] {self.dead[host]}; its requests fail and it is no longer chosen")
        if role == "prefill":
            self.view.prefill_alive[slot] = False
        else:
            self.view.set_decode_alive(slot, False)
        for lv in self.live:
            if lv.done or lv.dec is None:
                continue
            rec = lv.rec
            if role == "decode" and lv.dec.decode_slot == slot:
                self.fail(lv, self.dead[host])
            elif role == "prefill" and lv.dec.prefill_slot == slot and rec.t_transfer_end is None:
                self.fail(lv, self.dead[host])

    def fail(self, lv: _Live, reason: str) -> None:
        if lv.done:
            return
        lv.done = True
        self.rt.failed(lv, reason)
        if not self._replaying:
            self.journal.write({"k": "fail", "id": lv.req.id, "reason": reason})
        self._finish_one()

    def _finish_one(self) -> None:
        self.finished += 1
        if self.finished >= len(self.live):
            self._all_done.set()

    # ---- events ------------------------------------------------------------------------------
    def on_event(self, host: str, m: dict) -> None:
        """One message from an agent (see agents/agent.py for what each carries)."""
        ev = m.get("ev")
        role, slot = self.host_slot[host]
        if ev == "state":
            self.rt.decode_state(slot, m["active"], m["queued"], m["kv_used"], m["ctx_total"], m["remaining"])
            return
        rid = m.get("id")
        if rid is None or not 0 <= rid < len(self.live):
            if ev == "kv_arrived" and not m.get("ok"):
                self.log(f"[netkv] {host}: broken KV stream: {m.get('reason')}")
            return
        lv = self.live[rid]
        t = self.real(m["t"]) if "t" in m else None
        if ev == "prefill_start":
            self.rt.prefill_started(lv, slot, m["hits"], t)
        elif ev == "prefill_end":
            self.rt.prefill_ended(lv, slot, t)
        elif ev == "xfer_start":
            self.rt.transfer_started(lv, t)
        elif ev == "xfer_failed":
            self.fail(lv, f"KV transfer failed: {m.get('reason')}")
        elif ev == "kv_arrived":
            self.kv_received[host] = self.kv_received.get(host, 0) + m.get("bytes", 0)
            if m.get("ok"):
                self.rt.kv_arrived(lv, slot, t)
            else:
                self.rt.kv_lost(lv, slot)
                self.fail(lv, f"KV incomplete at {host}: {m.get('reason')}")
        elif ev == "admitted":
            self.rt.admitted(lv, slot, t)
        elif ev == "first_token":
            lv.rec.t_first_token = t
        elif ev == "done":
            self._done(host, lv, m["tokens"])

    def _done(self, host: str, lv: _Live, tokens: list[float]) -> None:
        toks = np.array([self.real(x) for x in tokens])
        rec = lv.rec
        rec.t_first_token = float(toks[0])
        rec.t_done = float(toks[-1])
        rec.gaps = np.diff(toks)
        if not lv.done:
            lv.done = True
            rec.status = "completed"
            self.kv_expected[host] = self.kv_expected.get(host, 0) + lv.emu_bytes
            self._finish_one()

    # ---- telemetry ---------------------------------------------------------------------------
    async def _telemetry(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                rates, times, down = await loop.run_in_executor(None, self.rest.link_rates, self.B)
                if np.isfinite(times).any():
                    self._snap_version += 1
                    at = (times - self.t0) / self.D  # per link, real-cluster seconds
                    self.snap = Snapshot(float(np.nanmin(at)), rates, down, self._snap_version, link_sampled_at=at)
                    self.rt.routing.set_down(down)
                else:  # a (re)started controller has no samples yet: no telemetry to go by
                    self.snap = None
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                self.rest_failures += 1
                self.snap = None
            await asyncio.sleep(interval)

    # ---- replay ------------------------------------------------------------------------------
    async def dispatch(self, lv: _Live) -> None:
        """Decide for one arriving request, journal the decision, send it to its decode and prefill agents."""
        v = self.view
        reason = self.rt.refuse(lv)
        if reason is not None:
            self.fail(lv, reason)
            return
        if not v.prefill_alive.any() or not v.decode_alive.any():
            self.fail(lv, "no live prefill or decode agent")
            return
        fallback = self.oracle.uses_telemetry and self.snap is None
        now = self.now()
        if self.probes is not None and self.t0 is not None:
            t0 = self.t0
            self.probes.poll(self.oracle, self.topo, lambda wall: (wall - t0) / self.D)
        d = self._commit(lv, now, fallback)
        rec = {k: getattr(lv.rec, k) for k in DECISION_FIELDS}
        self.journal.write(
            {
                "k": "dispatch",
                "id": lv.req.id,
                "prefill": d.prefill_host,
                "decode": d.decode_host,
                "now": now,
                "fallback": fallback,
                "rec": rec,
            }
        )
        await self._send(lv)

    def _commit(self, lv: _Live, now: float, fallback: bool, rec: dict | None = None):
        """Commit a decision (the policy's, or the journaled one being replayed) and size its KV."""
        d = self.rt.decide(lv, now, "static-fallback" if fallback else None)
        self.fallback_decisions += fallback
        if rec is not None:  # the record as it was when first decided (estimates, timings)
            for k, x in rec.items():
                setattr(lv.rec, k, x)
        req = lv.req
        lv.send_from = min(lv.rec.decode_hit_blocks * BLOCK_TOKENS, req.input_tokens)
        sizes = block_sizes(
            lv.send_from, req.input_tokens, self.compute.model.kv_bytes_per_token, self.exp.emulation.byte_scale
        )
        lv.emu_bytes, lv.emu_blocks = sum(sizes), len(sizes)
        return d

    async def _send(self, lv: _Live, decode: bool = True, prefill: bool = True) -> None:
        req = lv.req
        dh, ph = lv.rec.decode, lv.rec.prefill
        try:
            if decode:
                await send_msg(
                    self.writers[dh],
                    {
                        "op": "expect",
                        "id": req.id,
                        "input": req.input_tokens,
                        "output": req.output_tokens,
                        "need": lv.need,
                        "hash_ids": list(req.hash_ids),
                        "bytes": lv.emu_bytes,
                        "blocks": lv.emu_blocks,
                    },
                )
            if prefill:
                await send_msg(
                    self.writers[ph],
                    {
                        "op": "prefill",
                        "id": req.id,
                        "hash_ids": list(req.hash_ids),
                        "input": req.input_tokens,
                        "decode_host": dh,
                        "decode_ip": self.topo.host(dh).ip,
                        "send_from_token": lv.send_from,
                    },
                )
        except (ConnectionError, RuntimeError, KeyError) as e:
            self.fail(lv, f"dispatch failed: {e}")

    # ---- resuming ----------------------------------------------------------------------------
    def replay_journal(self, recs: list[dict]) -> None:
        """Rebuild the state of the killed service from its journal records, in the order it acted."""
        self.t0 = recs[0]["t0"]
        self.rt.sched.replay = {r["id"]: (r["prefill"], r["decode"]) for r in recs if r["k"] == "dispatch"}
        self._replaying = True
        try:
            for r in recs[1:]:
                k = r["k"]
                if k == "dispatch":
                    self._commit(self.live[r["id"]], r["now"], r["fallback"], r["rec"])
                elif k == "ev":
                    self.seq[r["h"]] = max(self.seq.get(r["h"], 0), r["m"].get("seq", 0))
                    self.on_event(r["h"], r["m"])
                elif k == "fail":
                    self.fail(self.live[r["id"]], r["reason"])
                elif k == "dead":
                    self.agent_died(r["h"])
                elif k == "resume":
                    self.resumes += 1
        finally:
            self._replaying = False
            self.rt.sched.replay = {}

    async def _resume(self) -> None:
        """A restarted service: the journal replayed, the live agents reconnected (each sends the
        events after the last one journaled), the ops of dispatched requests that never reached
        their agent sent again."""
        recs = jr.read(self.journal.path)
        self.replay_journal(recs)
        known: dict[str, set[int]] = {}
        readers = {}
        for h in self.host_slot:
            if h in self.dead:
                continue
            try:
                r, w = await self._open_agent(h, tries=50)
                await send_msg(w, {"op": "resume", "after": self.seq.get(h, 0)})
                msg = await asyncio.wait_for(read_msg(r), 30)
            except (RuntimeError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                self.agent_died(h)  # it went away while the service was down
                continue
            if not msg or msg.get("ev") != "resumed":
                raise RuntimeError(f"agent {h} did not resume: {msg}")
            known[h] = set(msg.get("known", []))
            self.writers[h], readers[h] = w, r
        self._readers = readers
        resent = 0
        for lv in self.live:
            if lv.done or lv.dec is None:
                continue
            dh, ph = lv.rec.decode, lv.rec.prefill
            to_d, to_p = lv.req.id not in known.get(dh, ()), lv.req.id not in known.get(ph, ())
            if to_d or to_p:
                resent += 1
                await self._send(lv, decode=to_d, prefill=to_p)
        self.resumes += 1
        self.journal.write({"k": "resume", "at": time.time(), "resent": resent})
        atomic_write(resumed_file(self.sock_dir, self.policy), json.dumps({"at": time.time(), "replayed": len(recs)}))
        n_disp = sum(1 for lv in self.live if lv.dec is not None)
        self.log(
            f"[netkv] {self.policy}: resumed from {self.journal.path.name} ({len(recs)} records: "
            f"{n_disp} requests dispatched, {self.finished} ended; {resent} sent again)"
        )

    async def run(self) -> None:
        if self.resume:
            await self._resume()
        else:
            await self.connect()
            self.t0 = time.time() + 0.5
            self.journal.write({"k": "start", "t0": self.t0})
            # trace time 0 on the wall clock, for whatever follows the trace clock (faults)
            atomic_write(clock_file(self.sock_dir, self.policy), json.dumps({"t0": self.t0}))  # whole or absent
        tasks = [asyncio.create_task(self._listen(h, r)) for h, r in self._readers.items()]
        if self.oracle.uses_telemetry:
            poll = self.exp.telemetry.poll_interval_s * self.D
            tasks.append(asyncio.create_task(self._telemetry(max(0.05, poll / 2))))
        tasks.append(asyncio.create_task(self._progress()))
        try:
            for lv in self.live:
                if lv.done or lv.dec is not None:
                    continue  # handled before a resume
                delay = self.t0 + lv.req.arrival_s * self.D - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.dispatch(lv)
            # in real-cluster seconds, like everything the trace sets: a request's decode takes D times
            # longer on the wall clock, and so may the wait for the last ones
            drain = self.exp.emulation.drain_timeout_s
            try:
                await asyncio.wait_for(self._all_done.wait(), drain * self.D)
            except TimeoutError:
                for lv in self.live:
                    self.fail(
                        lv,
                        f"timeout: not finished {drain:g} s after the last arrival "
                        f"({drain * self.D:g} s wall at time dilation {self.D:g}; emulation.drain_timeout_s)",
                    )
        finally:
            for t in tasks:
                t.cancel()

    async def _progress(self) -> None:
        n = len(self.live)
        start = time.time()
        while True:
            await asyncio.sleep(5)
            failed = sum(1 for lv in self.live if lv.rec.status == "failed")
            self.log(
                f"[netkv] {self.policy}: {self.finished}/{n} requests done ({failed} failed), "
                f"{time.time() - start:.0f} s elapsed"
            )

    # ---- results -----------------------------------------------------------------------------
    def write(self, partial: bool) -> dict:
        for lv in self.live:
            if not lv.done:
                self.fail(lv, "interrupted" if self.interrupted else "not finished")
        rows = [lv.rec.to_row() for lv in self.live]
        self.rundir.write_requests(self.policy, rows)
        s = summarize_exp(rows, self.exp.slo)
        s["partial"] = partial
        s["emulation"] = {
            "fallback_decisions": self.fallback_decisions,
            "rest_failures": self.rest_failures,
            "dead_agents": self.dead,
            "kv_bytes_received": self.kv_received,
            "kv_bytes_expected_completed": self.kv_expected,
            "resumes": self.resumes,
            "journal": self.journal.path.name,
        }
        if self.probes is not None:
            s["emulation"]["probe_trains_read"] = self.probes.trains
            s["emulation"]["probe_trains_empty"] = self.probes.empty
        self.rundir.write_policy_summary(self.policy, s)
        return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="NetKV scheduler service (emulated testbed)")
    ap.add_argument("--experiment", required=True, help="the run's experiment.json (netkv.config.to_dict)")
    ap.add_argument("--policy", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--sock-dir", required=True)
    ap.add_argument("--rest", required=True, help="controller REST base URL, e.g. http://127.0.0.1:8080/netkv")
    ap.add_argument("--resume", action="store_true", help="resume the policy's replay from its journal")
    a = ap.parse_args(argv)
    try:
        cluster = Cluster.build(load_json(a.experiment))
        svc = SchedulerService(
            cluster,
            a.policy,
            RunDir(Path(a.run_dir)),
            Path(a.sock_dir),
            a.rest,
            log=lambda *x: print(*x, flush=True),
            resume=a.resume,
        )
    except (ConfigError, TraceError, jr.JournalError) as e:
        print(f"netkv scheduler: error: {e}", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(svc.run())

    def interrupt():
        svc.interrupted = True
        main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        pass
    except (RuntimeError, jr.JournalError) as e:
        print(f"netkv scheduler: error: {e}", file=sys.stderr)
        svc.write(partial=True)
        return 1
    svc.write(partial=svc.interrupted)
    return 130 if svc.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

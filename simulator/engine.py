"""Discrete-event, flow-level simulation of one experiment under one policy.

Same topology, routing function, compute model, prefix caches and policies as the emulated testbed.
- Prefill instances: FCFS, one request at a time; latency from the tokens their LRU prefix cache lacks.
- KV transfers and background flows are flows on their routed paths; rates are max-min fair and are
  recomputed whenever a flow starts or ends. A transfer's last byte lands the path's latency after
  it left (per link: `topology.hop_latency_us` + one `mtu_bytes` packet at the link's rate).
- [[fault]] links go down and up on their schedule: the routing function moves the pairs that
  crossed them (as the controller does on a port-status event), and every flow whose routed path
  changed continues on its new path with the bytes it has left.
- The controller is modelled by sampling the per-link byte counters every poll interval (all
  switches at one random offset per run, as the emulated controller polls, or each switch at its
  own: `telemetry.poll_phase`) and publishing each sample `publish_delay_s` later; the counter
  oracle reads each link's latest published sample, and a decision's telemetry age is that of the
  oldest sample on its path.
- With the probe oracle, a packet train every `telemetry.probe_interval_s`, the (prefill, decode)
  pairs in turn, measures its path at that instant: the train's dispersion through the path's
  links at their current load (`FlowNetwork.train_rate`), as a real train would.
- Decode instances run continuous batching. Iterations are folded: between two changes of a batch
  (a sequence joins or finishes) every step adds `batch` tokens of context, so step times form an
  arithmetic series and one event covers all steps up to the next change. An instance keeps its
  segments (first iteration index, first step time, increment) and each sequence the iteration
  indices it spans, so an event costs O(1) plus the sequences that finish; the per-token gaps are
  slices of each instance's iteration times, built from the segments once, at the end of the run.
Deterministic for a given seed: ties in time are broken by event sequence number.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import deque
from contextlib import contextmanager

import numpy as np

from netkv.config import Experiment
from netkv.results import RequestRecord
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import Snapshot, probe_pairs
from netkv.scheduler.runtime import Runtime, Tracked
from netkv.simulator import compiled
from netkv.topology import NoPathError
from netkv.trace import window_from_config

ARRIVAL, PREFILL_DONE, NET, DECODE, POLL, BG_ON, BG_OFF, FAULT, KV_LANDED, PROBE = range(10)
# events that do not themselves move a request along (polls, probes and toggles recur for ever;
# faults only change where flows go)
_PERIODIC = (POLL, BG_ON, BG_OFF, FAULT, PROBE)


class _Req(Tracked):
    """A request with the simulator's decode state."""

    __slots__ = ("j0", "end", "flow")

    def __init__(self, req, policy):
        super().__init__(req, policy)
        self.j0 = self.end = 0  # its decode instance's iteration count when it joined / when it finishes
        self.flow = None


class _Prefill:
    __slots__ = ("slot", "host", "queue", "current", "cache")

    def __init__(self, slot, host, cache):
        self.slot, self.host, self.cache = slot, host, cache
        self.queue: deque[_Req] = deque()
        self.current: _Req | None = None


class _Decode:
    __slots__ = (
        "slot", "host", "n", "ends", "new", "waitq", "t0", "s0", "dl", "planned", "version", "cache",
        "steps", "seg_k", "seg_s0", "seg_dl",
    )  # fmt: skip

    def __init__(self, slot, host, cache):
        self.slot, self.host, self.cache = slot, host, cache
        self.n = 0  # sequences in the running batch
        self.ends: list[tuple[int, int, _Req]] = []  # heap of (iteration count at its end, id, sequence)
        self.new: list[_Req] = []  # joined, first token not produced yet
        self.waitq: deque[_Req] = deque()
        self.t0 = self.s0 = self.dl = 0.0
        self.planned = 0
        self.version = 0
        self.steps = 0  # iterations run so far
        # segments: index of the first iteration, its time, the increment per iteration
        self.seg_k: list[int] = []
        self.seg_s0: list[float] = []
        self.seg_dl: list[float] = []

    def durations(self) -> np.ndarray:
        """Duration of every iteration run so far, from the segments (one numpy pass)."""
        if not self.seg_k:
            return np.zeros(0)
        k = np.array(self.seg_k + [self.steps], dtype=np.int64)
        n = np.diff(k)
        at = np.arange(self.steps) - np.repeat(k[:-1], n)  # position within its segment
        return np.repeat(self.seg_s0, n) + np.repeat(self.seg_dl, n) * at


@contextmanager
def gc_paused():
    """The cyclic garbage collector off for a block, back as it was after (even on an error). A
    simulation allocates many short-lived objects and no garbage cycles worth finding (requests,
    records and flows stay referenced until the end): the collector's passes over them cost ~10% of
    the event loop."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _steps_time(s0: float, dl: float, m: int) -> float:
    """Duration of m iterations whose times are s0, s0 + dl, s0 + 2 dl, ..."""
    return m * s0 + dl * m * (m - 1) / 2.0


class Simulation:
    """One policy over one trace window on the modelled cluster."""

    def __init__(
        self,
        cluster: Cluster | Experiment,
        policy: str,
        requests=None,
        *,
        compute=None,
        progress=None,
        replay: dict[int, tuple[int, int]] | None = None,
    ):
        """`replay`: request id -> (prefill host, decode host) to take instead of the policy's choice."""
        if not isinstance(cluster, Cluster):  # an experiment: build its cluster here
            cluster = Cluster.build(cluster, compute)
        exp = self.exp = cluster.exp
        self.policy = policy
        self.requests = requests if requests is not None else window_from_config(exp)
        self.now = 0.0
        te = exp.telemetry
        self._poll = te.poll_interval_s
        self._delay = te.publish_delay_s
        # samples taken, not yet published: (publish at, poll group, rates, taken at)
        self._snaps: deque[tuple[float, int, np.ndarray, float]] = deque()
        self._snap: Snapshot | None = None
        net_cls = compiled.flow_network()
        kv = compiled.kv_caches(max(len(cluster.prefill_hosts), len(cluster.decode_hosts)), self.requests)
        self.core = compiled.label(net_cls, kv[0])  # which implementation ran (simulator/compiled.py)
        self.rt = rt = Runtime(cluster, policy, lambda: self.now, self._published, replay, kv)
        self.topo, self.compute, self.routing = rt.topo, rt.compute, rt.routing
        self.view, self.oracle, self.sched = rt.view, rt.oracle, rt.sched
        if te.compare_fresh:
            self.sched.fresh = self._fresh
        self.net = net_cls(self.topo.capacity_bps)
        self._last_counters = np.zeros(self.topo.n_links)
        self._poll_groups, self._poll_phases = _poll_plan(self.topo, te.poll_phase, self._poll, exp.seed)
        self.prefills = [
            _Prefill(i, int(h), c) for i, (h, c) in enumerate(zip(cluster.prefill_hosts, rt.prefill_caches))
        ]
        self.decodes = [_Decode(i, int(h), c) for i, (h, c) in enumerate(zip(cluster.decode_hosts, rt.decode_caches))]
        # the probe oracle's trains: one every probe_interval_s, the pairs in turn
        self._probes = getattr(self.oracle, "probes", False)
        self._probe_order = probe_pairs(cluster.prefill_hosts, cluster.decode_hosts, exp.seed) if self._probes else []
        self._probe_i = 0
        self.bg = cluster.background
        self.fault_links = cluster.faults
        self.fault_log: list[dict] = []  # per link change: time, link, up, flows moved
        self._ends: dict[int, tuple[int, int]] = {}  # flow id -> (src host, dst host)
        self._bg_flows: list[list[int]] = [[] for _ in self.bg]
        # per background pair: bytes delivered and seconds on, for background_report()
        self._bg_sent = [[0.0] * len(p) for p in self.bg]
        self._bg_on_s = [[0.0] * len(p) for p in self.bg]
        self._bg_since = [0.0] * len(self.bg)
        self._heap: list = []
        self._path_lat: dict[tuple[int, ...], float] = {}  # a path's summed latency, as numpy sums it
        self._gaps_todo: list[tuple[RequestRecord, int, int, int]] = []  # (record, decode slot, iterations a..b)
        self._seq = 0
        self._work = 0  # queued events that can move a request along (not periodic ones)
        self._progress = progress
        self.finished = 0
        self.events = 0

    # ---- event queue -------------------------------------------------------------------------
    def _push(self, t, kind, a=None, b=None):
        self._seq += 1
        if kind not in _PERIODIC:
            self._work += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    MAX_PERIODIC = 10_000_000  # polls + background toggles a run may need: bounds its time and memory

    def _check_periodic(self) -> None:
        """Refuse a run whose periodic events alone would take for ever (a 1 ms poll over a year)."""
        span = self.requests[-1].arrival_s if self.requests else 0.0
        checks = [("telemetry.poll_interval_s", self._poll)] if self.oracle.uses_telemetry else []
        if self._probes:
            checks.append(("telemetry.probe_interval_s", self.exp.telemetry.probe_interval_s))
        checks += [(f"background[{i}]", b.on_s + b.off_s) for i, b in enumerate(self.exp.background)]
        for key, period in checks:
            n = span / period
            if n > self.MAX_PERIODIC:
                raise self.exp.error(
                    key,
                    f"a period of {period:g} s over {span:.4g} s of arrivals is {n:.3g} events "
                    f"(at most {self.MAX_PERIODIC:.0e}); lengthen it or shorten the trace window",
                )

    def run(self) -> list[RequestRecord]:
        self._check_periodic()
        reqs = [_Req(r, self.policy) for r in self.requests]
        self._reqs = reqs
        for i, r in enumerate(reqs):
            self._push(r.req.arrival_s, ARRIVAL, i)
        if self.oracle.uses_telemetry:
            # the controller has been polling an idle fabric since before trace time 0: at 0 its
            # latest published samples (rate 0) are those taken publish_delay_s or more earlier, and
            # the later ones are still on their way
            n, P = self.topo.n_links, self._poll
            at = np.full(n, np.nan)
            pending = []
            for g, (ids, ph) in enumerate(zip(self._poll_groups, self._poll_phases, strict=True)):
                k = max(1, math.ceil((ph + self._delay) / P - 1e-12))  # polls back to the published one
                at[ids] = ph - k * P
                pending += [(ph - j * P + self._delay, g, np.zeros(len(ids)), ph - j * P) for j in range(k - 1, 0, -1)]
                self._push(ph, POLL, g)
            self._snaps.extend(sorted(pending, key=lambda x: x[0]))
            self._snap = Snapshot(float(np.nanmin(at)), np.zeros(n), version=1, link_sampled_at=at)
        if self._probe_order:
            self._push(0.0, PROBE)
        for i, b in enumerate(self.exp.background):
            self._push(b.start_s, BG_ON, i)
        for i, f in enumerate(self.exp.faults):
            if f.kind != "link":  # a process of the emulated testbed: the flow model has none
                self.fault_log.append({"t": f.at_s, "fault": f.label, "modelled": False})
                continue
            for t, up in f.schedule():
                self._push(t, FAULT, i, up)
        handlers = {
            ARRIVAL: self._arrival,
            PREFILL_DONE: self._prefill_done,
            NET: self._net_event,
            DECODE: self._decode_event,
            POLL: self._poll_event,
            BG_ON: self._bg_on,
            BG_OFF: self._bg_off,
            FAULT: self._fault,
            KV_LANDED: self._kv_landed,
            PROBE: self._probe_event,
        }
        n = len(reqs)
        bar = None
        if self._progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"simulate {self.policy}", unit="req", leave=False)
        self._bar = bar
        try:
            with gc_paused():
                while self._heap and self.finished < n:
                    t, _, kind, a, b = heapq.heappop(self._heap)
                    self.now = t
                    self.events += 1
                    if kind not in _PERIODIC:
                        self._work -= 1
                    elif self._work == 0:
                        # only polls and background toggles are left: nothing can finish a request
                        break
                    handlers[kind](a, b)
        finally:
            if bar is not None:
                bar.close()
        durations = {}
        for rec, slot, a, b in self._gaps_todo:
            if slot not in durations:
                durations[slot] = self.decodes[slot].durations()
            rec.gaps = durations[slot][a:b]
        self._gaps_todo = []
        if self.finished < n:
            raise RuntimeError(
                f"simulation stalled at t = {self.now:.3f} s with {n - self.finished} unfinished "
                "requests and no event left that could finish them"
            )
        return [r.rec for r in reqs]

    # ---- arrivals and prefill ----------------------------------------------------------------
    def _arrival(self, i, _):
        r = self._reqs[i]
        reason = self.rt.refuse(r)
        if reason is not None:
            self.rt.failed(r, reason)
            self._count_finished()
            return
        d = self.rt.decide(r, self.now)
        p = self.prefills[d.prefill_slot]
        p.queue.append(r)
        if p.current is None:
            self._start_prefill(p)

    def _start_prefill(self, p: _Prefill):
        r = p.queue.popleft()
        dur = self.rt.prefill_started(r, p.slot, p.cache.match(r.req.hash_ids), self.now)
        p.current = r
        self._push(self.now + dur, PREFILL_DONE, p.slot)

    def _prefill_done(self, slot, _):
        p = self.prefills[slot]
        r = p.current
        p.current = None
        self.rt.prefill_ended(r, slot, self.now)
        if r.dec.bytes_to_send > 0:
            links = self.routing.path_ids(r.dec.prefill_host, r.dec.decode_host)
            r.flow = self.net.add(self.now, links, r.dec.bytes_to_send, tag=r)
            self._ends[r.flow.id] = (r.dec.prefill_host, r.dec.decode_host)
            self.rt.transfer_started(r, self.now)
            self._schedule_net()
        else:
            self._kv_arrived(r)
        if p.queue:
            self._start_prefill(p)

    # ---- network -----------------------------------------------------------------------------
    def _schedule_net(self):
        nxt = self.net.next_completion()
        if nxt is not None:
            self._push(max(nxt[0], self.now), NET, self.net.version)

    def _net_event(self, version, _):
        if version != self.net.version:
            return
        self.net.advance(self.now)
        done = [f for f in self.net.finite.values() if f.remaining <= max(1.0, f.rate * 1e-9)]
        self.net.remove_many(f.id for f in done)
        for f in done:
            self._ends.pop(f.id, None)
            # the last byte left the source; it lands after the path's hop and packet latencies
            lat = self._path_lat.get(f.path)
            if lat is None:
                lat = self._path_lat[f.path] = float(self.topo.latency_s[f.links].sum())
            self._push(self.now + lat, KV_LANDED, f.tag)
        self._schedule_net()

    def _kv_landed(self, r, _):
        self._kv_arrived(r)

    def _poll_event(self, g, _b):
        """Poll group g (every switch, or one switch) samples its links' counters."""
        self._published()  # move past samples already published: the queue holds only unpublished ones
        self.net.advance(self.now)
        ids = self._poll_groups[g]
        c = self.net.counters[ids]
        rates = (c - self._last_counters[ids]) / self._poll
        self._last_counters[ids] = c
        self._snaps.append((self.now + self._delay, g, rates, self.now))
        self._push(self.now + self._poll, POLL, g)

    def _probe_event(self, _a, _b):
        """The next pair's train: the probe oracle learns the rate it came out at."""
        p, d = self._probe_order[self._probe_i % len(self._probe_order)]
        self._probe_i += 1
        try:
            links = self.routing.path(p, d)
        except NoPathError:
            links = None
        if links is not None:
            self.oracle.record(p, d, self.net.train_rate(links), self.now)
        self._push(self.now + self.exp.telemetry.probe_interval_s, PROBE)

    def _fresh(self) -> Snapshot:
        """Telemetry with no staleness: the flow model's link rates at this instant (current since the
        last flow change; the counters are not advanced, so asking changes nothing)."""
        n = self.topo.n_links
        return Snapshot(self.now, self.net.link_rate.copy(), version=-1, link_sampled_at=np.full(n, self.now))

    def _published(self) -> Snapshot | None:
        """The telemetry as published now: each link's latest sample whose publish time has come."""
        if self._snaps and self._snaps[0][0] <= self.now:
            snap = self._snap
            rates, at = snap.rates.copy(), snap.link_sampled_at.copy()
            while self._snaps and self._snaps[0][0] <= self.now:
                _, g, r, t = self._snaps.popleft()
                ids = self._poll_groups[g]
                rates[ids], at[ids] = r, t
            self._snap = Snapshot(float(np.nanmin(at)), rates, version=snap.version + 1, link_sampled_at=at)
        return self._snap

    def _bg_on(self, i, _):
        cfg = self.exp.background[i]
        demand = math.inf if cfg.rate_gbps is None else cfg.rate_gbps * 1e9 / 8
        for s, d in self.bg[i]:
            f = self.net.add(self.now, self.routing.path(s, d), math.inf, demand, tag=("bg", i), track=True)
            self._bg_flows[i].append(f.id)
            self._ends[f.id] = (s, d)
        self._bg_since[i] = self.now
        if math.isfinite(cfg.on_s):
            self._push(self.now + cfg.on_s, BG_OFF, i)
        self._schedule_net()

    def _bg_account(self, i) -> None:
        self.net.advance(self.now)
        for k, fid in enumerate(self._bg_flows[i]):
            self._bg_sent[i][k] += self.net.flows[fid].sent
            self._bg_on_s[i][k] += self.now - self._bg_since[i]

    def background_report(self) -> list[dict]:
        """Per background pair: the mean rate the flow model gave it while on (real Gbit/s)."""
        self.net.advance(self.now)
        out = []
        for i, pairs in enumerate(self.bg):
            for k, (s, d) in enumerate(pairs):
                sent, on = self._bg_sent[i][k], self._bg_on_s[i][k]
                if self._bg_flows[i]:  # still on at the end of the run
                    sent += self.net.flows[self._bg_flows[i][k]].sent
                    on += self.now - self._bg_since[i]
                out.append(
                    {
                        "entry": i,
                        "src": self.topo.hosts[s].name,
                        "dst": self.topo.hosts[d].name,
                        "on_s": on,
                        "delivered_gbps_on": sent * 8 / 1e9 / on if on > 0 else None,
                    }
                )
        return out

    def _bg_off(self, i, _):
        self._bg_account(i)
        self.net.remove_many(self._bg_flows[i])
        for fid in self._bg_flows[i]:
            self._ends.pop(fid, None)
        self._bg_flows[i] = []
        self._push(self.now + self.exp.background[i].off_s, BG_ON, i)
        self._schedule_net()

    # ---- link faults -------------------------------------------------------------------------
    def _fault(self, i, up):
        """Fault i's link goes down (up=False) or comes back: flows whose routed path changed move."""
        for lid in self.fault_links[i]:
            self.routing.mark(lid, up)
        moved = 0
        for fid in list(self.net.flows):
            s, d = self._ends[fid]
            links = self.routing.path(s, d)
            if list(self.net.flows[fid].links) == links:
                continue
            f = self.net.reroute(self.now, fid, links)
            moved += 1
            self._ends[f.id] = self._ends.pop(fid)
            if isinstance(f.tag, _Req):
                f.tag.flow = f
            else:
                bg = self._bg_flows[f.tag[1]]
                bg[bg.index(fid)] = f.id
        label = self.exp.faults[i].label
        self.fault_log.append({"t": self.now, "fault": label, "link": label, "up": bool(up), "flows_moved": moved})
        self._schedule_net()

    # ---- decode ------------------------------------------------------------------------------
    def _room(self, D: _Decode, r: _Req) -> bool:
        return self.compute.admits(D.n, int(self.view.kv_used[D.slot]), r.need)

    def _kv_arrived(self, r: _Req):
        now = self.now
        D = self.decodes[r.dec.decode_slot]
        self.rt.kv_arrived(r, D.slot, now)
        D.waitq.append(r)
        self.view.queued[D.slot] += 1
        if not D.n:
            self._admit(D)
            self._start_segment(D)
        elif D.waitq[0] is r and self._room(D, r):
            # join at the next iteration boundary after now
            x = now - D.t0
            if D.dl > 0:
                a, b = D.dl / 2.0, D.s0 - D.dl / 2.0
                m = max(1, math.ceil((-b + math.sqrt(b * b + 4 * a * x)) / (2 * a)))
            else:
                m = max(1, math.ceil(x / D.s0))
            while m > 1 and D.t0 + _steps_time(D.s0, D.dl, m - 1) >= now:
                m -= 1
            while D.t0 + _steps_time(D.s0, D.dl, m) < now:
                m += 1
            if m < D.planned:
                D.planned = m
                D.version += 1
                self._push(D.t0 + _steps_time(D.s0, D.dl, m), DECODE, D.slot, D.version)

    def _decode_event(self, slot, version):
        D = self.decodes[slot]
        if version != D.version:
            return
        self._advance(D, D.planned)
        self._admit(D)
        self._start_segment(D)

    def _advance(self, D: _Decode, m: int):
        """All sequences of the batch produce m tokens (iterations since D.t0)."""
        v = self.view
        for r in D.new:
            r.rec.t_first_token = D.t0 + D.s0
        if m > 0:
            D.new = []
        D.steps += m
        B = D.n
        v.touch(D.slot)
        v.ctx_total[D.slot] += m * B
        v.remaining[D.slot] -= m * B
        ends = D.ends
        if not ends or ends[0][0] > D.steps:
            return
        while ends and ends[0][0] <= D.steps:
            _, _, r = heapq.heappop(ends)
            if D.new:  # a sequence with no output token to make, finished in an empty step
                D.new.remove(r)
            D.n -= 1
            v.active[D.slot] -= 1
            v.kv_used[D.slot] -= r.need
            v.ctx_total[D.slot] -= r.req.input_tokens + D.steps - r.j0
            rec = r.rec
            rec.t_done = self.now
            rec.status = "completed"
            # gaps: the iterations after the one that made its first token (read off the
            # instance's iteration times at the end of the run)
            if r.end > r.j0 + 1:
                self._gaps_todo.append((rec, D.slot, r.j0 + 1, r.end))
            self._count_finished()
        D.cache.resize(self.compute.kv_blocks - int(v.kv_used[D.slot]))

    def _count_finished(self) -> None:
        self.finished += 1
        if self._bar is not None:
            self._bar.update(1)

    def _admit(self, D: _Decode):
        v = self.view
        while D.waitq and self._room(D, D.waitq[0]):
            r = D.waitq.popleft()
            v.queued[D.slot] -= 1
            r.j0 = D.steps
            r.end = D.steps + r.req.output_tokens
            heapq.heappush(D.ends, (r.end, r.req.id, r))
            D.new.append(r)
            D.n += 1
            self.rt.admitted(r, D.slot, self.now)
            v.active[D.slot] += 1
            v.kv_used[D.slot] += r.need
            v.ctx_total[D.slot] += r.req.input_tokens
            v.remaining[D.slot] += r.req.output_tokens
        D.cache.resize(self.compute.kv_blocks - int(v.kv_used[D.slot]))

    def _start_segment(self, D: _Decode):
        D.version += 1
        if not D.n:
            return
        B = D.n
        D.t0 = self.now
        D.s0 = self.compute.step_s(B, float(self.view.ctx_total[D.slot]))
        D.dl = self.compute.step_c * B
        D.planned = D.ends[0][0] - D.steps
        D.seg_k.append(D.steps)
        D.seg_s0.append(D.s0)
        D.seg_dl.append(D.dl)
        self._push(self.now + _steps_time(D.s0, D.dl, D.planned), DECODE, D.slot, D.version)


def _poll_plan(topo, phase: str, interval: float, seed: int) -> tuple[list[np.ndarray], list[float]]:
    """Which links each poll samples and when it first does (`telemetry.poll_phase`).

    A directed link's counter is read at a switch: its source's transmit counter, or, for a link out
    of a host, the receive counter of the switch it enters. "switch": one group per switch, each at
    its own random offset in [0, interval); "run": one group, one random offset; "zero": offset 0.
    The offsets come from the seed alone, so every policy of a run sees the same polls."""
    rng = np.random.default_rng([seed, 0x7E1E_0011])
    n = topo.n_links
    if phase != "switch":
        return [np.arange(n)], [0.0 if phase == "zero" else float(rng.uniform(0.0, interval))]
    owner: dict[str, list[int]] = {}
    for lk in topo.links:
        sw = lk.src if topo.nodes[lk.src].is_switch else lk.dst
        owner.setdefault(sw, []).append(lk.id)
    groups = [np.array(owner[s.name], dtype=np.int64) for s in topo.switches if s.name in owner]
    return groups, [float(x) for x in rng.uniform(0.0, interval, len(groups))]

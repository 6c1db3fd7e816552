"""The scheduler's runtime, shared by the simulator and the emulated scheduler service.

A `Runtime` is the scheduler-side state of one policy over one cluster — routing, the cluster view,
the oracle, the scheduler, mirrors of the prefix caches, prefill backlogs — and the bookkeeping
verbs both drivers call at the same moments of a request's life:

    decide -> prefill_started -> prefill_ended -> transfer_started -> kv_arrived -> admitted
                                                                    (kv_lost / failed on errors)

The simulator calls them from its events in simulated time; the service from the agents' messages
in real time. What differs stays in the drivers: the simulator models the decode batches (and
writes their state into the view), the service reads them from the agents (`decode_state`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netkv.kvcache import BlockIndex, PrefixCache
from netkv.results import RequestRecord
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.core import Decision, Scheduler
from netkv.scheduler.oracle import ORACLES, Snapshot
from netkv.scheduler.view import ClusterView
from netkv.topology import Routing
from netkv.trace import BLOCK_TOKENS, Request


class Tracked:
    """Scheduler-side state of one request; the drivers subclass it with their own fields."""

    __slots__ = ("req", "rec", "dec", "need", "est_prefill")

    def __init__(self, req: Request, policy: str):
        self.req = req
        self.rec = RequestRecord(req.id, req.arrival_s, req.input_tokens, req.output_tokens, policy=policy)
        self.dec: Decision | None = None
        self.need = 0  # KV blocks the sequence reserves on its decode instance (input + output)
        self.est_prefill = 0.0  # prefill seconds expected at decision time


class Runtime:
    """One policy's scheduler state over a cluster, with the verbs of a request's life."""

    def __init__(
        self,
        cluster: Cluster,
        policy: str,
        clock: Callable[[], float],
        telemetry: Callable[[], Snapshot | None],
        replay: dict[int, tuple[int, int]] | None = None,
        kv_classes: tuple[type, type] = (PrefixCache, BlockIndex),
    ):
        """`replay`: request id -> (prefill host, decode host) to take instead of choosing.
        `kv_classes`: (PrefixCache, BlockIndex) classes: kvcache's, or their compiled twins
        (simulator/compiled.py)."""
        exp = cluster.exp
        cache_cls, index_cls = kv_classes
        self.cluster, self.policy = cluster, policy
        self.topo, self.compute = cluster.topo, cluster.compute
        self.routing = Routing(self.topo, exp.topology.routing)
        self.view = ClusterView(cluster.prefill_hosts, cluster.decode_hosts, self.compute, index_cls)
        self.oracle = ORACLES.get(exp.telemetry.oracle).from_config(
            self.topo, self.routing, exp.telemetry, telemetry, clock
        )
        self.sched = Scheduler(
            policy, exp.policy_params.get(policy, {}), exp.seed, self.view, self.oracle, self.topo, replay
        )
        c, v = self.compute, self.view
        self.prefill_caches = [cache_cls(c.prefill_cache_blocks, i, v.prefill_index) for i in range(v.n_prefill)]
        self.decode_caches = [cache_cls(c.kv_blocks, i, v.decode_index) for i in range(v.n_decode)]
        self.busy_until = np.zeros(v.n_prefill)  # per prefill slot: when its running prefill ends
        self.queued_est = np.zeros(v.n_prefill)  # per prefill slot: estimated work queued behind it
        self._best_paths = self._paths_per_tier()
        self._kv_tok = float(self.compute.model.kv_bytes_per_token)

    def _paths_per_tier(self) -> list[tuple[float, float]]:
        """(bottleneck bytes/s, latency s) of one routed (prefill, decode) pair per tier that exists."""
        topo, found = self.topo, {}
        dec = self.cluster.decode_hosts
        for p in self.cluster.prefill_hosts:
            tiers = topo.tiers_row(int(p), dec)
            for t in np.unique(tiers):
                if int(t) not in found:
                    links = self.routing.path(int(p), int(dec[np.flatnonzero(tiers == t)[0]]))
                    found[int(t)] = (float(topo.capacity_bps[links].min()), float(topo.latency_s[links].sum()))
            if len(found) == 4:
                break
        return list(found.values())

    def unloaded(self, req: Request) -> tuple[float, float]:
        """The request's TTFT and TBT alone on the idle cluster: its whole prefill (no cached prefix),
        its KV over the best-placed pair's path, its first decode step in a batch of one; TBT: the
        step of that batch of one at its final context (the largest gap it would see)."""
        c = self.compute
        nbytes = req.input_tokens * self._kv_tok
        xfer = min(nbytes / b + lat for b, lat in self._best_paths) if nbytes > 0 else 0.0
        ttft = c.prefill_s(req.input_tokens) + xfer + c.step_s(1, req.input_tokens)
        return ttft, c.step_s(1, req.input_tokens + req.output_tokens)

    # ---- decision ----------------------------------------------------------------------------
    def refuse(self, t: Tracked) -> str | None:
        """Why a request can never be served on this cluster (its KV, input + output, does not fit
        an empty decode instance), or None. The drivers fail such a request at its arrival."""
        need = self.compute.blocks_for(t.req.input_tokens + t.req.output_tokens)
        if need > self.compute.kv_blocks:
            return (
                f"needs {need} KV blocks (input + output), more than a decode instance holds ({self.compute.kv_blocks})"
            )
        return None

    def decide(self, t: Tracked, now: float, oracle_label: str | None = None) -> Decision:
        """Choose (prefill, decode) for a request arriving at `now` and commit the choice: the
        decode instance expects its KV, the prefill instance has it queued, the oracle knows the
        transfer. `oracle_label` overrides what the record says informed the choice."""
        v, req = self.view, t.req
        np.maximum(self.busy_until - now, 0.0, out=v.prefill_backlog_s)
        v.prefill_backlog_s += self.queued_est
        d = self.sched.decide(req)
        t.dec = d
        t.rec.record_decision(d, self.topo, oracle_label or self.oracle.name)
        t.rec.ttft_unloaded_s, t.rec.tbt_unloaded_s = self.unloaded(req)
        t.need = self.compute.blocks_for(req.input_tokens + req.output_tokens)
        self.decode_caches[d.decode_slot].touch(req.hash_ids[: d.decode_hit_blocks])
        v.inbound[d.decode_slot] += 1
        v.kv_pending[d.decode_slot] += t.need
        v.ctx_pending[d.decode_slot] += req.input_tokens
        v.touch(d.decode_slot)
        self.oracle.commit(req.id, d.prefill_host, d.decode_host, d.bytes_to_send, d.est_transfer_s, d.transfer_start)
        t.est_prefill = self.compute.prefill_s(req.input_tokens - d.prefill_hit_blocks * BLOCK_TOKENS)
        self.queued_est[d.prefill_slot] += t.est_prefill
        v.prefill_queued[d.prefill_slot] += 1
        return d

    # ---- prefill -----------------------------------------------------------------------------
    def prefill_started(self, t: Tracked, slot: int, hits: int, now: float) -> float:
        """The prefill instance started the request with `hits` cached blocks; returns its duration."""
        self.view.prefill_queued[slot] -= 1
        self.queued_est[slot] -= t.est_prefill
        self.prefill_caches[slot].touch(t.req.hash_ids[:hits])
        dur = self.compute.prefill_s(t.req.input_tokens - hits * BLOCK_TOKENS)
        t.rec.prefill_hit_blocks = hits
        t.rec.t_prefill_start = now
        self.busy_until[slot] = now + dur
        return dur

    def prefill_ended(self, t: Tracked, slot: int, now: float) -> None:
        t.rec.t_prefill_end = now
        self.busy_until[slot] = now
        self.prefill_caches[slot].insert(t.req.hash_ids)

    # ---- transfer ----------------------------------------------------------------------------
    def transfer_started(self, t: Tracked, now: float) -> None:
        self.oracle.started(t.req.id, now)

    def _transfer_over(self, t: Tracked, slot: int) -> None:
        self.view.inbound[slot] -= 1
        self.view.touch(slot)
        self.oracle.release(t.req.id)

    def kv_arrived(self, t: Tracked, slot: int, now: float) -> None:
        """All of the request's KV reached decode slot `slot` at `now`."""
        self._transfer_over(t, slot)
        t.rec.t_transfer_end = now
        self.decode_caches[slot].insert(t.req.hash_ids)

    def kv_lost(self, t: Tracked, slot: int) -> None:
        """The transfer ended without all the KV (the request will fail)."""
        self._transfer_over(t, slot)
        self.view.kv_pending[slot] -= t.need
        self.view.ctx_pending[slot] -= t.req.input_tokens

    # ---- decode ------------------------------------------------------------------------------
    def admitted(self, t: Tracked, slot: int, now: float) -> None:
        """The sequence joined decode slot `slot`'s batch: its blocks move from pending to used
        (the driver updates the batch state: the simulator itself, the service from `decode_state`)."""
        t.rec.t_admit = now
        self.view.kv_pending[slot] -= t.need
        self.view.ctx_pending[slot] -= t.req.input_tokens
        self.view.touch(slot)

    def decode_state(
        self, slot: int, active: int, queued: int, kv_used: int, ctx_total: float, remaining: float
    ) -> None:
        """A decode instance's batch as it reports it (the emulated agents)."""
        v = self.view
        v.active[slot], v.queued[slot], v.kv_used[slot] = active, queued, kv_used
        v.ctx_total[slot], v.remaining[slot] = ctx_total, remaining
        v.touch(slot)
        self.decode_caches[slot].resize(self.compute.kv_blocks - kv_used)

    def failed(self, t: Tracked, reason: str) -> None:
        t.rec.status = "failed"
        t.rec.fail_reason = reason
        self.oracle.release(t.req.id)

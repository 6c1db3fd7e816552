"""Scheduling decisions shared by the simulator and the emulated scheduler service.

The prefill choice is common to every policy, so that a study isolates decode selection. It follows
Mooncake's Conductor: for each live prefill instance, estimate when the request's prefill would end
= its queued work + prefill time of the tokens its prefix cache lacks; take the earliest (a prefix
hit and a short queue both help). Exact ties — idle instances without a prefix hit, the common case
at low load — are broken uniformly at random (seeded by the experiment's seed): the lowest slot
would otherwise take every such request, piling the prefill work onto the first pod (with 2,000
requests of the paper-like setup: 1,335 / 622 / 43 / 0 per pod). The decode choice is the policy's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from netkv.scheduler.policies import Query, registry
from netkv.trace import BLOCK_TOKENS

_all = np.logical_and.reduce  # ndarray.all without its Python-level wrapper

if TYPE_CHECKING:
    from netkv.scheduler.oracle import Snapshot


@dataclass(slots=True)
class Decision:
    prefill_slot: int
    decode_slot: int
    prefill_host: int
    decode_host: int
    tier: int
    prefill_hit_blocks: int  # at decision time (the prefill instance re-checks when it starts)
    decode_hit_blocks: int
    blocks_to_send: int
    bytes_to_send: float  # real-cluster bytes
    est_transfer_s: float
    transfer_start: float | None  # expected start of the KV transfer (real-cluster time)
    telemetry_age_s: float | None
    decision_us: float  # wall time of the policy's decode choice
    prefill_choice_us: float  # wall time of the common prefill choice
    fresh_decode_host: int | None = None  # the choice on fresh telemetry (Scheduler.fresh), if asked
    fresh_tier: int | None = None


class Scheduler:
    """Picks (prefill, decode) for each request with one policy over a ClusterView and an oracle."""

    def __init__(
        self,
        policy_name: str,
        params: dict,
        seed: int,
        view,
        oracle,
        topo,
        replay: dict[int, tuple[int, int]] | None = None,
    ):
        """`replay`: request id -> (prefill host, decode host) to take instead of choosing (the
        simulator replaying an emulated run's choices, so that the two compare like with like)."""
        self.policy = registry.create(policy_name, params, seed)
        self.view = view
        self.oracle = oracle
        self.topo = topo
        self._kv_tok = float(view.compute.model.kv_bytes_per_token)
        self.replay = replay or {}
        # a driver that knows the true link rates (the simulator) sets this to ask, for every
        # decision, what the policy would choose on them (`telemetry.compare_fresh`)
        self.fresh: Callable[[], Snapshot] | None = None
        self._ties = np.random.default_rng([seed, 0x7E1E])  # prefill tie-breaks; apart from the policy's stream
        self._p_slot = {int(h): i for i, h in enumerate(view.prefill_hosts)}
        self._d_slot = {int(h): i for i, h in enumerate(view.decode_hosts)}

    def _prefill_finish(self, req) -> tuple[np.ndarray, np.ndarray]:
        """Per prefill slot: prefix-hit blocks, and seconds until this request's prefill would end there."""
        v = self.view
        idx = v.prefill_index
        drops = idx.prefix_drops(req.hash_ids)
        hits = idx.hits_of(drops)
        prefill_s = v.compute.prefill_s
        if drops:  # one latency per distinct hit count, spread over the slots
            vals = [prefill_s(req.input_tokens)] + [prefill_s(req.input_tokens - j * BLOCK_TOKENS) for j, _ in drops]
            pf = np.array(vals)[idx.groups_of(drops)]
        else:  # no instance holds a prefix: one scalar latency for all
            pf = prefill_s(req.input_tokens)
        if _all(v.prefill_alive):
            return hits, v.prefill_backlog_s + pf
        finish = np.where(v.prefill_alive, v.prefill_backlog_s + pf, np.inf)
        if not np.isfinite(finish).any():
            raise RuntimeError("no live prefill instance")
        return hits, finish

    def choose_prefill(self, req, forced: int | None = None) -> tuple[int, int, float]:
        """(slot, prefix-hit blocks, seconds until its prefill ends) of the prefill instance expected
        to finish the prefill first (or of slot `forced`)."""
        hits, finish = self._prefill_finish(req)
        if forced is not None:
            slot = forced
        else:
            fl = finish.tolist()  # a few dozen slots: Python's min and count beat numpy's per-call cost
            best = min(fl)
            if fl.count(best) == 1:
                slot = fl.index(best)
            else:  # integers(len) draws what choice(ties) would, at a fifth of its cost
                ties = [i for i, x in enumerate(fl) if x == best]
                slot = ties[int(self._ties.integers(len(ties)))]
        return slot, int(hits[slot]), float(finish[slot])

    def prefill_candidates(self, finish: np.ndarray, n: int) -> np.ndarray:
        """The n live prefill slots expected to finish first; exact ties in random order (the tie stream)."""
        live = np.flatnonzero(np.isfinite(finish))
        order = live[np.lexsort((self._ties.random(len(live)), finish[live]))]
        return order[: max(1, int(n))]

    def _decide_pair(self, req) -> tuple[int, int, int, float, Query]:
        """A joint policy's (prefill slot, decode slot, prefill hits, prefill finish, query)."""
        hits, finish = self._prefill_finish(req)
        slots = self.prefill_candidates(finish, self.policy.params["candidates"])
        clock = self.oracle.clock
        now = None if clock is None else clock()
        q = Query(req, int(slots[0]), self.view)
        p_slot, d_slot = self.policy.choose_pair(q, slots, finish, self.oracle, now)
        q.prefill_slot = p_slot
        q.transfer_start = None if now is None else now + float(finish[p_slot])
        return p_slot, d_slot, int(hits[p_slot]), float(finish[p_slot]), q

    def decide(self, req) -> Decision:
        t0 = time.perf_counter_ns()
        forced = self.replay.get(req.id)
        joint = forced is None and getattr(self.policy, "joint", False)
        before = None
        if joint:  # the policy picks both: its whole time counts as the decode choice
            shadow = False
            t1 = time.perf_counter_ns()
            p_slot, d_slot, p_hits, p_finish, q = self._decide_pair(req)
        else:
            p_slot, p_hits, p_finish = self.choose_prefill(req, None if forced is None else self._p_slot[forced[0]])
            t1 = time.perf_counter_ns()
            clock = self.oracle.clock
            q = Query(req, p_slot, self.view, transfer_start=None if clock is None else clock() + p_finish)
            shadow = self.fresh is not None and forced is None and self.oracle.uses_telemetry
            before = self.policy.rng.bit_generator.state if shadow else None
            d_slot = self.policy.choose(q, self.oracle) if forced is None else self._d_slot[forced[1]]
        t2 = time.perf_counter_ns()
        p_host = int(self.view.prefill_hosts[p_slot])
        d_host = int(self.view.decode_hosts[d_slot])
        nbytes = float(q.missing_bytes[d_slot])
        d_hits = int(q.hits[d_slot])
        est, age = self.oracle.cost(p_host, d_host, nbytes, at=q.transfer_start)
        fresh_host = fresh_tier = None
        if shadow:
            fresh_host = int(self.view.decode_hosts[self._fresh_choice(q, before)])
            fresh_tier = self.topo.tier(p_host, fresh_host)
        return Decision(
            prefill_slot=p_slot,
            decode_slot=d_slot,
            prefill_host=p_host,
            decode_host=d_host,
            tier=self.topo.tier(p_host, d_host),
            prefill_hit_blocks=p_hits,
            decode_hit_blocks=d_hits,
            blocks_to_send=req.n_blocks - d_hits,
            bytes_to_send=nbytes,
            est_transfer_s=est,
            transfer_start=q.transfer_start,
            telemetry_age_s=age,
            decision_us=(t2 - t1) / 1e3,
            prefill_choice_us=(t1 - t0) / 1e3,
            fresh_decode_host=fresh_host,
            fresh_tier=fresh_tier,
        )

    def _fresh_choice(self, q: Query, rng_state) -> int:
        """The policy's choice for the same query on fresh telemetry, leaving no trace: the oracle
        reads the fresh snapshot only for this call, and the policy's random stream is put back."""
        after = self.policy.rng.bit_generator.state
        source, snap = self.oracle.source, self.fresh()
        self.policy.rng.bit_generator.state = rng_state  # the same draws as the real choice
        self.oracle.source = lambda: snap
        try:
            return self.policy.choose(q, self.oracle)
        finally:
            self.oracle.source = source
            self.policy.rng.bit_generator.state = after

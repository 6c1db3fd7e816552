"""The scheduler's view of the cluster: per-instance queues, batches, KV use and cached blocks.

The simulator and the emulated scheduler service keep one `ClusterView` up to date from their own
events; policies only read it. Arrays are indexed by slot (position in `decode_hosts` or
`prefill_hosts`); host ids are topology host indices.
"""

from __future__ import annotations

import numpy as np

from ..compute import ComputeModel
from ..kvcache import BlockIndex


class ClusterView:
    """Live state of prefill and decode instances, shared by all policies."""

    def __init__(self, prefill_hosts, decode_hosts, compute: ComputeModel):
        self.compute = compute
        self.prefill_hosts = np.asarray(prefill_hosts, dtype=np.int64)
        self.decode_hosts = np.asarray(decode_hosts, dtype=np.int64)
        nP, nD = len(self.prefill_hosts), len(self.decode_hosts)
        # prefill
        self.prefill_alive = np.ones(nP, dtype=bool)
        self.prefill_backlog_s = np.zeros(nP)  # queued + remaining prefill work, seconds
        self.prefill_queued = np.zeros(nP, dtype=np.int64)
        self.prefill_index = BlockIndex(nP)
        # decode
        self.decode_alive = np.ones(nD, dtype=bool)
        self.active = np.zeros(nD, dtype=np.int64)  # sequences in the running batch
        self.queued = np.zeros(nD, dtype=np.int64)  # admitted to the instance, waiting for room
        self.inbound = np.zeros(nD, dtype=np.int64)  # chosen, KV not arrived yet
        self.kv_used = np.zeros(nD, dtype=np.int64)  # blocks reserved by active sequences
        self.kv_pending = np.zeros(nD, dtype=np.int64)  # blocks of queued and inbound sequences
        self.ctx_total = np.zeros(nD)  # tokens held by the running batch
        self.remaining = np.zeros(nD)  # output tokens still to produce by the running batch
        self.decode_index = BlockIndex(nD)

    @property
    def n_decode(self) -> int:
        return len(self.decode_hosts)

    @property
    def n_prefill(self) -> int:
        return len(self.prefill_hosts)

    # ---- estimates shared by policies ------------------------------------------------------------
    def decode_hits(self, hash_ids) -> np.ndarray:
        """Blocks of the request's prefix each decode instance already holds."""
        return self.decode_index.prefix_hits(hash_ids)

    def step_s(self) -> np.ndarray:
        """Current decode iteration time of every decode instance."""
        c = self.compute
        return np.where(self.active > 0, c.step_a + c.step_b * self.active + c.step_c * self.ctx_total, 0.0)

    def est_wait_s(self, need_blocks: int) -> np.ndarray:
        """Expected wait before a new sequence joins each instance's batch.

        With room (batch below max and KV fits): half an iteration on average. Without room: the time
        for (queued + inbound + 1) sequences to finish, at the batch's completion rate
        active / (mean remaining tokens x step time) (Little's law).
        """
        c = self.compute
        step = self.step_s()
        waiting = self.queued + self.inbound
        full = (self.active + waiting >= c.max_batch) | (self.kv_used + need_blocks > c.kv_blocks)
        act = np.maximum(self.active, 1)
        drain = (waiting + 1) * (self.remaining / act) * step / act
        return np.where(full | (self.queued > 0), drain, 0.5 * step)

    def first_step_s(self, input_tokens: int) -> np.ndarray:
        """Iteration time once the new sequence has joined."""
        c = self.compute
        return c.step_a + c.step_b * (self.active + 1) + c.step_c * (self.ctx_total + input_tokens)

    def decode_load(self) -> np.ndarray:
        """Sequences on each decode instance: running, waiting for room, and inbound."""
        return self.active + self.queued + self.inbound

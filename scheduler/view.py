"""The scheduler's view of the cluster: per-instance queues, batches, KV use and cached blocks.

The simulator and the emulated scheduler service keep one `ClusterView` up to date from their own
events and call `touch(slot)` after changing a decode instance's state; policies only read it.
Arrays are indexed by slot (position in `decode_hosts` or `prefill_hosts`); host ids are topology
host indices. Per-instance estimates (iteration time, expected wait) are derived lazily for the
touched slots only, so a decision costs O(|D|) numpy work and O(touched) Python work.
"""

from __future__ import annotations

import numpy as np

from netkv.compute import ComputeModel
from netkv.kvcache import BlockIndex


class ClusterView:
    """Live state of prefill and decode instances, shared by all policies."""

    def __init__(self, prefill_hosts, decode_hosts, compute: ComputeModel, index_cls: type = BlockIndex):
        """`index_cls`: the prefix index class (kvcache.BlockIndex or its compiled twin)."""
        self.compute = compute
        self.prefill_hosts = np.asarray(prefill_hosts, dtype=np.int64)
        self.decode_hosts = np.asarray(decode_hosts, dtype=np.int64)
        nP, nD = len(self.prefill_hosts), len(self.decode_hosts)
        # prefill
        self.prefill_alive = np.ones(nP, dtype=bool)
        self.prefill_backlog_s = np.zeros(nP)  # queued + remaining prefill work, seconds
        self.prefill_queued = np.zeros(nP, dtype=np.int64)
        self.prefill_index = index_cls(nP)
        # decode: raw state, written by the simulator / scheduler service
        self.decode_alive = np.ones(nD, dtype=bool)
        self.active = np.zeros(nD, dtype=np.int64)  # sequences in the running batch
        self.queued = np.zeros(nD, dtype=np.int64)  # KV arrived, waiting for room in the batch
        self.inbound = np.zeros(nD, dtype=np.int64)  # chosen, KV not arrived yet
        self.kv_used = np.zeros(nD, dtype=np.int64)  # blocks reserved by active sequences
        self.kv_pending = np.zeros(nD, dtype=np.int64)  # blocks of queued and inbound sequences
        self.ctx_pending = np.zeros(nD)  # input tokens of queued and inbound sequences
        self.ctx_total = np.zeros(nD)  # tokens held by the running batch
        self.remaining = np.zeros(nD)  # output tokens still to produce by the running batch
        self.decode_index = index_cls(nD)
        # decode: derived estimates (see _refresh_slot)
        self._step = np.zeros(nD)
        self._half_step = np.zeros(nD)
        self._wait_full = np.zeros(nD)
        self._next_step = np.zeros(nD)
        self._batch_full = np.zeros(nD, dtype=bool)
        self._kv_free = np.zeros(nD, dtype=np.int64)
        self._dirty: set[int] = set(range(nD))
        self.all_alive = True

    @property
    def n_decode(self) -> int:
        return len(self.decode_hosts)

    @property
    def n_prefill(self) -> int:
        return len(self.prefill_hosts)

    # ---- maintenance -----------------------------------------------------------------------------
    def touch(self, slot: int) -> None:
        """Mark a decode slot whose raw state changed."""
        self._dirty.add(slot)

    def touch_all(self) -> None:
        self._dirty.update(range(self.n_decode))

    def set_decode_alive(self, slot: int, alive: bool) -> None:
        self.decode_alive[slot] = alive
        self.all_alive = bool(self.decode_alive.all())

    def _refresh(self) -> None:
        if not self._dirty:
            return
        if len(self._dirty) > 16:
            self._refresh_all()
        else:
            for s in self._dirty:
                self._refresh_slot(s)
        self._dirty.clear()

    def _refresh_slot(self, s: int) -> None:
        c = self.compute
        act = int(self.active[s])
        ctx = float(self.ctx_total[s])
        step = c.step_a + c.step_b * act + c.step_c * ctx if act else 0.0
        waiting = int(self.queued[s] + self.inbound[s])
        self._step[s] = step
        self._half_step[s] = 0.5 * step
        a1 = max(act, 1)
        self._wait_full[s] = (waiting + 1) * (float(self.remaining[s]) / a1) * step / a1
        self._next_step[s] = c.step_a + c.step_b * (act + 1) + c.step_c * ctx
        self._batch_full[s] = act + waiting >= c.max_batch
        self._kv_free[s] = c.kv_blocks - int(self.kv_used[s]) - int(self.kv_pending[s])

    def _refresh_all(self) -> None:
        c = self.compute
        act = self.active
        self._step[:] = np.where(act > 0, c.step_a + c.step_b * act + c.step_c * self.ctx_total, 0.0)
        self._half_step[:] = 0.5 * self._step
        waiting = self.queued + self.inbound
        a1 = np.maximum(act, 1)
        self._wait_full[:] = (waiting + 1) * (self.remaining / a1) * self._step / a1
        self._next_step[:] = c.step_a + c.step_b * (act + 1) + c.step_c * self.ctx_total
        self._batch_full[:] = act + waiting >= c.max_batch
        self._kv_free[:] = c.kv_blocks - self.kv_used - self.kv_pending

    # ---- estimates shared by policies ------------------------------------------------------------
    def decode_hits(self, hash_ids) -> np.ndarray:
        """Blocks of the request's prefix each decode instance already holds."""
        return self.decode_index.prefix_hits(hash_ids)

    def step_s(self) -> np.ndarray:
        """Current decode iteration time of every decode instance (0 when idle)."""
        self._refresh()
        return self._step

    def est_wait_s(self, need_blocks: int) -> np.ndarray:
        """Expected wait before a new sequence of `need_blocks` KV blocks (input + output, as the
        instance reserves them) joins each instance's batch.

        With room — the running, queued and inbound sequences leave a batch slot, and the KV blocks
        not used nor promised to the queued and inbound ones hold `need_blocks` — half an iteration
        on average (a queued sequence alone does not mean the batch is full: it may only be waiting
        for the next iteration boundary). Without:
        the time for (queued + inbound + 1) sequences to finish, at the batch's completion rate
        active / (mean remaining tokens x iteration time) (Little's law).
        """
        self._refresh()
        return np.where(self._batch_full | (self._kv_free < need_blocks), self._wait_full, self._half_step)

    def first_step_s(self, input_tokens: int) -> np.ndarray:
        """Iteration time once the new sequence (with its input context) has joined."""
        self._refresh()
        return self._next_step + self.compute.step_c * input_tokens

    def step_after_joins_s(self, input_tokens: int) -> np.ndarray:
        """Iteration time once the sequences already queued or inbound and then the new one (with
        their contexts) have joined: what the new sequence's tokens will see, unlike
        `first_step_s`, which sees the running batch only."""
        c = self.compute
        n = self.active + self.queued + self.inbound + 1
        return c.step_a + c.step_b * n + c.step_c * (self.ctx_total + self.ctx_pending + input_tokens)

    def decode_load(self) -> np.ndarray:
        """Sequences on each decode instance: running, waiting for room, and inbound."""
        return self.active + self.queued + self.inbound

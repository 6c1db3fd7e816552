"""The policy interface: given a request, the cluster view and an oracle, return a decode instance."""

from __future__ import annotations

import math

import numpy as np

from netkv.messages import show
from netkv.trace import BLOCK_TOKENS


class Query:
    """One decision's inputs, with the per-candidate prefix hits computed once and shared."""

    __slots__ = (
        "req",
        "prefill_slot",
        "view",
        "transfer_start",
        "_drops",
        "_hits",
        "_missing_blocks",
        "_missing_bytes",
    )

    def __init__(self, req, prefill_slot: int, view, transfer_start: float | None = None):
        self.req = req
        self.prefill_slot = prefill_slot
        self.view = view
        self.transfer_start = transfer_start  # when the KV transfer is expected to start
        # computed on first use (plain attributes: functools.cached_property costs a lock per access)
        self._drops: tuple = ()  # the decode index's answer behind `hits` (BlockIndex.prefix_drops)
        self._hits: np.ndarray | None = None
        self._missing_blocks: np.ndarray | None = None
        self._missing_bytes: np.ndarray | None = None

    @property
    def prefill_host(self) -> int:
        return int(self.view.prefill_hosts[self.prefill_slot])

    @property
    def hits(self) -> np.ndarray:
        """Prefix blocks each decode instance already holds."""
        h = self._hits
        return self._lookup() if h is None else h

    def _lookup(self) -> np.ndarray:
        """Fill the hits and the index's answer behind them (`_drops`)."""
        idx = self.view.decode_index
        self._drops = idx.prefix_drops(self.req.hash_ids)
        h = self._hits = idx.hits_of(self._drops)
        return h

    @property
    def missing_blocks(self) -> np.ndarray:
        m = self._missing_blocks
        if m is None:
            m = self._missing_blocks = self.req.n_blocks - self.hits
        return m

    @property
    def missing_bytes(self) -> np.ndarray:
        """KV bytes each candidate lacks (the last block may be partial)."""
        m = self._missing_bytes
        if m is None:
            if self._hits is None:
                self._lookup()
            kv = float(self.view.compute.model.kv_bytes_per_token)
            n = self.req.input_tokens
            # one value per distinct hit count (none: group 0), spread over the slots
            vals = [max(n, 0) * kv] + [max(n - j * BLOCK_TOKENS, 0) * kv for j, _ in self._drops]
            m = self._missing_bytes = np.array(vals)[self.view.decode_index.groups_of(self._drops)]
        return m


class Policy:
    """Base class. Subclasses set `name`, optional `defaults`, and implement `choose`."""

    name: str = ""
    defaults: dict = {}

    def __init__(self, params: dict, seed: int = 0):
        self.validate_params(params)
        self.params = {**self.defaults, **params}
        self.rng = np.random.default_rng(seed)

    @classmethod
    def validate_params(cls, params: dict) -> None:
        for k, v in params.items():
            if k not in cls.defaults:
                known = ", ".join(cls.defaults) or "none"
                raise ValueError(f"unknown parameter '{k}' (known: {known})")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"parameter '{k}' must be a number, got {show(v)}")
            if not np.isfinite(v) or v < 0:  # weights: nan/inf/negative would silently change the policy
                raise ValueError(f"parameter '{k}' must be a finite number >= 0, got {show(v)}")

    def choose(self, q: Query, oracle) -> int:
        """Return the decode slot for the query (only slots with view.decode_alive set)."""
        raise NotImplementedError

    def argmin(self, cost: np.ndarray, view) -> int:
        """Slot with the smallest cost among live decode instances; exact ties broken at random (seeded)."""
        if not view.all_alive:
            cost = np.where(view.decode_alive, cost, np.inf)
        cl = cost.tolist()  # a few dozen slots: Python's min and count beat numpy's per-call cost
        if math.isnan(sum(cl)):  # costs are >= 0: only a NaN makes the sum NaN (0 x inf, a zero weight)
            cl = [math.inf if x != x else x for x in cl]  # such a candidate cannot be priced: never chosen
        best = min(cl)
        if not math.isfinite(best):
            # every live candidate is unreachable, or none is alive: any live slot
            live = np.flatnonzero(view.decode_alive)
            if len(live) == 0:
                raise RuntimeError("no live decode instance")
            return int(live[self.rng.integers(len(live))])
        if cl.count(best) == 1:
            return cl.index(best)
        ties = [i for i, x in enumerate(cl) if x == best]
        return ties[int(self.rng.integers(len(ties)))]

"""Block-level LRU prefix caches keyed by Mooncake hash_id, and an index for vectorised lookups.

A request's blocks form a prefix chain, so a cache "hit" is the longest prefix of the request's
hash_ids that the cache holds (as in vLLM/SGLang/Dynamo prefix caching).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class BlockIndex:
    """hash_id -> set of instance slots holding it; answers prefix hits for all slots at once."""

    def __init__(self, n_slots: int):
        self.n = n_slots
        self.holders: dict[int, set[int]] = {}

    def add(self, slot: int, block: int) -> None:
        self.holders.setdefault(block, set()).add(slot)

    def remove(self, slot: int, block: int) -> None:
        s = self.holders.get(block)
        if s is not None:
            s.discard(slot)
            if not s:
                del self.holders[block]

    def clear_slot(self, slot: int, blocks) -> None:
        for b in blocks:
            self.remove(slot, b)

    def prefix_hits(self, hash_ids: Sequence[int]) -> np.ndarray:
        """Longest cached prefix (in blocks) of `hash_ids` for every slot."""
        hits = np.zeros(self.n, dtype=np.int64)
        alive = None
        for b in hash_ids:
            holders = self.holders.get(b)
            if not holders:
                break
            mask = np.zeros(self.n, dtype=bool)
            mask[np.fromiter(holders, dtype=np.int64, count=len(holders))] = True
            alive = mask if alive is None else (alive & mask)
            if not alive.any():
                break
            hits += alive
        return hits


class PrefixCache:
    """An LRU set of blocks with a capacity in blocks; optionally mirrored into a BlockIndex."""

    def __init__(self, capacity: int, slot: int = 0, index: BlockIndex | None = None):
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        self.capacity = capacity
        self.slot = slot
        self.index = index
        self._lru: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, block: int) -> bool:
        return block in self._lru

    def match(self, hash_ids: Sequence[int]) -> int:
        """Number of leading blocks of `hash_ids` held (does not change recency)."""
        n = 0
        for b in hash_ids:
            if b not in self._lru:
                break
            n += 1
        return n

    def touch(self, hash_ids: Sequence[int]) -> None:
        """Mark held blocks among `hash_ids` as most recently used."""
        for b in hash_ids:
            if b in self._lru:
                self._lru.move_to_end(b)

    def insert(self, hash_ids: Sequence[int]) -> None:
        """Add (or refresh) blocks as most recently used, then evict down to capacity."""
        if self.capacity == 0:
            return
        for b in hash_ids:
            if b in self._lru:
                self._lru.move_to_end(b)
            else:
                self._lru[b] = None
                if self.index is not None:
                    self.index.add(self.slot, b)
        self._evict(self.capacity)

    def resize(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._evict(self.capacity)

    def clear(self) -> None:
        if self.index is not None:
            self.index.clear_slot(self.slot, list(self._lru))
        self._lru.clear()

    def _evict(self, limit: int) -> None:
        while len(self._lru) > limit:
            b, _ = self._lru.popitem(last=False)
            if self.index is not None:
                self.index.remove(self.slot, b)

"""Block-level LRU prefix caches keyed by Mooncake hash_id, and an index for vectorised lookups.

A request's blocks form a prefix chain, so a cache "hit" is the longest prefix of the request's
hash_ids that the cache holds (as in vLLM/SGLang/Dynamo prefix caching).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


class SlotMasks:
    """Per-slot arrays from an index's slot bitmasks (memoised): what BlockIndex and its compiled
    twin (netkv/_fastcache.pyx, through simulator/compiled.py) share. The index supplies `n`,
    `prefix_drops(hash_ids)` and `mask_of(block)`; `_init_masks(n_slots)` sets up the memos."""

    n: int

    def _init_masks(self, n_slots: int) -> None:
        self.n = n_slots
        self._nbytes = (n_slots + 7) // 8
        self._memo: dict[int, np.ndarray] = {}
        self._hits_memo: dict[tuple, np.ndarray] = {}
        self._group_memo: dict[tuple, np.ndarray] = {}

    def prefix_drops(self, hash_ids: Sequence[int]) -> tuple[tuple[int, int], ...]:
        raise NotImplementedError

    def mask_of(self, block: int) -> int:
        raise NotImplementedError

    def holds(self, block: int) -> np.ndarray:
        """Boolean mask of the slots holding one block."""
        return self._bits(self.mask_of(block)).astype(bool)

    def prefix_hits(self, hash_ids: Sequence[int]) -> np.ndarray:
        """Longest cached prefix (in blocks) of `hash_ids` for every slot (read-only: memoised)."""
        return self.hits_of(self.prefix_drops(hash_ids))

    def hits_of(self, drops: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Per-slot hit counts of `prefix_drops`' answer. Memoised (requests share prefixes, so the
        same few answers recur), hence read-only."""
        hits = self._hits_memo.get(drops)
        if hits is None:
            hits = np.zeros(self.n, dtype=np.int64)
            for j, m in drops:
                hits += self._bits(m) * j
            hits.flags.writeable = False
            if len(self._hits_memo) >= 4096:
                self._hits_memo.clear()
            self._hits_memo[drops] = hits
        return hits

    def groups_of(self, drops: tuple[tuple[int, int], ...]) -> np.ndarray:
        """Per slot, 1 + the index in `drops` of its hit count, or 0 without a hit (read-only, memoised):
        a value computed once per distinct hit count spreads over the slots by `values[groups]`."""
        g = self._group_memo.get(drops)
        if g is None:
            g = np.zeros(self.n, dtype=np.intp)
            for k, (_, m) in enumerate(drops):
                g += self._bits(m) * (k + 1)
            g.flags.writeable = False
            if len(self._group_memo) >= 4096:
                self._group_memo.clear()
            self._group_memo[drops] = g
        return g

    def _bits(self, mask: int) -> np.ndarray:
        arr = self._memo.get(mask)
        if arr is None:
            raw = np.frombuffer(int(mask).to_bytes(self._nbytes, "little"), dtype=np.uint8)
            arr = np.unpackbits(raw, bitorder="little")[: self.n].astype(np.int64)
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[mask] = arr
        return arr


class BlockIndex(SlotMasks):
    """hash_id -> bitmask of instance slots holding it; answers prefix hits for all slots at once."""

    def __init__(self, n_slots: int):
        self._init_masks(n_slots)
        self.holders: dict[int, int] = {}
        self._full = (1 << n_slots) - 1

    def add(self, slot: int, block: int) -> None:
        self.holders[block] = self.holders.get(block, 0) | (1 << slot)

    def remove(self, slot: int, block: int) -> None:
        m = self.holders.get(block)
        if m is not None:
            m &= ~(1 << slot)
            if m:
                self.holders[block] = m
            else:
                del self.holders[block]

    def clear_slot(self, slot: int, blocks) -> None:
        for b in blocks:
            self.remove(slot, b)

    def mask_of(self, block: int) -> int:
        """Bitmask of the slots holding one block."""
        return self.holders.get(block, 0)

    def prefix_drops(self, hash_ids: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """The longest cached prefix of `hash_ids` per slot, as (hit blocks, bitmask of the slots with
        that many) pairs for the hit counts > 0 (empty: no slot holds the first block).

        Walks the blocks with a Python int bitmask of the slots still matching; a slot's hit count is
        the position where it drops out."""
        alive = self._full
        get = self.holders.get
        drops = []
        for j, b in enumerate(hash_ids):
            nxt = alive & get(b, 0)
            if nxt != alive:
                if j:
                    drops.append((j, alive & ~nxt))
                alive = nxt
                if not alive:
                    break
        if alive and hash_ids:
            drops.append((len(hash_ids), alive))
        return tuple(drops)


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
        lru, move = self._lru, self._lru.move_to_end
        if self.index is None:
            for b in hash_ids:
                if b in lru:
                    move(b)
                else:
                    lru[b] = None
        else:  # BlockIndex.add inlined: this loop runs for every block of every request
            holders, bit = self.index.holders, 1 << self.slot
            for b in hash_ids:
                if b in lru:
                    move(b)
                else:
                    lru[b] = None
                    holders[b] = holders.get(b, 0) | bit
        if len(lru) > self.capacity:
            self._evict(self.capacity)

    def resize(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._evict(self.capacity)

    def clear(self) -> None:
        if self.index is not None:
            self.index.clear_slot(self.slot, list(self._lru))
        self._lru.clear()

    def _evict(self, limit: int) -> None:
        lru = self._lru
        pop = lru.popitem
        if self.index is None:
            for _ in range(len(lru) - limit):
                pop(False)
            return
        holders, keep = self.index.holders, ~(1 << self.slot)
        for _ in range(len(lru) - limit):  # BlockIndex.remove inlined
            b = pop(False)[0]
            m = holders.get(b)
            if m is not None:
                m &= keep
                if m:
                    holders[b] = m
                else:
                    del holders[b]

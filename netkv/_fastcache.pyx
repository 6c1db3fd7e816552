# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False
"""The prefix caches of netkv/kvcache.py compiled: the same hits, recency and evictions.

netkv/kvcache.py is the reference (read it for what each method means); this module keeps the
same LRU order and slot bitmasks in C++ containers, for up to 64 slots and block ids that fit a
signed 64-bit integer (simulator/compiled.py falls back to the reference otherwise). Built by
scripts/build_ext.py; tests/test_compiled_core.py holds the two equal.
"""
from libcpp.unordered_map cimport unordered_map
from libcpp.list cimport list as clist
from libc.stdint cimport int64_t, uint64_t
from cython.operator cimport dereference as deref, predecrement as dec

MAX_SLOTS = 64


cdef class BlockIndexCore:
    """hash_id -> bitmask of the slots holding it (kvcache.BlockIndex's own part; the per-slot arrays
    come from kvcache.SlotMasks, joined in simulator/compiled.py as CompiledBlockIndex)."""
    cdef public int n
    cdef unordered_map[int64_t, uint64_t] h
    cdef uint64_t _full

    def __init__(self, int n_slots):
        if not 0 < n_slots <= MAX_SLOTS:
            raise ValueError(f"the compiled index holds 1 to {MAX_SLOTS} slots, not {n_slots}")
        self.n = n_slots
        self._full = (<uint64_t>1 << n_slots) - 1 if n_slots < 64 else <uint64_t>0xFFFFFFFFFFFFFFFF

    cdef inline uint64_t get(self, int64_t b):
        it = self.h.find(b)
        if it == self.h.end():
            return 0
        return deref(it).second

    cdef inline void add_c(self, int slot, int64_t b):
        self.h[b] |= (<uint64_t>1 << slot)

    cdef inline void remove_c(self, int slot, int64_t b):
        it = self.h.find(b)
        if it != self.h.end():
            m = deref(it).second & ~(<uint64_t>1 << slot)
            if m:
                deref(it).second = m
            else:
                self.h.erase(it)

    def add(self, int slot, int64_t block):
        self.add_c(slot, block)

    def remove(self, int slot, int64_t block):
        self.remove_c(slot, block)

    def clear_slot(self, int slot, blocks):
        for b in blocks:
            self.remove_c(slot, b)

    def mask_of(self, int64_t block):
        """Bitmask of the slots holding one block."""
        return self.get(block)

    def prefix_drops(self, hash_ids):
        cdef uint64_t alive = self._full, nxt
        cdef Py_ssize_t j = 0, n = len(hash_ids)
        cdef int64_t b
        drops = []
        for j in range(n):
            b = hash_ids[j]
            nxt = alive & self.get(b)
            if nxt != alive:
                if j:
                    drops.append((j, alive & ~nxt))
                alive = nxt
                if not alive:
                    break
        if alive and n:
            drops.append((n, alive))
        return tuple(drops)


cdef class PrefixCache:
    """An LRU set of blocks mirrored into a compiled index (kvcache.PrefixCache's interface)."""
    cdef public Py_ssize_t capacity
    cdef public int slot
    cdef public object index
    cdef BlockIndexCore _ix
    cdef clist[int64_t] lst
    cdef unordered_map[int64_t, clist[int64_t].iterator] pos

    def __init__(self, Py_ssize_t capacity, int slot=0, index=None):
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        self.capacity = capacity
        self.slot = slot
        if index is not None and not isinstance(index, BlockIndexCore):
            raise TypeError("a compiled PrefixCache mirrors into a compiled BlockIndex")
        self.index = index
        self._ix = index

    def __len__(self):
        return self.pos.size()

    def __contains__(self, int64_t block):
        return self.pos.find(block) != self.pos.end()

    def match(self, hash_ids):
        cdef Py_ssize_t n = 0
        cdef int64_t b
        for b in hash_ids:
            if self.pos.find(b) == self.pos.end():
                break
            n += 1
        return n

    def touch(self, hash_ids):
        cdef int64_t b
        for b in hash_ids:
            it = self.pos.find(b)
            if it != self.pos.end():
                self.lst.splice(self.lst.end(), self.lst, deref(it).second)

    def insert(self, hash_ids):
        cdef int64_t b
        cdef clist[int64_t].iterator last
        if self.capacity == 0:
            return
        for b in hash_ids:
            it = self.pos.find(b)
            if it != self.pos.end():
                self.lst.splice(self.lst.end(), self.lst, deref(it).second)
            else:
                self.lst.push_back(b)
                last = self.lst.end()
                dec(last)
                self.pos[b] = last
                if self._ix is not None:
                    self._ix.add_c(self.slot, b)
        if <Py_ssize_t>self.pos.size() > self.capacity:
            self._evict(self.capacity)

    def resize(self, capacity):
        self.capacity = max(0, capacity)
        self._evict(self.capacity)

    def clear(self):
        if self._ix is not None:
            for b in self.lst:
                self._ix.remove_c(self.slot, b)
        self.lst.clear()
        self.pos.clear()

    cdef void _evict(self, Py_ssize_t limit):
        cdef int64_t b
        while <Py_ssize_t>self.pos.size() > limit:
            b = self.lst.front()
            self.lst.pop_front()
            self.pos.erase(b)
            if self._ix is not None:
                self._ix.remove_c(self.slot, b)

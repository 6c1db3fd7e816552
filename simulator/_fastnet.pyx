# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The flow network of simulator/network.py compiled: the same flows, rates and counters, bit for bit.

simulator/network.py is the reference (read it for what each method means); this module repeats
its float operations in the same order over C++ containers, so that a simulation gives identical
results with either (tests/test_compiled_core.py). Built by scripts/build_ext.py; chosen by
simulator/compiled.py.
"""
import numpy as np

from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from libcpp.algorithm cimport sort as csort
from libc.math cimport isfinite, INFINITY


cdef class Flow:
    """A flow on a routed path (simulator.network.Flow's fields)."""
    cdef public long id
    cdef public object links
    cdef public tuple path
    cdef public double remaining, demand, rate, sent
    cdef public object tag
    cdef vector[int] cpath

    def __init__(self, long id, links, tuple path, double remaining, double demand, double rate=0.0, tag=None,
                 double sent=0.0):
        self.id = id
        self.links = links
        self.path = path
        self.remaining = remaining
        self.demand = demand
        self.rate = rate
        self.tag = tag
        self.sent = sent
        for x in path:
            self.cpath.push_back(x)


cdef class FlowNetworkCore:
    """Max-min fair flows with link byte counters (simulator.network.FlowNetwork's own part; the rest
    comes from network.FlowOps, joined in simulator/compiled.py as CompiledFlowNetwork)."""
    cdef public object capacity, counters, link_rate, link_flows
    cdef public list _cap
    cdef public dict flows, _tracked, finite
    cdef public double t
    cdef public long _next_id, version, recomputes
    cdef vector[double] cap
    cdef vector[vector[long]] on
    cdef double[::1] rate_v
    cdef double[::1] cnt_v
    cdef long[::1] lf_v
    cdef vector[long] mark  # per link: the component walk that last expanded it
    cdef long stamp

    def __init__(self, capacity_bps):
        self.capacity = np.asarray(capacity_bps, dtype=float)
        n = len(self.capacity)
        self._cap = self.capacity.tolist()
        for c in self._cap:
            self.cap.push_back(c)
        self.on.resize(n)
        self.mark.resize(n, 0)
        self.stamp = 0
        self.counters = np.zeros_like(self.capacity)
        self.link_rate = np.zeros_like(self.capacity)
        self.link_flows = np.zeros(n, dtype=np.int64)
        self.rate_v = self.link_rate
        self.cnt_v = self.counters
        self.lf_v = self.link_flows
        self.flows = {}
        self._tracked = {}
        self.finite = {}
        self.t = 0.0
        self._next_id = 0
        self.version = 0
        self.recomputes = 0

    def advance(self, double t):
        cdef double dt = t - self.t
        cdef Py_ssize_t i, n
        cdef Flow f
        if dt > 0:
            if self.flows:
                n = self.cap.size()
                for i in range(n):
                    self.cnt_v[i] = self.cnt_v[i] + self.rate_v[i] * dt
                for f in self.finite.values():
                    f.remaining -= f.rate * dt
                for f in self._tracked.values():
                    f.sent += f.rate * dt
            self.t = t

    def add(self, double t, links, double nbytes, double demand=INFINITY, tag=None, bint track=False):
        cdef Flow f
        cdef int lid
        cdef bint shared = False
        cdef double m
        self.advance(t)
        path = links if type(links) is tuple else tuple(int(x) for x in links)
        f = Flow(self._next_id, np.array(path, dtype=np.int64), path, float(nbytes), demand, tag=tag)
        self._next_id += 1
        self.flows[f.id] = f
        if isfinite(f.remaining):
            self.finite[f.id] = f
        if track:
            self._tracked[f.id] = f
        for lid in f.cpath:
            if self.on[lid].size():
                shared = True
        for lid in f.cpath:
            self.lf_v[lid] += 1
            self.on[lid].push_back(f.id)
        if not shared:
            if f.cpath.size():
                m = INFINITY
                for lid in f.cpath:
                    if self.cap[lid] < m:
                        m = self.cap[lid]
                f.rate = min(m, demand)
            else:
                f.rate = 0.0
            for lid in f.cpath:
                self.rate_v[lid] += f.rate
            self.version += 1
        else:
            self._recompute(self._component([f.id]))
        return f

    def remove_many(self, fids):
        cdef Flow f
        cdef int lid
        cdef Py_ssize_t i, n
        cdef vector[long] touched
        cdef long x
        for fid in list(fids):
            f = self.flows.pop(fid, None)
            if f is None:
                continue
            self._tracked.pop(fid, None)
            self.finite.pop(fid, None)
            for lid in f.cpath:
                self.lf_v[lid] -= 1
            for lid in f.cpath:
                self.rate_v[lid] -= f.rate
            for lid in f.cpath:
                v = &self.on[lid]
                for i in range(<Py_ssize_t>v.size()):
                    if v[0][i] == f.id:
                        v.erase(v.begin() + i)
                        break
                for x in v[0]:
                    touched.push_back(x)
        if touched.size():
            self._recompute(self._component(touched))
        else:
            self.version += 1
        n = self.cap.size()
        for i in range(n):
            if self.lf_v[i] == 0:
                self.rate_v[i] = 0.0

    def _component(self, seeds):
        cdef vector[long] stack
        cdef vector[long] out
        cdef unordered_map[long, char] seen
        cdef long fid, g
        cdef int lid
        cdef Flow f
        self.stamp += 1
        for fid in seeds:
            if seen.count(fid) == 0:
                seen[fid] = 1
                stack.push_back(fid)
        while stack.size():
            fid = stack.back()
            stack.pop_back()
            fo = self.flows.get(fid)
            if fo is None:
                continue
            f = fo
            for lid in f.cpath:
                if self.mark[lid] == self.stamp:
                    continue
                self.mark[lid] = self.stamp
                for g in self.on[lid]:
                    if seen.count(g) == 0:
                        seen[g] = 1
                        stack.push_back(g)
        for it in seen:
            if it.first in self.flows:
                out.push_back(it.first)
        csort(out.begin(), out.end())
        return out

    def _recompute(self, fids=None):
        cdef list fl
        cdef Flow f
        cdef Py_ssize_t k, F
        cdef double d
        cdef int lid
        cdef vector[double] delta  # per link: the summed rate change, in flow order (as the reference)
        cdef vector[int] dl  # the links changed, in first-change order
        cdef vector[char] has
        self.version += 1
        self.recomputes += 1
        fl = list(self.flows.values()) if fids is None else [self.flows[i] for i in fids]
        if not fl:
            return
        rates = _maxmin(fl, self.cap)
        delta.resize(self.cap.size(), 0.0)
        has.resize(self.cap.size(), 0)
        F = len(fl)
        for k in range(F):
            f = fl[k]
            d = rates[k] - f.rate
            if d:
                f.rate = rates[k]
                for lid in f.cpath:
                    if not has[lid]:
                        has[lid] = 1
                        dl.push_back(lid)
                        delta[lid] = 0.0 + d
                    else:
                        delta[lid] = delta[lid] + d
        for lid in dl:
            self.rate_v[lid] = self.rate_v[lid] + delta[lid]

    def next_completion(self):
        cdef Flow f, bf = None
        cdef double t, bt = 0.0, rem
        for f in self.finite.values():
            if f.rate > 0:
                rem = f.remaining if f.remaining > 0.0 else 0.0
                t = self.t + rem / f.rate
                if bf is None or t < bt:
                    bt = t
                    bf = f
        return None if bf is None else (bt, bf)


cdef vector[double] _maxmin(list fl, vector[double]& capacity):
    """simulator.maxmin.maxmin_list over Flow objects: the same operations in the same order (links
    in first-use order, ties to the first); no memo, since it would return what this computes."""
    cdef Py_ssize_t F = len(fl), f, i, j
    cdef vector[double] rate, dem, rem
    cdef vector[int] n, order  # per used link in first-use order: rising flows, link id
    cdef vector[int] linkpos  # link id -> its position in `order` (-1: unused)
    cdef vector[char] rising
    cdef Py_ssize_t nrising = 0
    cdef Flow fo
    cdef int lk, lk_min
    cdef double share, s, dmin
    cdef bint capped = False
    cdef vector[vector[int]] onl
    cdef vector[int] frozen
    rate.resize(F, 0.0)
    rising.resize(F, 0)
    linkpos.resize(capacity.size(), -1)
    for f in range(F):
        fo = fl[f]
        dem.push_back(fo.demand)
        if fo.cpath.size() == 0:
            rate[f] = fo.demand if isfinite(fo.demand) else 0.0
            continue
        rising[f] = 1
        nrising += 1
        for lk in fo.cpath:
            if linkpos[lk] >= 0:
                n[linkpos[lk]] += 1
                onl[linkpos[lk]].push_back(f)
            else:
                linkpos[lk] = order.size()
                order.push_back(lk)
                rem.push_back(capacity[lk])
                n.push_back(1)
                onl.push_back(vector[int]())
                onl.back().push_back(f)
    for f in range(F):
        if rising[f] and isfinite(dem[f]):
            capped = True
    while nrising:
        share = INFINITY
        lk_min = -1
        for i in range(<Py_ssize_t>order.size()):
            if n[i] > 0:
                s = rem[i] / n[i]
                if lk_min < 0 or s < share:
                    share = s
                    lk_min = i
        dmin = INFINITY
        if capped:
            for f in range(F):
                if rising[f] and dem[f] < dmin:
                    dmin = dem[f]
        frozen.clear()
        if dmin <= share:
            share = dmin
            for f in range(F):
                if rising[f] and dem[f] <= share:
                    frozen.push_back(f)
        else:
            for f in onl[lk_min]:
                if rising[f]:
                    frozen.push_back(f)
        if share < 0.0:
            share = 0.0
        for f in frozen:
            rate[f] = share
            rising[f] = 0
            nrising -= 1
            fo = fl[f]
            for lk in fo.cpath:
                j = linkpos[lk]
                rem[j] -= share
                n[j] -= 1
    return rate

"""Network cost oracles: what moving N bytes from instance p to instance d costs now.

Protocol: `cost(src, dst, nbytes) -> (seconds, age)` and the vectorised `cost_row(src, dsts, nbytes)
-> (seconds array, age)`, where age is how old the telemetry behind the answer is (None when no
telemetry is used). Hosts are topology host indices; bytes and seconds are real-cluster units.

- StaticOracle: bytes / bottleneck capacity of the routed path (tiers and capacities only).
- CounterOracle: per-link rates from sampled byte counters (a `Snapshot`), residual bandwidth
  = capacity - measured rate [- the scheduler's own committed transfers the counters cannot show yet],
  never below `floor_fraction` x capacity; seconds = bytes / bottleneck residual of the routed path.
  A link reported down has no residual: pairs still routed over it cost infinity.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ..topology import FatTree, Routing


class Oracle(Protocol):
    def cost(self, src: int, dst: int, nbytes: float) -> tuple[float, float | None]: ...

    def cost_row(self, src: int, dsts: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, float | None]: ...


@dataclass
class Snapshot:
    """Telemetry at one sampling instant: per directed link rate in real bytes/s."""

    sampled_at: float
    rates: np.ndarray
    down: frozenset[int] = field(default_factory=frozenset)
    version: int = 0


class _PathCache:
    """LRU of routed path rows keyed by (src, destinations, routing state)."""

    def __init__(self, routing: Routing, size: int = 512):
        self.routing = routing
        self.size = size
        self._c: OrderedDict = OrderedDict()

    def row(self, src: int, dsts: np.ndarray) -> np.ndarray:
        key = (src, id(dsts), len(dsts), frozenset(self.routing.down))
        hit = self._c.get(key)
        if hit is not None and hit[0] is dsts:
            self._c.move_to_end(key)
            return hit[1]
        paths = self.routing.path_row(src, dsts)
        self._c[key] = (dsts, paths)
        if len(self._c) > self.size:
            self._c.popitem(last=False)
        return paths


def _row_seconds(paths: np.ndarray, bw_ext: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """bytes / bottleneck over each path row; bw_ext[-1] is +inf padding for -1 entries."""
    bottleneck = bw_ext[paths].min(axis=1)
    unreachable = paths[:, -1] < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        sec = np.where(nbytes > 0, nbytes / bottleneck, 0.0)
    sec[unreachable] = math.inf
    return sec


class StaticOracle:
    """Transfer time from path capacities alone."""

    name = "static"

    def __init__(self, topo: FatTree, routing: Routing):
        self.topo = topo
        self.routing = routing
        self._bw = np.append(topo.capacity_bps, math.inf)
        self._paths = _PathCache(routing)

    def cost_row(self, src, dsts, nbytes):
        return _row_seconds(self._paths.row(src, dsts), self._bw, np.asarray(nbytes, dtype=float)), None

    def cost(self, src, dst, nbytes):
        sec, age = self.cost_row(src, np.array([dst]), np.array([float(nbytes)]))
        return float(sec[0]), age


@dataclass
class _Committed:
    links: np.ndarray
    rate: float  # bytes/s the scheduler expects the transfer to take
    started_at: float | None = None


class CounterOracle:
    """Transfer time from the residual bandwidth that sampled port counters show."""

    name = "counters"

    def __init__(self, topo: FatTree, routing: Routing, source: Callable[[], Snapshot | None],
                 clock: Callable[[], float], floor_fraction: float = 0.02,
                 count_committed: bool = True):
        self.topo = topo
        self.routing = routing
        self.source = source
        self.clock = clock
        self.floor = floor_fraction * topo.capacity_bps
        self.count_committed = count_committed
        self.committed: dict[object, _Committed] = {}
        self._static = StaticOracle(topo, routing)
        self._paths = _PathCache(routing)
        self._version = 0  # bumped whenever the committed set changes
        self._cache_key = None
        self._cache_bw = None

    # ---- the scheduler's own transfers -------------------------------------------------------
    def commit(self, key, src: int, dst: int, nbytes: float, est_seconds: float) -> None:
        """Record a transfer the scheduler has just decided on (counted until it shows in counters)."""
        if not self.count_committed or nbytes <= 0:
            return
        links = np.array(self.routing.path(src, dst), dtype=np.int64)
        rate = nbytes / est_seconds if est_seconds > 0 and math.isfinite(est_seconds) else 0.0
        self.committed[key] = _Committed(links, rate)
        self._version += 1

    def started(self, key, t: float) -> None:
        c = self.committed.get(key)
        if c is not None:
            c.started_at = t
            self._version += 1

    def release(self, key) -> None:
        if self.committed.pop(key, None) is not None:
            self._version += 1

    # ---- queries -----------------------------------------------------------------------------
    def residual(self, snap: Snapshot) -> np.ndarray:
        """Residual bandwidth per link (real bytes/s) behind a snapshot, committed load included."""
        cap = self.topo.capacity_bps
        bw = cap - snap.rates
        if self.committed:
            unseen = np.zeros_like(bw)
            for c in self.committed.values():
                if c.started_at is None or c.started_at > snap.sampled_at:
                    np.add.at(unseen, c.links, c.rate)
            bw = bw - unseen
        bw = np.maximum(bw, self.floor)
        if snap.down:
            bw[list(snap.down)] = 0.0
        return bw

    def cost_row(self, src, dsts, nbytes):
        snap = self.source()
        if snap is None:
            sec, _ = self._static.cost_row(src, dsts, nbytes)
            return sec, None
        key = (id(snap), snap.version, self._version)
        if self._cache_key != key:
            self._cache_bw = np.append(self.residual(snap), math.inf)
            self._cache_key = key
        sec = _row_seconds(self._paths.row(src, dsts), self._cache_bw, np.asarray(nbytes, dtype=float))
        return sec, max(0.0, self.clock() - snap.sampled_at)

    def cost(self, src, dst, nbytes):
        sec, age = self.cost_row(src, np.array([dst]), np.array([float(nbytes)]))
        return float(sec[0]), age

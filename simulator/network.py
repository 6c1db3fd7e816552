"""Flow-level network: flows on routed paths, max-min rates, per-link byte counters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .maxmin import maxmin_rates


@dataclass(slots=True)
class Flow:
    id: int
    links: np.ndarray
    remaining: float  # bytes (inf for background flows that end by an explicit stop)
    demand: float  # bytes/s cap (inf = elastic)
    rate: float = 0.0
    tag: object = None


class FlowNetwork:
    """Flows share link capacity max-min fairly; rates are recomputed at every start and end.

    Link byte counters integrate the piecewise-constant link rates, like switch port counters.
    """

    def __init__(self, capacity_bps: np.ndarray):
        self.capacity = np.asarray(capacity_bps, dtype=float)
        self.counters = np.zeros_like(self.capacity)  # bytes sent per directed link
        self.link_rate = np.zeros_like(self.capacity)
        self.flows: dict[int, Flow] = {}
        self.t = 0.0
        self._next_id = 0
        self.version = 0  # bumps whenever rates change (invalidates scheduled completions)
        self.recomputes = 0

    def advance(self, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            if self.flows:
                self.counters += self.link_rate * dt
                for f in self.flows.values():
                    f.remaining -= f.rate * dt
            self.t = t

    def add(self, t: float, links, nbytes: float, demand: float = math.inf, tag=None) -> Flow:
        self.advance(t)
        f = Flow(self._next_id, np.asarray(links, dtype=np.int64), float(nbytes), demand, tag=tag)
        self._next_id += 1
        self.flows[f.id] = f
        self._recompute()
        return f

    def remove(self, t: float, fid: int) -> Flow | None:
        self.advance(t)
        f = self.flows.pop(fid, None)
        if f is not None:
            self._recompute()
        return f

    def remove_many(self, fids) -> None:
        """Remove several flows at the current time with one rate recomputation."""
        for fid in list(fids):
            self.flows.pop(fid, None)
        self._recompute()

    def _recompute(self) -> None:
        self.version += 1
        self.recomputes += 1
        self.link_rate[:] = 0.0
        if not self.flows:
            return
        fl = list(self.flows.values())
        rates = maxmin_rates([f.links for f in fl], self.capacity, np.array([f.demand for f in fl]))
        for f, r in zip(fl, rates):
            f.rate = float(r)
            np.add.at(self.link_rate, f.links, f.rate)

    def next_completion(self) -> tuple[float, Flow] | None:
        """Time and flow of the earliest finishing finite flow at current rates."""
        best = None
        for f in self.flows.values():
            if math.isfinite(f.remaining) and f.rate > 0:
                t = self.t + max(f.remaining, 0.0) / f.rate
                if best is None or t < best[0]:
                    best = (t, f)
        return best

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
        self.link_flows = np.zeros(len(self.capacity), dtype=np.int64)  # flows crossing each link
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
        if not self.link_flows[f.links].any():
            # shares no link with any flow: nobody else's rate changes
            f.rate = float(min(self.capacity[f.links].min(), demand))
            self.link_flows[f.links] += 1
            self.link_rate[f.links] += f.rate
            self.version += 1
        else:
            self.link_flows[f.links] += 1
            self._recompute()
        return f

    def remove(self, t: float, fid: int) -> Flow | None:
        self.advance(t)
        f = self.flows.get(fid)
        if f is not None:
            self.remove_many([fid])
        return f

    def remove_many(self, fids) -> None:
        """Remove flows at the current time; rates are recomputed once, and only if others shared a link."""
        shared = False
        for fid in list(fids):
            f = self.flows.pop(fid, None)
            if f is None:
                continue
            self.link_flows[f.links] -= 1
            if self.link_flows[f.links].any():
                shared = True
            else:
                self.link_rate[f.links] -= f.rate
        if shared:
            self._recompute()
        else:
            self.version += 1
            if not self.flows:
                self.link_rate[:] = 0.0

    def _recompute(self) -> None:
        self.version += 1
        self.recomputes += 1
        self.link_rate[:] = 0.0
        if not self.flows:
            return
        fl = list(self.flows.values())
        links = [f.links for f in fl]
        rates = maxmin_rates(links, self.capacity, np.array([f.demand for f in fl]))
        for f, r in zip(fl, rates):
            f.rate = float(r)
        lens = [len(x) for x in links]
        np.add.at(self.link_rate, np.concatenate(links), np.repeat(rates, lens))

    def next_completion(self) -> tuple[float, Flow] | None:
        """Time and flow of the earliest finishing finite flow at current rates."""
        best = None
        for f in self.flows.values():
            if math.isfinite(f.remaining) and f.rate > 0:
                t = self.t + max(f.remaining, 0.0) / f.rate
                if best is None or t < best[0]:
                    best = (t, f)
        return best

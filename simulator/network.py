"""Flow-level network: flows on routed paths, max-min rates, per-link byte counters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netkv.simulator.maxmin import maxmin_list


@dataclass(slots=True)
class Flow:
    id: int
    links: np.ndarray
    path: tuple[int, ...]  # the same link ids as a tuple (Python-side loops)
    remaining: float  # bytes (inf for background flows that end by an explicit stop)
    demand: float  # bytes/s cap (inf = elastic)
    rate: float = 0.0
    tag: object = None
    sent: float = 0.0  # bytes delivered so far (kept for tracked flows only)


class FlowOps:
    """What the flow network and its compiled twin (simulator/_fastnet.pyx, joined in
    simulator/compiled.py) share, built on their `add`, `remove_many`, `advance`, `flows`,
    `_tracked`, `_cap` (capacity per link, a list) and `link_rate`."""

    def remove(self, t: float, fid: int) -> Flow | None:
        self.advance(t)
        f = self.flows.get(fid)
        if f is not None:
            self.remove_many([fid])
        return f

    def reroute(self, t: float, fid: int, links) -> Flow:
        """Move a flow onto other links (a link failed or came back): its remaining bytes, demand,
        tag and delivered count carry over to the returned flow (a new id)."""
        self.advance(t)
        old = self.flows[fid]
        track = fid in self._tracked
        self.remove_many([fid])
        f = self.add(t, links, old.remaining, old.demand, tag=old.tag, track=track)
        f.sent = old.sent
        return f

    def train_rate(self, links) -> float:
        """The rate at which a packet train sent back to back along `links` comes out (its
        dispersion), by the fluid model of FIFO links: where the train (rate r in) and the link's
        other traffic (X) exceed its capacity C, the two interleave and the train leaves at
        C r / (r + X); elsewhere it passes unchanged (Melander, Bjorkman, Gunningberg, "A new end-to-end
        probing and analysis method for estimating bandwidth bottlenecks", GLOBECOM 2000; Dovrolis et
        al., IEEE/ACM ToN 2004). Sent at an unbounded rate, it leaves its first link back to back."""
        r = math.inf
        for lid in links:
            c = self._cap[int(lid)]
            x = min(float(self.link_rate[int(lid)]), c)
            if r + x > c:
                r = c if math.isinf(r) else c * r / (r + x)
        return r


class FlowNetwork(FlowOps):
    """Flows share link capacity max-min fairly; rates are recomputed at every start and end.

    Link byte counters integrate the piecewise-constant link rates, like switch port counters.
    """

    MEMO = 8192  # max-min results kept (components seen recently)

    def __init__(self, capacity_bps: np.ndarray):
        self.capacity = np.asarray(capacity_bps, dtype=float)
        self._cap = self.capacity.tolist()
        self.counters = np.zeros_like(self.capacity)  # bytes sent per directed link
        self.link_rate = np.zeros_like(self.capacity)
        self.link_flows = np.zeros(len(self.capacity), dtype=np.int64)  # flows crossing each link
        self._on_link: list[set[int]] = [set() for _ in range(len(self.capacity))]  # flow ids per link
        self.flows: dict[int, Flow] = {}
        self._tracked: dict[int, Flow] = {}  # flows whose delivered bytes are integrated (background)
        self.finite: dict[int, Flow] = {}  # flows with a finite number of bytes to send (in `flows` order)
        self.t = 0.0
        self._next_id = 0
        self.version = 0  # bumps whenever rates change (invalidates scheduled completions)
        self.recomputes = 0
        self._memo: dict[tuple, list[float]] = {}

    def advance(self, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            if self.flows:
                self.counters += self.link_rate * dt
                for f in self.finite.values():  # the others' remaining stays inf
                    f.remaining -= f.rate * dt
                for f in self._tracked.values():
                    f.sent += f.rate * dt
            self.t = t

    def add(self, t: float, links, nbytes: float, demand: float = math.inf, tag=None, track: bool = False) -> Flow:
        self.advance(t)
        path = links if type(links) is tuple else tuple(int(x) for x in links)
        f = Flow(self._next_id, np.array(path, dtype=np.int64), path, float(nbytes), demand, tag=tag)
        self._next_id += 1
        self.flows[f.id] = f
        if math.isfinite(f.remaining):
            self.finite[f.id] = f
        if track:
            self._tracked[f.id] = f
        on = self._on_link
        shared = any(on[lid] for lid in path)
        self.link_flows[f.links] += 1
        for lid in path:
            on[lid].add(f.id)
        if not shared:
            # shares no link with any flow: nobody else's rate changes
            f.rate = float(min(min(self._cap[lid] for lid in path), demand)) if path else 0.0
            self.link_rate[f.links] += f.rate
            self.version += 1
        else:
            self._recompute(self._component([f.id]))
        return f

    def remove_many(self, fids) -> None:
        """Remove flows at the current time; only the flows that shared a link with them (their
        connected component) get new rates."""
        touched: set[int] = set()
        for fid in list(fids):
            f = self.flows.pop(fid, None)
            if f is None:
                continue
            self._tracked.pop(fid, None)
            self.finite.pop(fid, None)
            self.link_flows[f.links] -= 1
            self.link_rate[f.links] -= f.rate
            for lid in f.path:
                self._on_link[lid].discard(fid)
                touched.update(self._on_link[lid])
        if touched:
            self._recompute(self._component(touched))
        else:
            self.version += 1
        self.link_rate[self.link_flows == 0] = 0.0  # no drift on idle links

    def _component(self, seeds) -> list[int]:
        """Flow ids connected to the seeds through shared links (their rates are coupled)."""
        flows, on = self.flows, self._on_link
        seen = set(seeds)
        stack = list(seeds)
        links: set[int] = set()  # links whose flows are all in `seen` already (flows share links a lot)
        while stack:
            f = flows.get(stack.pop())
            if f is None:
                continue
            for lid in f.path:
                if lid in links:
                    continue
                links.add(lid)
                new = on[lid] - seen
                if new:
                    seen |= new
                    stack.extend(new)
        return sorted(fid for fid in seen if fid in flows)  # by id: one order (and memo key) per set

    def _recompute(self, fids: list[int] | None = None) -> None:
        """Max-min rates for the given flows (default: all); flows outside share no link with them."""
        self.version += 1
        self.recomputes += 1
        fl = list(self.flows.values()) if fids is None else [self.flows[i] for i in fids]
        if not fl:
            return
        # the same component recurs (on/off elephants and one transfer on the same path): memoised,
        # exact, since the rates depend on the paths, capacities and demands alone
        key = tuple((f.path, f.demand) for f in fl)
        rates = self._memo.get(key)
        if rates is None:
            rates = maxmin_list([f.path for f in fl], self._cap, [f.demand for f in fl])
            if len(self._memo) >= self.MEMO:
                self._memo.clear()
            self._memo[key] = rates
        delta: dict[int, float] = {}  # link rate change from the flows whose rate changed
        for f, r in zip(fl, rates):
            d = r - f.rate
            if d:
                f.rate = r
                for lid in f.path:
                    delta[lid] = delta.get(lid, 0.0) + d
        if delta:
            self.link_rate[list(delta)] += list(delta.values())

    def next_completion(self) -> tuple[float, Flow] | None:
        """Time and flow of the earliest finishing finite flow at current rates."""
        best = None
        for f in self.finite.values():
            if f.rate > 0:
                t = self.t + max(f.remaining, 0.0) / f.rate
                if best is None or t < best[0]:
                    best = (t, f)
        return best

"""Network cost oracles: what moving N bytes from instance p to instance d costs now.

Protocol: `cost(src, dst, nbytes) -> (seconds, age)` and the vectorised `cost_row(src, dsts, nbytes)
-> (seconds array, age)`, where age is how old the telemetry behind the answer is (None when no
telemetry is used). Hosts are topology host indices; bytes and seconds are real-cluster units.

- StaticOracle: bytes / bottleneck capacity of the routed path (tiers and capacities only).
- CounterOracle: per-link rates from sampled byte counters (a `Snapshot`), residual bandwidth
  = capacity - measured rate [- the scheduler's own committed transfers the counters cannot show yet],
  never below `floor_fraction` x capacity; seconds = bytes / bottleneck residual of the routed path.
  A link reported down has no residual: pairs still routed over it cost infinity.
- FairShareOracle: the rate a new flow would get under max-min sharing (counters + the scheduler's
  own transfers; see the class).
All add the path's latency (per link: hop latency + one packet's serialization), as the flow model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from netkv.registry import Registry
from netkv.topology import FatTree, NoPathError, Routing

ORACLES: Registry[type] = Registry("oracle")


class Oracle:
    """The interface every oracle offers. `at`: when the transfer is expected to start
    (real-cluster seconds; None = now).

    The scheduler tells every oracle about its own transfers (`commit` when decided, `started`,
    `release` when the KV arrived or the request failed); an oracle without use for them ignores
    them. `uses_telemetry`: the oracle reads snapshots (the drivers poll or fetch them only then);
    `clock`: real-cluster now, or None for an oracle that does not look at time."""

    name = "base"
    uses_telemetry = False
    clock: Callable[[], float] | None = None

    @classmethod
    def from_config(
        cls, topo: FatTree, routing: Routing, te, source: Callable[[], Snapshot | None], clock: Callable[[], float]
    ) -> Oracle:
        """The oracle for a [telemetry] section (`netkv.config.TelemetryCfg`)."""
        raise NotImplementedError

    def cost(self, src: int, dst: int, nbytes: float, at: float | None = None) -> tuple[float, float | None]:
        raise NotImplementedError

    def cost_row(
        self, src: int, dsts: np.ndarray, nbytes: np.ndarray, at: float | None = None
    ) -> tuple[np.ndarray, float | None]:
        raise NotImplementedError

    def commit(self, key, src: int, dst: int, nbytes: float, est_seconds: float, start: float | None = None) -> None:
        """The scheduler has decided on a transfer expected to start at `start`."""

    def started(self, key, t: float) -> None:
        """The transfer `key` started at `t`."""

    def release(self, key) -> None:
        """The transfer `key` ended (or its request failed)."""


@dataclass
class Snapshot:
    """Telemetry as published: per directed link rate in real bytes/s, and when each link's sample
    was taken (`link_sampled_at`, real-cluster seconds, NaN for never; None: all at `sampled_at`).
    `sampled_at` is the oldest sample's time."""

    sampled_at: float
    rates: np.ndarray
    down: frozenset[int] = field(default_factory=frozenset)
    version: int = 0
    link_sampled_at: np.ndarray | None = None

    def path_sampled_at(self, links) -> float:
        """When the oldest sample on these links was taken (what a decision over them relied on)."""
        if self.link_sampled_at is None or len(links) == 0:
            return self.sampled_at
        t = self.link_sampled_at.take(links)
        oldest = np.minimum.reduce(t)  # NaN if any link was never sampled: then the oldest of the others
        if oldest == oldest:
            return float(oldest)
        return float(np.nanmin(t)) if np.isfinite(t).any() else self.sampled_at


class _RowCache:
    """Bottleneck bandwidth of the routed paths from one source to a fixed array of destinations.

    Rows are keyed by (src, destination array) and recomputed when the routing state or the
    bandwidth array (identified by `bw_key`) changes; an LRU bounds memory for large clusters.
    """

    def __init__(self, routing: Routing, size: int = 256):
        self.routing = routing
        self.size = size
        self._c: OrderedDict = OrderedDict()
        self._lat = np.append(routing.topo.latency_s, 0.0)  # per link, padded for the -1 of short paths

    def bottleneck(self, src: int, dsts: np.ndarray, bw_ext: np.ndarray, bw_key) -> np.ndarray:
        key = (src, id(dsts), len(dsts))
        ent = self._c.get(key)
        route_key = self.routing.version
        if ent is None or ent[0] is not dsts or ent[1] != route_key:
            paths = self.routing.path_row(src, dsts)
            dead = paths[:, -1] < 0  # unreachable
            ent = [dsts, route_key, paths, None, None, self._lat[paths].sum(axis=1), dead if dead.any() else None]
            self._c[key] = ent
            if len(self._c) > self.size:
                self._c.popitem(last=False)
        else:
            self._c.move_to_end(key)
        if ent[3] != bw_key:
            b = np.minimum.reduce(bw_ext.take(ent[2]), axis=1)
            if ent[6] is not None:
                b[ent[6]] = 0.0
            ent[3], ent[4] = bw_key, (b, bool(np.minimum.reduce(b) <= 0), ent[5])
        return ent[4]


def _row_seconds(bottleneck: tuple[np.ndarray, bool, np.ndarray], nbytes: np.ndarray) -> np.ndarray:
    """nbytes / bottleneck + the path's latency; no bytes cost nothing, bytes over a dead path cost
    infinity."""
    b, has_dead, lat = bottleneck
    if not has_dead:
        return nbytes / b + np.where(nbytes > 0, lat, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sec = nbytes / b + lat
    sec[nbytes <= 0] = 0.0  # 0 bytes (also over a dead path)
    return sec


def _path_seconds(routing: Routing, src: int, dst: int, nbytes: float, bw_ext: np.ndarray, links=None) -> float:
    """Scalar version of the row computation for one routed pair (`links`: its routed path, if known)."""
    if nbytes <= 0:
        return 0.0
    if links is None:
        try:
            links = routing.path(src, dst)
        except NoPathError:
            return math.inf
    elif not links:
        return math.inf
    bottleneck = min(bw_ext[lid] for lid in links)
    return float(nbytes / bottleneck) + routing.path_latency(links) if bottleneck > 0 else math.inf


@ORACLES.register(order=1)
class StaticOracle(Oracle):
    """Transfer time from path capacities alone."""

    name = "static"

    @classmethod
    def from_config(cls, topo, routing, te, source, clock) -> StaticOracle:
        return cls(topo, routing)

    def __init__(self, topo: FatTree, routing: Routing):
        self.topo = topo
        self.routing = routing
        self._bw = np.append(topo.capacity_bps, math.inf)
        self._rows = _RowCache(routing)

    def cost_row(self, src, dsts, nbytes, at=None):
        return _row_seconds(self._rows.bottleneck(src, dsts, self._bw, 0), nbytes), None

    def cost(self, src, dst, nbytes, at=None):
        return _path_seconds(self.routing, src, dst, nbytes, self._bw), None


@dataclass
class _Committed:
    links: np.ndarray
    rate: float  # bytes/s the scheduler expects the transfer to take
    start: float | None  # expected (then actual) start of the transfer
    duration: float
    started_at: float | None = None


@ORACLES.register(order=0)
class CounterOracle(Oracle):
    """Transfer time from the residual bandwidth that sampled port counters show."""

    name = "counters"
    uses_telemetry = True

    @classmethod
    def from_config(cls, topo, routing, te, source, clock) -> CounterOracle:
        return cls(topo, routing, source, clock, te.floor_fraction, te.count_committed)

    def __init__(
        self,
        topo: FatTree,
        routing: Routing,
        source: Callable[[], Snapshot | None],
        clock: Callable[[], float],
        floor_fraction: float = 0.25,
        count_committed: bool = True,
    ):
        self.topo = topo
        self.routing = routing
        self.source = source
        self.clock = clock
        self.floor = floor_fraction * topo.capacity_bps
        self.count_committed = count_committed
        self.committed: dict[object, _Committed] = {}
        self._static = StaticOracle(topo, routing)
        self._rows = _RowCache(routing)
        self._version = 0  # bumped whenever the committed set changes
        self._cache_key = None
        self._cache_bw = None
        self._asked: tuple | None = None  # the inputs of the last _current call
        self._plain = type(self).residual is CounterOracle.residual  # a subclass may count committed ones otherwise

    # ---- the scheduler's own transfers -------------------------------------------------------
    def commit(self, key, src: int, dst: int, nbytes: float, est_seconds: float, start: float | None = None) -> None:
        """Record a transfer the scheduler has just decided on, expected to start at `start`.

        Until the counters can show it, it loads its path in the estimates of other transfers
        expected to run at the same time: not started yet -> counted for transfers whose start falls
        in [start, start + est_seconds]; started after the snapshot was sampled -> counted.
        """
        if not self.count_committed or nbytes <= 0:
            return
        links = self.routing.path_array(src, dst)
        ok = est_seconds > 0 and math.isfinite(est_seconds)
        rate = nbytes / est_seconds if ok else 0.0
        self.committed[key] = _Committed(links, rate, start, est_seconds if ok else 0.0)
        self._version += 1

    def started(self, key, t: float) -> None:
        c = self.committed.get(key)
        if c is not None:
            c.started_at = t
            c.start = t
            self._version += 1

    def release(self, key) -> None:
        if self.committed.pop(key, None) is not None:
            self._version += 1

    # ---- queries -----------------------------------------------------------------------------
    def _unseen(self, snap: Snapshot, at: float | None) -> list[tuple[np.ndarray, float]]:
        """(links, rate) of the committed transfers that will overlap one starting at `at` (None: now)
        and that the snapshot does not show yet."""
        out = []
        per_link = snap.link_sampled_at
        for c in self.committed.values():
            lk = c.links
            if c.started_at is not None:
                # in flight: counted on the links whose sample predates its start
                if per_link is None:
                    use = c.started_at > snap.sampled_at
                else:
                    t = per_link[lk]
                    lk = lk[~(t >= c.started_at)]  # NaN (never sampled) counts as before
                    use = len(lk) > 0
            else:
                use = at is None or c.start is None or c.start <= at <= c.start + c.duration
            if use:
                out.append((lk, c.rate))
        return out

    def residual(self, snap: Snapshot, at: float | None = None, unseen=None) -> np.ndarray:
        """Residual bandwidth per link (real bytes/s) behind a snapshot, for a transfer starting at
        `at` (None: now), with the committed transfers that will overlap it and are not yet visible
        (`unseen`: those, if already known)."""
        cap = self.topo.capacity_bps
        bw = cap - snap.rates
        if unseen is None:
            unseen = self._unseen(snap, at) if self.committed else []
        if unseen:
            links = np.concatenate([lk for lk, _ in unseen])
            rates = np.concatenate([np.full(len(lk), r) for lk, r in unseen])
            bw = bw - np.bincount(links, rates, minlength=len(cap))
        bw = np.maximum(bw, self.floor)
        if snap.down:
            bw[list(snap.down)] = 0.0
        return bw

    def _current(self, at: float | None = None) -> tuple[Snapshot | None, np.ndarray | None]:
        """The latest published snapshot and its residual bandwidth (+inf padded), cached."""
        snap = self.source()
        if snap is None:
            return None, None
        asked = (id(snap), snap.version, self._version, at)
        if asked == self._asked:  # the same question again (a decision's row, then its chosen pair)
            return snap, self._cache_bw
        self._asked = asked
        if self._plain:
            # the residual depends on the snapshot and the committed transfers it does not show: when
            # none is to be counted (most decisions), on the snapshot alone, and so do the cached rows
            unseen = self._unseen(snap, at) if self.committed else []
            key = (id(snap), snap.version, self._version, at) if unseen else (id(snap), snap.version)
        else:
            key = (id(snap), snap.version, self._version, at if self.committed else None)
        if self._cache_key != key:
            r = self.residual(snap, at, unseen) if self._plain else self.residual(snap, at)
            bw = np.empty(len(r) + 1)  # +inf padded for the -1 of short paths
            bw[:-1] = r
            bw[-1] = math.inf
            self._cache_bw = bw
            self._cache_key = key
        return snap, self._cache_bw

    def cost_row(self, src, dsts, nbytes, at: float | None = None):
        snap, bw = self._current(at)
        if snap is None:
            return self._static.cost_row(src, dsts, nbytes)
        sec = _row_seconds(self._rows.bottleneck(src, dsts, bw, self._cache_key), nbytes)
        return sec, max(0.0, self.clock() - snap.sampled_at)  # the age of the snapshot's oldest sample

    def cost(self, src, dst, nbytes, at: float | None = None):
        """Seconds for the transfer, and the age of the oldest sample on its path."""
        snap, bw = self._current(at)
        if snap is None:
            return self._static.cost(src, dst, nbytes)
        try:
            links = self.routing.path_array(src, dst)
        except NoPathError:
            links = np.zeros(0, dtype=np.int64)
        sec = _path_seconds(self.routing, src, dst, nbytes, bw, links.tolist())
        return sec, max(0.0, self.clock() - snap.path_sampled_at(links))


@ORACLES.register(order=2)
class FairShareOracle(CounterOracle):
    """Transfer time at the rate a new flow would get under max-min sharing, not at the residual.

    Per link, n = the scheduler's own transfers on it (in flight, or expected to overlap the new one)
    + one flow of other tenants when the counters show load its own transfers visible in them do not
    explain (more than `FOREIGN_MIN` x capacity). A new flow gets at least capacity / (n + 1) (the
    elastic flows make room for it) and at least the residual (flows held back elsewhere leave it
    that much); the floor of `counters` is not used. Other tenants' flows are counted as one: several
    elephants on one link make this estimate optimistic."""

    name = "fair_share"
    FOREIGN_MIN = 0.05

    def residual(self, snap: Snapshot, at: float | None = None) -> np.ndarray:
        cap = self.topo.capacity_bps
        own_n, visible, hidden = np.zeros(len(cap)), np.zeros(len(cap)), np.zeros(len(cap))
        per_link = snap.link_sampled_at
        for c in self.committed.values():
            lk = c.links
            if c.started_at is not None:  # in flight: in the counters of links sampled after its start
                if per_link is None:
                    seen = np.full(len(lk), snap.sampled_at >= c.started_at)
                else:
                    seen = per_link[lk] >= c.started_at  # NaN (never sampled): not seen
                np.add.at(visible, lk[seen], c.rate)
                np.add.at(hidden, lk[~seen], c.rate)
            elif at is None or c.start is None or c.start <= at <= c.start + c.duration:
                np.add.at(hidden, lk, c.rate)
            else:
                continue
            np.add.at(own_n, lk, 1.0)
        foreign = (snap.rates - visible) > self.FOREIGN_MIN * cap
        bw = np.maximum(cap - snap.rates - hidden, cap / (own_n + foreign + 1.0))
        if snap.down:
            bw[list(snap.down)] = 0.0
        return bw


@ORACLES.register(order=3)
class ProbeOracle(Oracle):
    """Transfer time from the bandwidth that packet trains measured on the pair's own path.

    A prober sends a short train of back-to-back packets from a prefill host to a decode host, the
    pairs in turn; the receiver's spacing of the train (asymptotic dispersion rate: (N - 1) packets
    over the time between the first and the last arrival) is what the path gave it. Emulated, the
    prober builds the trains with scapy inside the fabric (netkv.agents.prober); simulated, the
    flow model gives the train's dispersion through the path's links at their load then (the fluid
    model of FIFO links: simulator.network.FlowNetwork.train_rate). A pair measured at least once costs bytes / its latest measurement (+ latency); a pair
    never measured costs what the static oracle says. `age`: how old the measurement behind the
    answer is (None for a static answer). No port counters are read."""

    name = "probe"
    probes = True  # the drivers feed it: record() for every finished train

    @classmethod
    def from_config(cls, topo, routing, te, source, clock) -> ProbeOracle:
        return cls(topo, routing, clock)

    def __init__(self, topo: FatTree, routing: Routing, clock: Callable[[], float]):
        self.topo, self.routing, self.clock = topo, routing, clock
        self._bw = np.append(topo.capacity_bps, math.inf)  # static bottlenecks, for pairs never measured
        self._rows = _RowCache(routing)
        self.measured: dict[tuple[int, int], tuple[float, float]] = {}  # (src, dst) -> (bytes/s, at)
        self._probed: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # src -> (dsts, bw, at)
        self.probes_recorded = 0

    def record(self, src: int, dst: int, rate_Bps: float, at: float) -> None:
        """A train from host src to host dst measured `rate_Bps` (real-cluster bytes/s) at time `at`."""
        self.measured[(src, dst)] = (max(float(rate_Bps), 0.0), at)
        self._probed.pop(src, None)
        self.probes_recorded += 1

    def _row(self, src: int, dsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Measured bytes/s (NaN: never) and measurement times for the pairs src -> dsts."""
        ent = self._probed.get(src)
        if ent is None or ent[0] is not dsts:
            got = [self.measured.get((src, int(d))) for d in dsts]
            bw = np.array([np.nan if g is None else g[0] for g in got])
            at = np.array([np.nan if g is None else g[1] for g in got])
            ent = self._probed[src] = (dsts, bw, at)
        return ent[1], ent[2]

    def cost_row(self, src, dsts, nbytes, at=None):
        row = self._rows.bottleneck(src, dsts, self._bw, 0)
        static = _row_seconds(row, nbytes)
        bw, when = self._row(src, dsts)
        seen = np.isfinite(bw)
        if not seen.any():
            return static, None
        cap, _, lat = row
        with np.errstate(divide="ignore"):
            probed = np.where(nbytes > 0, nbytes / bw + lat, 0.0)
        sec = np.where(seen & (cap > 0), probed, static)  # a dead path stays infinite
        return sec, max(0.0, self.clock() - float(np.nanmin(when)))

    def cost(self, src, dst, nbytes, at=None):
        if nbytes <= 0:
            return 0.0, None
        try:
            links = self.routing.path(src, dst)
        except NoPathError:
            return math.inf, None
        static = _path_seconds(self.routing, src, dst, nbytes, self._bw, links)
        got = self.measured.get((src, dst))
        if got is None or not math.isfinite(static):
            return static, None
        lat = float(self.topo.latency_s[links].sum())
        sec = nbytes / got[0] + lat if got[0] > 0 else math.inf
        return sec, max(0.0, self.clock() - got[1])


def probe_pairs(prefill_hosts, decode_hosts, seed: int) -> list[tuple[int, int]]:
    """The order in which a prober visits the (prefill host, decode host) pairs, each once per cycle
    (seeded shuffle: neighbouring probes do not all start from one host); the same for both drivers."""
    pairs = [(int(p), int(d)) for p in prefill_hosts for d in decode_hosts if int(p) != int(d)]
    order = np.random.default_rng([seed, 0x9B0BE]).permutation(len(pairs))
    return [pairs[i] for i in order]

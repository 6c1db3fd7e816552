"""Routing function of the fat-tree: a deterministic choice among equal-cost paths, as a strategy.

The controller installs exactly the paths this module returns and the simulator and the oracles
route flows with it, so the choice is written once. A strategy maps (src host, dst host, number of
equal-cost paths) to a path number; `Routing` applies it over the paths that avoid failed links.

Strategies:
  sum-mod  (default) path = (src + dst) mod P: spreads the pairs of every source and of every
           destination evenly over all aggregation and core switches.
  dst-mod  path = dst mod P: Al-Fares two-level style, destination-based.
  hash     path = crc32(src, dst) mod P: ECMP-like, deterministic but uneven.
"""

from __future__ import annotations

import zlib

import numpy as np

from netkv.registry import Registry
from netkv.topology.fattree import FatTree

STRATEGIES: Registry[type] = Registry("routing strategy")


class Strategy:
    name = "base"

    def choose(self, src: int, dst: int, n: int) -> int:
        raise NotImplementedError

    def choose_row(self, src: int, dsts: np.ndarray, n: np.ndarray) -> np.ndarray:
        return np.array([self.choose(src, int(d), int(m)) for d, m in zip(dsts, n)], dtype=np.int64)


@STRATEGIES.register(order=0)
class SumMod(Strategy):
    name = "sum-mod"

    def choose(self, src, dst, n):
        return (src + dst) % n

    def choose_row(self, src, dsts, n):
        return (src + dsts) % n


@STRATEGIES.register(order=1)
class DstMod(Strategy):
    name = "dst-mod"

    def choose(self, src, dst, n):
        return dst % n

    def choose_row(self, src, dsts, n):
        return dsts % n


@STRATEGIES.register(order=2)
class Hash(Strategy):
    name = "hash"

    def choose(self, src, dst, n):
        return zlib.crc32(f"{src}>{dst}".encode()) % n


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)()


class NoPathError(RuntimeError):
    """Every equal-cost path between two hosts crosses a failed link."""


class Routing:
    """The routing function: one path per ordered host pair, avoiding links marked down."""

    def __init__(self, topo: FatTree, strategy: str | Strategy = "sum-mod"):
        self.topo = topo
        self.strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.down: set[int] = set()
        self.version = 0  # bumps whenever the set of down links changes
        self._paths: dict[tuple[int, int], tuple[int, ...]] = {}  # routed paths under the current down set
        self._arrays: dict[tuple[int, int], np.ndarray] = {}  # the same as arrays
        self._latency: dict[tuple[int, ...], float] = {}  # summed link latency per path
        self._tier_paths = np.array([topo.n_paths(t) for t in range(4)], dtype=np.int64)

    # ---- failures ----------------------------------------------------------------------------
    def set_down(self, link_ids) -> None:
        new = set(link_ids)
        if new != self.down:
            self.down = new
            self.version += 1
            self._paths.clear()
            self._arrays.clear()

    def mark(self, link_id: int, up: bool) -> None:
        before = len(self.down)
        if up:
            self.down.discard(link_id)
        else:
            self.down.add(link_id)
        if len(self.down) != before:
            self.version += 1
            self._paths.clear()
            self._arrays.clear()

    # ---- paths -------------------------------------------------------------------------------
    def available_choices(self, src: int, dst: int) -> list[int]:
        n = self.topo.n_paths(self.topo.tier(src, dst))
        if not self.down:
            return list(range(n))
        return [c for c in range(n) if not self.down.intersection(self.topo.path_links(src, dst, c))]

    def choice(self, src: int, dst: int) -> int:
        """Path number chosen for (src, dst): the strategy's choice among all equal-cost paths while
        that path is up; otherwise the strategy applied to the paths still up, preferring (across
        pods) those through the same aggregation switch. A failure moves only the pairs that crossed
        it, and a repair moves them back."""
        n = self.topo.n_paths(self.topo.tier(src, dst))
        c = self.strategy.choose(src, dst, n)
        if not self.down or not self.down.intersection(self.topo.path_links(src, dst, c)):
            return c
        avail = self.available_choices(src, dst)
        if not avail:
            raise NoPathError(f"no path from {self.topo.hosts[src].name} to {self.topo.hosts[dst].name}")
        if self.topo.tier(src, dst) == 3:
            # repair locally: keep the aggregation switch (another core of the same group) if possible,
            # so that only the aggregation switch's rule changes
            h = self.topo.half
            same = [a for a in avail if a // h == c // h]
            if same:
                return same[self.strategy.choose(src, dst, len(same))]
        return avail[self.strategy.choose(src, dst, len(avail))]

    def path(self, src: int, dst: int) -> list[int]:
        """Directed link ids of the routed path from host src to host dst."""
        return list(self.path_ids(src, dst))

    def path_ids(self, src: int, dst: int) -> tuple[int, ...]:
        """`path` as a tuple, not copied (for the simulator's and oracles' per-request lookups)."""
        p = self._paths.get((src, dst))
        if p is None:
            p = self._paths[(src, dst)] = tuple(self.topo.path_links(src, dst, self.choice(src, dst)))
        return p

    def path_latency(self, links) -> float:
        """Summed latency of the links (seconds), left to right, memoised per path."""
        key = tuple(links)
        t = self._latency.get(key)
        if t is None:
            lat = self.topo.latency_s
            t = self._latency[key] = sum(float(lat[lid]) for lid in key)
        return t

    def path_array(self, src: int, dst: int) -> np.ndarray:
        """`path` as a read-only int64 array, not copied."""
        a = self._arrays.get((src, dst))
        if a is None:
            a = np.array(self.path_ids(src, dst), dtype=np.int64)
            a.flags.writeable = False
            self._arrays[(src, dst)] = a
        return a

    def switch_path(self, src: int, dst: int) -> list[tuple[str, int]]:
        return self.topo.switch_path(self.path(src, dst))

    def path_row(self, src: int, dsts: np.ndarray) -> np.ndarray:
        """Routed paths from src to every host in dsts as an (n, 8) link-id array padded with -1."""
        dsts = np.asarray(dsts, dtype=np.int64)
        if self.down:
            out = np.full((len(dsts), 8), -1, dtype=np.int64)
            for r, d in enumerate(dsts):
                if d != src:
                    try:
                        p = self.path(src, int(d))
                    except NoPathError:
                        continue  # row stays -1: callers treat it as unreachable
                    out[r, : len(p) - 1] = p[:-1]
                    out[r, 7] = p[-1]
            return out
        n = self._tier_paths[self.topo.tiers_row(src, dsts)]
        choices = self.strategy.choose_row(src, dsts, n)
        return self.topo.path_links_row(src, dsts, choices)

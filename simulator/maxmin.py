"""Max-min fair rates by progressive filling (Bertsekas & Gallager, Data Networks, 6.5.2)."""

from __future__ import annotations

import math

import numpy as np


def maxmin_rates(flow_links, capacity, demand=None) -> np.ndarray:
    """Max-min fair rate of every flow (`maxmin_list` as an array)."""
    return np.array(maxmin_list(flow_links, capacity, demand))


def maxmin_list(flow_links, capacity, demand=None) -> list[float]:
    """Max-min fair rate of every flow.

    flow_links[f] holds the link ids flow f crosses; capacity[l] is link l's capacity; demand[f]
    caps flow f (inf = elastic). All flows rise together; when a link saturates, the flows crossing
    it freeze at its fair share, and the others keep rising with what is left elsewhere (each round
    freezes the flows of the link with the lowest fair share, or those whose demand is met).
    Plain Python over the links the flows use: the simulator calls it for one connected component
    at a time (a few to a few dozen flows), where per-call numpy overhead would dominate.
    """
    F = len(flow_links)
    dem = [math.inf] * F if demand is None else [float(x) for x in demand]
    rate = [0.0] * F
    paths: list[list[int]] = []
    rem: dict[int, float] = {}  # remaining capacity per used link
    n: dict[int, int] = {}  # rising flows per used link
    on: dict[int, list[int]] = {}  # flows per used link
    rising: set[int] = set()
    for f, links in enumerate(flow_links):
        ls = links.tolist() if isinstance(links, np.ndarray) else list(links)
        paths.append(ls)
        if not ls:  # crosses nothing: its demand, or nothing if elastic
            rate[f] = dem[f] if math.isfinite(dem[f]) else 0.0
            continue
        rising.add(f)
        for lk in ls:
            if lk in n:
                n[lk] += 1
                on[lk].append(f)
            else:
                rem[lk] = float(capacity[lk])
                n[lk] = 1
                on[lk] = [f]
    capped = any(math.isfinite(dem[f]) for f in rising)  # else no demand can ever be the lower bound
    while rising:
        # the tightest link's fair share, or the smallest demand still unmet, whichever is lower;
        # `n` holds only links with rising flows (in first-use order: ties go to the first link)
        links = list(n)
        shares = [rem[lk] / n[lk] for lk in links]
        share = min(shares)
        lk_min = links[shares.index(share)]
        dmin = min(dem[f] for f in rising) if capped else math.inf
        if dmin <= share:
            share = dmin
            frozen = [f for f in rising if dem[f] <= share]
        else:
            frozen = [f for f in on[lk_min] if f in rising]
        share = max(share, 0.0)
        for f in frozen:
            rate[f] = share
            rising.discard(f)
            for lk in paths[f]:
                rem[lk] -= share
                k = n[lk] - 1
                if k:
                    n[lk] = k
                else:
                    del n[lk]
    return rate

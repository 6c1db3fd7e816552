"""Max-min fair rates by progressive filling (Bertsekas & Gallager, Data Networks, 6.5.2)."""

from __future__ import annotations

import numpy as np


def maxmin_rates(flow_links: list[np.ndarray], capacity: np.ndarray,
                 demand: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rate of every flow.

    flow_links[f] holds the link ids flow f crosses; capacity[l] is link l's capacity; demand[f]
    caps flow f (inf = elastic). All flows rise together; when a link saturates, the flows crossing
    it freeze at their current rate, and the others keep rising with what is left elsewhere.
    """
    F = len(flow_links)
    if F == 0:
        return np.zeros(0)
    lens = np.fromiter((len(x) for x in flow_links), dtype=np.int64, count=F)
    flat = np.concatenate(flow_links).astype(np.int64)
    if F <= 64:
        # dense incidence over all links: cheaper than compacting for a handful of flows
        used = np.arange(len(capacity))
        loc = flat
    else:
        used, loc = np.unique(flat, return_inverse=True)
    A = np.zeros((F, len(used)), dtype=bool)
    A[np.repeat(np.arange(F), lens), loc] = True
    cap = capacity[used].astype(float)
    rem = cap.copy()
    dem = np.full(F, np.inf) if demand is None else np.asarray(demand, dtype=float).copy()
    rate = np.zeros(F)
    active = lens > 0
    rate[~active] = np.where(np.isfinite(dem[~active]), dem[~active], 0.0)
    eps = 1e-12
    while active.any():
        n = A[active].sum(axis=0)
        crossed = n > 0
        inc = np.min(rem[crossed] / n[crossed]) if crossed.any() else np.inf
        inc = min(inc, np.min(dem[active] - rate[active]))
        inc = max(inc, 0.0)
        rate[active] += inc
        rem -= inc * n
        saturated = crossed & (rem <= eps * np.maximum(cap, 1.0))
        frozen = active & (A[:, saturated].any(axis=1) | (rate >= dem * (1 - eps)))
        if not frozen.any():  # numerical safety: freeze the tightest link's flows
            tight = np.argmin(np.where(crossed, rem / np.maximum(n, 1), np.inf))
            frozen = active & A[:, tight]
        active &= ~frozen
    return rate

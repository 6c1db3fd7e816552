"""Max-min fair rates by progressive filling (Bertsekas & Gallager, Data Networks, 6.5.2)."""

from __future__ import annotations

import numpy as np


def maxmin_rates(flow_links: list[np.ndarray], capacity: np.ndarray, demand: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rate of every flow.

    flow_links[f] holds the link ids flow f crosses; capacity[l] is link l's capacity; demand[f]
    caps flow f (inf = elastic). All flows rise together; when a link saturates, the flows crossing
    it freeze at their current rate, and the others keep rising with what is left elsewhere.
    Each round is two matrix-vector products over the (flows x used links) incidence matrix.
    """
    F = len(flow_links)
    if F == 0:
        return np.zeros(0)
    lens = np.fromiter((len(x) for x in flow_links), dtype=np.int64, count=F)
    flat = np.concatenate(flow_links).astype(np.int64)
    used, loc = np.unique(flat, return_inverse=True)
    A = np.zeros((F, len(used)))
    A[np.repeat(np.arange(F), lens), loc] = 1.0
    cap = capacity[used].astype(float)
    rem = cap.copy()
    dem = np.full(F, np.inf) if demand is None else np.asarray(demand, dtype=float).copy()
    rate = np.zeros(F)
    active = lens > 0
    rate[~active] = np.where(np.isfinite(dem[~active]), dem[~active], 0.0)
    tol = 1e-12 * np.maximum(cap, 1.0)
    while active.any():
        n = active.astype(float) @ A  # active flows per link
        crossed = n > 0
        share = np.full(len(rem), np.inf)
        share[crossed] = rem[crossed] / n[crossed]
        inc = min(share.min(), (dem[active] - rate[active]).min())
        inc = max(inc, 0.0)
        rate[active] += inc
        rem -= inc * n
        saturated = crossed & (rem <= tol)
        frozen = active & (((A @ saturated.astype(float)) > 0) | (rate >= dem * (1 - 1e-12)))
        if not frozen.any():  # numerical safety: freeze the tightest link's flows
            tight = int(np.argmin(share))
            frozen = active & (A[:, tight] > 0)
        active &= ~frozen
    return rate

#!/usr/bin/env python3
"""Sweep of cache_load_aware's overlap_weight on the simulator (the documented tuning of the baseline).

Runs the experiment's trace window (default experiments/paper-64gpu.toml, first 4,000 requests) for
each weight and prints mean and p99 TTFT and SLO attainment; the weight with the lowest mean TTFT
is the tuned value written into the experiment files ([policy.cache_load_aware]). Dynamo's default
overlap_score_weight is 1.0 (ai-dynamo/dynamo, KV router).
"""

from __future__ import annotations

import argparse

from netkv.config import load
from netkv.results import summarize
from netkv.simulator.engine import Simulation


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="experiments/paper-64gpu.toml")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
    )
    a = ap.parse_args()
    exp = load(a.experiment)
    exp.trace.requests = a.requests
    print(f"{'overlap_weight':>14} {'TTFT mean':>10} {'TTFT p99':>9} {'SLO %':>6}")
    best = None
    for w in a.weights:
        exp.policy_params["cache_load_aware"] = {"overlap_weight": w}
        rows = [r.to_row() for r in Simulation(exp, "cache_load_aware").run()]
        s = summarize(rows, exp.slo.ttft_s, exp.slo.tbt_s)
        m = s["ttft_s"]["mean"]
        print(f"{w:>14g} {m:>10.3f} {s['ttft_s']['p99']:>9.2f} {100 * s['slo_attainment']:>6.1f}", flush=True)
        if best is None or m < best[1]:
            best = (w, m)
    print(f"tuned overlap_weight = {best[0]:g} (lowest mean TTFT, {best[1]:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

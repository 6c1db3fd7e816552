#!/usr/bin/env python3
"""Sweep of cache_load_aware's overlap_weight on the simulator, on a window disjoint from the evaluation.

Runs the tuning window (default: trace seconds [0, 900) of experiments/paper-64gpu.toml, which
evaluates from trace second 900 on) for each weight and prints mean and p99 TTFT and SLO attainment;
the weight with the lowest mean TTFT is the tuned value written into the experiment files
([policy.cache_load_aware]). Refuses a tuning window that overlaps the file's evaluation window.
Dynamo's default overlap_score_weight is 1.0 (ai-dynamo/dynamo, KV router).
"""

from __future__ import annotations

import argparse
import math
import sys

from netkv.config import load
from netkv.results import summarize_exp
from netkv.simulator.engine import Simulation


def overlap(a0: float, a1: float, b0: float, b1: float) -> bool:
    """Whether trace windows [a0, a1) and [b0, b1) share any second."""
    return a0 < b1 and b0 < a1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", nargs="?", default="experiments/paper-64gpu.toml")
    ap.add_argument("--start", type=float, default=0.0, help="tuning window start, trace seconds")
    ap.add_argument("--duration", type=float, default=900.0, help="tuning window length, trace seconds")
    ap.add_argument(
        "--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
    )
    a = ap.parse_args()
    exp = load(a.experiment)
    tr = exp.trace
    ev_end = math.inf if tr.duration_s is None else tr.start_s + tr.duration_s
    if tr.requests is not None and tr.duration_s is None:
        ev_end = math.inf  # a request count: its end depends on the trace; treat it as open-ended
    if overlap(a.start, a.start + a.duration, tr.start_s, ev_end):
        print(
            f"tune_cache_load_aware: tuning window [{a.start:g}, {a.start + a.duration:g}) s overlaps "
            f"{a.experiment}'s evaluation window [{tr.start_s:g}, {ev_end:g}) s; tune on a disjoint window",
            file=sys.stderr,
        )
        return 2
    print(f"tuning on trace seconds [{a.start:g}, {a.start + a.duration:g}); the file evaluates from {tr.start_s:g}")
    tr.start_s, tr.duration_s, tr.requests = a.start, a.duration, None
    print(f"{'overlap_weight':>14} {'TTFT mean':>10} {'TTFT p99':>9} {'SLO %':>6} {'rel SLO %':>9}")
    best = None
    for w in a.weights:
        exp.policy_params["cache_load_aware"] = {"overlap_weight": w}
        rows = [r.to_row() for r in Simulation(exp, "cache_load_aware").run()]
        s = summarize_exp(rows, exp.slo)
        m = s["ttft_s"]["mean"]
        print(
            f"{w:>14g} {m:>10.3f} {s['ttft_s']['p99']:>9.2f} {100 * s['slo_attainment']:>6.1f} "
            f"{100 * s['slo_rel_attainment']:>9.1f}",
            flush=True,
        )
        if best is None or m < best[1]:
            best = (w, m)
    print(f"tuned overlap_weight = {best[0]:g} (lowest mean TTFT, {best[1]:.3f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

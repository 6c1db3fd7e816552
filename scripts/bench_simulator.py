#!/usr/bin/env python3
"""Benchmark: simulator wall time and peak memory for the whole Mooncake conversation trace.

Runs every policy on (a) the paper-like 64-instance cluster (k=4 x 4 GPUs), (b) k=8 x 4 GPUs (512
instances) and (c) k=16 x 4 GPUs (4,096 instances), all 12,031 requests each, in a fresh subprocess
per case so that peak RSS is the case's own; --plot draws wall time and peak memory against the
instance count. Prints wall seconds, events, requests/s and peak MB, and the ratio of each policy's
wall time to round_robin's on the same cluster (measured in the same run).
Target (issue 2): <= 60 s for the whole trace on 64 instances on this 2-core machine.
Reference (../shared/BRIEF.md): splitwise-sim runs the same 12,031 requests in about 5 s, 250 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = {"paper-64": {}, "k8x4-512": {"topology": {"k": 8}}, "k16x4-4096": {"topology": {"k": 16}}}


def one(case: str, policy: str, requests: int | None) -> dict:

    from netkv.config import load
    from netkv.simulator.engine import Simulation

    exp = load(Path(__file__).resolve().parent.parent / "experiments/paper-64gpu.toml")
    exp.trace.start_s = 0.0  # the whole trace, tuning window included: a speed benchmark, not a study
    for sec, vals in CASES[case].items():
        for k, v in vals.items():
            setattr(getattr(exp, sec), k, v)
    if requests:
        exp.trace.requests = requests
    t0 = time.perf_counter()
    sim = Simulation(exp, policy)
    recs = sim.run()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall_s": wall,
        "events": sim.events,
        "requests": len(recs),
        "peak_mb": peak,
        "instances": len(sim.view.prefill_hosts) + len(sim.view.decode_hosts),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument(
        "--policies", nargs="+", default=["round_robin", "random", "least_loaded", "cache_load_aware", "netkv"]
    )
    ap.add_argument("--requests", type=int, help="limit the trace (default: all 12,031)")
    ap.add_argument("--plot", type=Path, help="write a figure of wall time and peak MB against instances")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "POLICY"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], a.requests)))
        return 0
    print(
        f"{'case':<10} {'policy':<17} {'inst':>5} {'requests':>8} {'events':>8} {'wall s':>7} {'req/s':>7} "
        f"{'peak MB':>8} {'vs rr':>6}"
    )
    results = []
    for case in a.cases:
        base = None
        for pol in a.policies:
            args = [sys.executable, __file__, "--one", case, pol] + (
                ["--requests", str(a.requests)] if a.requests else []
            )
            r = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
            results.append({"case": case, "policy": pol, **r})
            base = base or (r["wall_s"] if pol == "round_robin" else None)
            ratio = f"{r['wall_s'] / base:.2f}" if base else "-"
            print(
                f"{case:<10} {pol:<17} {r['instances']:>5} {r['requests']:>8} {r['events']:>8} {r['wall_s']:>7.2f} "
                f"{r['requests'] / r['wall_s']:>7.0f} {r['peak_mb']:>8.0f} {ratio:>6}",
                flush=True,
            )
            if case == "paper-64" and r["requests"] == 12031:
                verdict = "meets" if r["wall_s"] <= 60 else "MISSES"
                print(f"{'':<10} target <= 60 s for the whole trace on 64 instances: {verdict}")
    if a.plot:
        plot(results, a.plot)
        print(f"figure: {a.plot}")
    return 0


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for pol in dict.fromkeys(r["policy"] for r in results):
        rs = sorted((r for r in results if r["policy"] == pol), key=lambda r: r["instances"])
        xs = [r["instances"] for r in rs]
        ax1.plot(xs, [r["wall_s"] for r in rs], "-o", ms=4, label=pol)
        ax2.plot(xs, [r["peak_mb"] for r in rs], "-o", ms=4, label=pol)
    for ax, lab in ((ax1, "wall seconds (12,031 requests)"), (ax2, "peak RSS (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("GPU instances (k = 4, 8, 16 x 4 GPUs)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

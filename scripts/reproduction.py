"""Reproduction sweep: the paper's claims across load, context length and oversubscription (docs/reproduction.md).

    .venv/bin/python scripts/reproduction.py [--jobs N] [--replicates 3] [--out results/reproduction]
        [--docs docs] [--quick]

Simulates experiments/paper-64gpu.toml for every policy at each point of three axes — load (trace
replayed 2-16x faster), context length (every input 0.5-3x as long) and oversubscription above
the leaf (1:1, 2:1, 4:1) — over `--replicates` disjoint 900-s windows of the evaluation part of the
trace (from trace second 900 on; the first 900 s tuned cache_load_aware), each with its own seed.
Points run in parallel over the cores with joblib, or with --dask on a Dask cluster (this
machine's, or a real one); each finished run comes back to this process and is kept in
OUT/runs/<key>.json, so an interrupted sweep resumes where it stopped. Then writes OUT/sweep.json
(every number), OUT/tables.md, and the figures; with --docs, copies the tables and figures into
DOCS (reproduction-tables.md, figures/reproduction*.png). Progress on stderr; a failing run stops
the sweep with its error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "experiments/paper-64gpu.toml"
POLICIES = ["round_robin", "random", "least_loaded", "cache_load_aware", "netkv", "netkv_tbt", "netkv_joint"]
BASELINES = ["round_robin", "random", "least_loaded", "cache_load_aware"]
VARIANTS = ["netkv", "netkv_tbt", "netkv_joint"]
DEFAULT = {"rate": 4.0, "scale": 1.0, "os": 2.0}  # the experiment file's point
AXES = {
    "rate": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0],  # trace.rate_multiplier
    "scale": [0.5, 1.0, 2.0, 3.0],  # trace.input_scale
    "os": [1.0, 2.0, 4.0],  # topology.oversubscription: down:up at the edge (leaf) layer
}
AXIS_LABEL = {
    "rate": "load (trace replayed N x faster)",
    "scale": "input length scale",
    "os": "oversubscription above the leaf (N:1)",
}
WINDOW_S, EVAL_START_S = 900.0, 900.0
BUCKETS = [(0, 4096), (4096, 16384), (16384, 65536), (65536, math.inf)]  # input tokens as traced
BUCKET_NAMES = ["<4k", "4k-16k", "16k-64k", ">=64k"]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run_key(p: dict) -> str:
    """The file name (without .json) of one run: its point, replicate and policy."""
    return f"rate{p['rate']:g}-scale{p['scale']:g}-os{p['os']:g}-r{p['rep']}-{p['policy']}"


def points(replicates: int, quick: bool) -> list[dict]:
    """Every run of the sweep: each axis varied around the default point, per replicate and policy."""
    seen, out = set(), []
    for axis, values in AXES.items():
        for v in values[:: 2 if quick else 1] if axis == "rate" else values:
            pt = {**DEFAULT, axis: v}
            for rep in range(replicates):
                for pol in POLICIES:
                    key = run_key({**pt, "rep": rep, "policy": pol})
                    if key not in seen:
                        seen.add(key)
                        out.append({**pt, "rep": rep, "policy": pol, "key": key})
    return out


def run_one(p: dict) -> dict:
    """Simulate one point; its metrics (the driver keeps them: workers need no shared filesystem)."""
    from netkv.config import load
    from netkv.results import summarize_exp
    from netkv.simulator.engine import Simulation

    exp = load(
        EXPERIMENT,
        [
            f"trace.rate_multiplier={p['rate']}",
            f"trace.input_scale={p['scale']}",
            f"topology.oversubscription={p['os']}",
            f"trace.start_s={EVAL_START_S + p['rep'] * WINDOW_S}",
            f"trace.duration_s={WINDOW_S}",
            f"seed={1 + p['rep']}",
        ],
    )
    t0 = time.perf_counter()
    sim = Simulation(exp, p["policy"])
    rows = [r.to_row() for r in sim.run()]
    wall = time.perf_counter() - t0
    s = summarize_exp(rows, exp.slo)
    done = [r for r in rows if r["status"] == "completed"]
    orig = {r.id: r.input_tokens for r in sim.requests}  # the traced length picks the bucket
    scale = p["scale"]
    buckets = {}
    for name, (lo, hi) in zip(BUCKET_NAMES, BUCKETS, strict=True):
        sel = [r["ttft_s"] for r in done if lo <= orig[r["id"]] / scale < hi]
        buckets[name] = {"n": len(sel), "ttft_mean_s": float(np.mean(sel)) if sel else None}
    res = {
        **{k: p[k] for k in ("rate", "scale", "os", "rep", "policy")},
        "requests": s["requests"],
        "failed": s["failed"],
        "ttft_mean_s": s["ttft_s"]["mean"],
        "ttft_p99_s": s["ttft_s"]["p99"],
        "tbt_mean_ms": s["tbt_mean_s"]["mean"] * 1e3,
        "tbt_p99_ms": s["tbt_p99_s"]["p99"] * 1e3,
        "tbt_top10_ms": s["tbt_top10_s"]["mean"] * 1e3,
        "xfer_mean_s": s["transfer_s"]["mean"],
        "slo_abs": s["slo_attainment"],
        "slo_rel": s["slo_rel_attainment"],
        "slo_rel_by_scale": s["slo_rel_by_scale"],
        "decision_us_p50": s["decision_us"]["p50"],
        "cross_pod": s["tier_share"].get("3"),
        "buckets": buckets,
        "wall_s": wall,
        "events": sim.events,
    }
    return res


def keep(res: dict, out: Path) -> None:
    """Store one finished run where a resumed sweep finds it (atomically: a file that exists is whole)."""
    from netkv.results import atomic_write

    (out / "runs").mkdir(parents=True, exist_ok=True)
    atomic_write(out / "runs" / f"{run_key(res)}.json", json.dumps(res))


def ci(xs) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one sample)."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 2:
        return float(a.mean()), 0.0
    return float(a.mean()), T975.get(len(a) - 1, 1.96) * float(a.std(ddof=1)) / math.sqrt(len(a))


def aggregate(runs: list[dict], replicates: int) -> dict:
    """Per axis value: per policy means, and the variants' paired gains and TBT overheads with CIs."""
    by = {(r["rate"], r["scale"], r["os"], r["rep"], r["policy"]): r for r in runs}
    out: dict = {}
    for axis, values in AXES.items():
        rows = []
        for v in values:
            pt = {**DEFAULT, axis: v}
            reps = [
                k for k in range(replicates) if all((pt["rate"], pt["scale"], pt["os"], k, q) in by for q in POLICIES)
            ]
            if not reps:
                continue
            at = (pt["rate"], pt["scale"], pt["os"])

            def get(pol, k, m, at=at):
                return by[(*at, k, pol)][m]

            row: dict = {"value": v, "replicates": len(reps), "policies": {}, "gain": {}, "tbt_overhead_ms": {}}
            for pol in POLICIES:
                row["policies"][pol] = {
                    m: ci([get(pol, k, m) for k in reps])
                    for m in (
                        "ttft_mean_s",
                        "ttft_p99_s",
                        "slo_rel",
                        "slo_abs",
                        "tbt_mean_ms",
                        "tbt_p99_ms",
                        "decision_us_p50",
                        "xfer_mean_s",
                        "failed",
                    )
                }
            for var in VARIANTS:
                row["gain"][var] = {
                    b: ci([1 - get(var, k, "ttft_mean_s") / get(b, k, "ttft_mean_s") for k in reps]) for b in BASELINES
                }
                row["gain"][var]["slo_pp_vs_round_robin"] = ci(
                    [100 * (get(var, k, "slo_rel") - get("round_robin", k, "slo_rel")) for k in reps]
                )
                row["gain"][var]["slo_pp_vs_cache_load_aware"] = ci(
                    [100 * (get(var, k, "slo_rel") - get("cache_load_aware", k, "slo_rel")) for k in reps]
                )
                for m in ("tbt_mean_ms", "tbt_p99_ms"):
                    row["tbt_overhead_ms"].setdefault(var, {})[m] = ci(
                        [get(var, k, m) - min(get(b, k, m) for b in BASELINES) for k in reps]
                    )
            if axis == "scale" or v == DEFAULT[axis]:
                row["buckets"] = {}
                for var in VARIANTS:
                    for b in ("round_robin", "cache_load_aware"):
                        cell = {}
                        for name in BUCKET_NAMES:
                            pairs = [
                                (get(var, k, "buckets")[name]["ttft_mean_s"], get(b, k, "buckets")[name]["ttft_mean_s"])
                                for k in reps
                            ]
                            g = [1 - x / y for x, y in pairs if x is not None and y]
                            cell[name] = ci(g) if g else None
                        row["buckets"][f"{var} vs {b}"] = cell
            rows.append(row)
        out[axis] = rows
    return out


def _fmt(c, scale=100.0, prec=1) -> str:
    if c is None:
        return "-"
    m, h = c
    return f"{m * scale:+.{prec}f} ± {h * scale:.{prec}f}"


def tables(agg: dict, replicates: int) -> str:
    lines = [
        "# Reproduction sweep: tables",
        "",
        f"Generated by `scripts/reproduction.py` (simulated, {replicates} replicates = disjoint 900-s windows",
        "of the evaluation trace, each with its own seed; ± is the half-width of a 95% t interval).",
        "Gain = 1 - TTFT(variant) / TTFT(baseline) (positive: the variant is faster). SLO: relative, at",
        "3x each request's unloaded TTFT and TBT. TBT overhead = variant - best baseline (ms).",
        "",
    ]
    for axis, rows in agg.items():
        lines += [f"## {AXIS_LABEL[axis]}", ""]
        lines.append(
            "| value | policy | TTFT mean s | TTFT p99 s | rel SLO % | TBT mean ms | TBT p99 ms | xfer ms | dec us |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            for pol, m in row["policies"].items():
                lines.append(
                    f"| {row['value']:g} | {pol} | {m['ttft_mean_s'][0]:.3f} | {m['ttft_p99_s'][0]:.2f} | "
                    f"{100 * m['slo_rel'][0]:.1f} | {m['tbt_mean_ms'][0]:.1f} | {m['tbt_p99_ms'][0]:.0f} | "
                    f"{1e3 * m['xfer_mean_s'][0]:.1f} | {m['decision_us_p50'][0]:.0f} |"
                )
        lines += [
            "",
            "| value | variant | TTFT gain vs round_robin % | vs cache_load_aware % | vs best baseline's TBT mean (ms) | rel SLO pp vs round_robin | vs cache_load_aware |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            for var in VARIANTS:
                g, o = row["gain"][var], row["tbt_overhead_ms"][var]
                lines.append(
                    f"| {row['value']:g} | {var} | {_fmt(g['round_robin'])} | {_fmt(g['cache_load_aware'])} | "
                    f"{_fmt(o['tbt_mean_ms'], 1, 2)} | {_fmt(g['slo_pp_vs_round_robin'], 1)} | "
                    f"{_fmt(g['slo_pp_vs_cache_load_aware'], 1)} |"
                )
        lines.append("")
        bucket_rows = [r for r in rows if "buckets" in r]
        if bucket_rows:
            lines += [
                "| value | comparison | " + " | ".join(BUCKET_NAMES) + " |",
                "|---|---|" + "---|" * len(BUCKET_NAMES),
            ]
            for row in bucket_rows:
                for cmp_, cell in row["buckets"].items():
                    lines.append(
                        f"| {row['value']:g} | {cmp_} | " + " | ".join(_fmt(cell[n]) for n in BUCKET_NAMES) + " |"
                    )
            lines.append("")
    return "\n".join(lines) + "\n"


def figures(agg: dict, runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"netkv": "C3", "netkv_tbt": "C2", "netkv_joint": "C4"}
    fig, axs = plt.subplots(2, 3, figsize=(15, 8.5))
    for col, axis in enumerate(AXES):
        rows = agg.get(axis, [])
        xs = [r["value"] for r in rows]
        for var in VARIANTS:
            for b, style in (("round_robin", "--"), ("cache_load_aware", "-")):
                m = [100 * r["gain"][var][b][0] for r in rows]
                h = [100 * r["gain"][var][b][1] for r in rows]
                axs[0, col].errorbar(
                    xs, m, yerr=h, fmt=style + "o", ms=3, capsize=2, color=colors[var], label=f"{var} vs {b}"
                )
            m = [r["tbt_overhead_ms"][var]["tbt_mean_ms"][0] for r in rows]
            h = [r["tbt_overhead_ms"][var]["tbt_mean_ms"][1] for r in rows]
            axs[1, col].errorbar(xs, m, yerr=h, fmt="-o", ms=3, capsize=2, color=colors[var], label=var)
        axs[0, col].axhline(0, color="k", lw=0.6)
        axs[1, col].axhline(0.5, color="k", lw=0.6, ls=":")
        axs[1, col].axhline(0, color="k", lw=0.6)
        axs[0, col].set_title(AXIS_LABEL[axis], fontsize=10)
        axs[1, col].set_xlabel(AXIS_LABEL[axis])
        if axis == "os":
            for a in axs[:, col]:
                a.set_xscale("log", base=2)
                a.set_xticks(xs, [f"{x:g}:1" for x in xs])
    axs[0, 0].set_ylabel("mean TTFT gain (%)")
    axs[1, 0].set_ylabel("TBT mean - best baseline's (ms); dotted: +0.5 ms")
    axs[0, 0].axhline(21.2, color="C0", lw=0.8, ls=":")
    axs[0, 0].text(
        xs[0] if (xs := [r["value"] for r in agg.get("rate", [])]) else 0,
        21.6,
        "paper: -21.2% vs RR",
        fontsize=7,
        color="C0",
    )
    axs[0, 2].legend(fontsize=7)
    axs[1, 2].legend(fontsize=7)
    fig.tight_layout()
    p1 = out / "reproduction.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    # SLO attainment over the SLO scale at the default point
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    d = [r for r in runs if (r["rate"], r["scale"], r["os"]) == (DEFAULT["rate"], DEFAULT["scale"], DEFAULT["os"])]
    for pol in POLICIES:
        rs = [r for r in d if r["policy"] == pol]
        if not rs:
            continue
        scales = sorted(rs[0]["slo_rel_by_scale"], key=float)
        ys = [100 * np.mean([r["slo_rel_by_scale"][s] for r in rs]) for s in scales]
        ax.plot([float(s) for s in scales], ys, "-o", ms=3, label=pol)
    ax.set_xscale("log")
    ax.set_xlabel("SLO scale (x each request's unloaded TTFT and TBT)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("default point (4x rate, 2:1 above the leaf)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p2 = out / "reproduction-slo.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs (default: the cores)")
    ap.add_argument("--replicates", type=int, default=3, choices=range(1, 4), help="disjoint windows (1-3)")
    ap.add_argument("--out", type=Path, default=REPO / "results/reproduction")
    ap.add_argument("--docs", type=Path, help="copy the tables and figures into this docs directory")
    ap.add_argument("--quick", action="store_true", help="every other load point (a faster look)")
    ap.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run on a Dask cluster: its scheduler's address (tcp://HOST:8786), or 'local' for one of this "
        "machine's cores (docs/reproduction.md, 'On a cluster')",
    )
    a = ap.parse_args()
    from tqdm import tqdm

    from netkv.sweep import run_points

    todo = points(a.replicates, a.quick)
    runs, missing = [], []
    for p in todo:
        f = a.out / "runs" / f"{p['key']}.json"
        (runs.append(json.loads(f.read_text())) if f.exists() else missing.append(p))
    print(
        f"reproduction: {len(todo)} runs, {len(todo) - len(missing)} kept from {a.out / 'runs'}, "
        f"{len(missing)} to simulate " + (f"on dask ({a.dask})" if a.dask else f"on {a.jobs} cores"),
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    if missing:
        gen = run_points(run_one, missing, a.jobs, a.dask)
        for res in tqdm(gen, total=len(missing), desc="runs", unit="run", file=sys.stderr):
            keep(res, a.out)
            runs.append(res)
    agg = aggregate(runs, a.replicates)
    (a.out / "sweep.json").write_text(json.dumps({"runs": runs, "aggregate": agg}, indent=1))
    md = tables(agg, a.replicates)
    (a.out / "tables.md").write_text(md)
    figs = figures(agg, runs, a.out)
    print(
        f"reproduction: {time.perf_counter() - t0:.0f} s; {a.out / 'sweep.json'}, {a.out / 'tables.md'}, "
        + ", ".join(str(f) for f in figs),
        file=sys.stderr,
    )
    if a.docs:
        (a.docs / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copy(a.out / "tables.md", a.docs / "reproduction-tables.md")
        for f in figs:
            shutil.copy(f, a.docs / "figures" / f.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

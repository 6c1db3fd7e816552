"""Staleness study: how old counter telemetry changes NetKV's choices and gains (docs/staleness.md).

    .venv/bin/python scripts/staleness.py [--experiment experiments/staleness.toml] [--seeds 1 2 3]
        [--polls 0.1 0.25 0.5 1 2 5] [--delays 0 1] [--emulate 0.1 0.5 2] [--emulate-seeds 1 2 3]
        [--emulate-delays 0 1] [--out results/staleness]
        [--docs docs/figures] [--jobs N] [--dask local|tcp://HOST:8786]

Simulated: for each poll interval, publish delay and seed, every policy of the experiment plus
netkv without its own in-flight transfers (`count_committed = false`), each decision also asking
what the policy would choose on fresh telemetry (`telemetry.compare_fresh`). Emulated (root): the
same experiment at the given poll intervals and --emulate-delays (publish delays, default 0), netkv
and cache_load_aware, for each of --emulate-seeds (default: the experiment's seed); a finished
emulated point is kept (point.json) and reused by the next invocation. Writes staleness.json (every number) and
staleness.png; with --docs, copies the figure there. Progress on stderr; a failing run stops the study with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from netkv.sweep import run_points

REPO = Path(__file__).resolve().parent.parent
NOCOMMIT = "netkv (no in-flight)"


def _sim_point(path: Path, poll: float, delay: float, seed: int) -> dict:
    """Every policy at one (poll, delay, seed): mean TTFT, SLO attainment, TBT, ages, agreement."""
    from netkv.results import summarize_exp
    from netkv.scheduler.cluster import load
    from netkv.simulator.engine import Simulation

    sets = [f"telemetry.poll_interval_s={poll}", f"telemetry.publish_delay_s={delay}", f"seed={seed}"]
    out = {}
    variants = [(None, [*sets, "telemetry.compare_fresh=true"])]
    variants.append((NOCOMMIT, [*sets, "telemetry.compare_fresh=true", "telemetry.count_committed=false"]))
    for label, ov in variants:
        cluster = load(path, ov)
        exp = cluster.exp
        pols = exp.policies if label is None else ["netkv"]
        for pol in pols:
            rows = [r.to_row() for r in Simulation(cluster, pol).run()]
            out[label or pol] = _point(summarize_exp(rows, exp.slo))
    return out


def _sim_job(job: tuple) -> tuple:
    """One simulated point for run_points: (poll, delay, seed, its results)."""
    path, poll, delay, seed = job
    return poll, delay, seed, _sim_point(path, poll, delay, seed)


def _point(s: dict) -> dict:
    age = s.get("telemetry_age_s") or {}
    agree = s.get("fresh_agreement") or {}
    return {
        "ttft_mean_s": s["ttft_s"]["mean"],
        "slo": s["slo_attainment"],
        "tbt_mean_ms": s["tbt_mean_s"]["mean"] * 1e3,
        "completed": s["completed"],
        "age_p50_s": age.get("p50"),
        "age_p90_s": age.get("p90"),
        "same_decode": agree.get("same_decode"),
        "same_tier": agree.get("same_tier"),
    }


def _emu_point(path: Path, poll: float, delay: float, seed: int, out: Path) -> dict:
    """netkv and cache_load_aware emulated at one (poll, publish delay, seed); kept in point.json
    beside the run, so that a second invocation reuses a finished point instead of emulating it again."""
    from netkv.emulation.run import emulate_experiment
    from netkv.scheduler.cluster import load

    where = out / f"emu-poll-{poll:g}-delay-{delay:g}-seed-{seed}"
    done = where / "point.json"
    if done.exists():
        print(f"[staleness] reusing {done}", file=sys.stderr)
        return json.loads(done.read_text())
    sets = [f"telemetry.poll_interval_s={poll}", f"telemetry.publish_delay_s={delay}", f"seed={seed}"]
    _, summ = emulate_experiment(
        load(path, sets), ["cache_load_aware", "netkv"], where, log=lambda *a: print(*a, file=sys.stderr)
    )
    pt = {pol: _point(s) for pol, s in summ.items()}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(pt, indent=1))
    tmp.replace(done)  # a point that exists is complete
    return pt


def _emu_groups(doc: dict) -> dict[tuple[float, float], list[dict]]:
    """Emulated points grouped by (poll interval, publish delay) (keys "poll/delay/seed")."""
    out: dict[tuple[float, float], list[dict]] = {}
    for key, pt in (doc.get("emu") or {}).items():
        poll, delay, _seed = key.split("/")
        out.setdefault((float(poll), float(delay)), []).append(pt)
    return dict(sorted(out.items()))


def gain(p: dict, pol: str = "netkv", ref: str = "cache_load_aware") -> float:
    """TTFT gain of `pol` over `ref`, percent of ref's mean TTFT."""
    return 100.0 * (p[ref]["ttft_mean_s"] - p[pol]["ttft_mean_s"]) / p[ref]["ttft_mean_s"]


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    polls = doc["polls"]
    for delay in doc["delays"]:
        for pol, style in (("netkv", "-o"), (NOCOMMIT, "--s")):
            g = np.array([[gain(doc["sim"][f"{p:g}/{delay:g}/{s}"], pol) for s in doc["seeds"]] for p in polls])
            ax1.errorbar(
                polls,
                g.mean(1),
                yerr=[g.mean(1) - g.min(1), g.max(1) - g.mean(1)],
                fmt=style,
                capsize=3,
                label=f"{pol}, simulated, delay {delay:g} s",
            )
            a = np.array([[doc["sim"][f"{p:g}/{delay:g}/{s}"][pol]["same_tier"] for s in doc["seeds"]] for p in polls])
            ax2.plot(polls, 100 * a.mean(1), style, label=f"{pol}, delay {delay:g} s")
    emu = _emu_groups(doc)
    for j, delay in enumerate(sorted({d for _, d in emu})):
        ep = [p for p, d in emu if d == delay]
        g = [[gain(x) for x in emu[(p, delay)]] for p in ep]
        m = [float(np.mean(v)) for v in g]
        ax1.errorbar(
            ep,
            m,
            yerr=[[a - min(v) for a, v in zip(m, g)], [max(v) - a for a, v in zip(m, g)]],
            fmt="*^vD"[j % 4],
            color="k" if j == 0 else f"C{j + 4}",
            ms=12 if j == 0 else 8,
            capsize=3,
            label=f"netkv, emulated, delay {delay:g} s ({max(len(v) for v in g)} seeds)",
        )
    ax1.axhline(0, color="grey", lw=0.8)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("controller poll interval (s, real cluster)")
        ax.legend(fontsize=7)
    ax1.set_ylabel("mean TTFT gain over cache_load_aware (%)")
    ax1.set_title("NetKV's gain vs telemetry staleness (min-max over seeds)")
    ax2.set_ylabel("decisions whose tier fresh telemetry would keep (%)")
    ax2.set_title("tier agreement, stale vs fresh")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(doc: dict) -> list[str]:
    """Per (delay, poll): median age, netkv's gain (mean and min..max over seeds), the gain without
    its in-flight transfers, tier and decode agreement with fresh telemetry, SLO attainment."""
    lines = [
        f"{'poll s':>6} {'delay s':>7} {'age p50 s':>9} {'gain % (min..max)':>19} {'no in-flight %':>20}"
        f" {'same tier %':>11} {'same decode %':>13} {'SLO netkv / cla %':>17}"
    ]

    def mm(v):
        return f"{np.mean(v):5.1f} ({min(v):5.1f}..{max(v):5.1f})"

    for delay in doc["delays"]:
        for p in doc["polls"]:
            pts = [doc["sim"][f"{p:g}/{delay:g}/{s}"] for s in doc["seeds"]]
            nk = [x["netkv"] for x in pts]
            slo = f"{100 * np.mean([x['slo'] for x in nk]):.1f} / {100 * np.mean([x['cache_load_aware']['slo'] for x in pts]):.1f}"
            lines.append(
                f"{p:6g} {delay:7g} {np.mean([x['age_p50_s'] for x in nk]):9.3f} {mm([gain(x) for x in pts]):>19}"
                f" {mm([gain(x, NOCOMMIT) for x in pts]):>20} {100 * np.mean([x['same_tier'] for x in nk]):11.1f}"
                f" {100 * np.mean([x['same_decode'] for x in nk]):13.1f} {slo:>17}"
            )
    for (p, delay), pts in _emu_groups(doc).items():
        lines.append(
            f"emulated, poll {p:g} s, delay {delay:g} s, {len(pts)} seed(s): gain {mm([gain(x) for x in pts])}%, "
            f"age p50 {np.mean([x['netkv']['age_p50_s'] for x in pts]):.3f} s, SLO netkv / cla "
            f"{100 * np.mean([x['netkv']['slo'] for x in pts]):.1f} / "
            f"{100 * np.mean([x['cache_load_aware']['slo'] for x in pts]):.1f}%"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments/staleness.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--polls", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0, 5.0])
    ap.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--emulate", type=float, nargs="*", default=[], help="poll intervals to emulate (root)")
    ap.add_argument(
        "--emulate-seeds", type=int, nargs="+", help="seeds of the emulated points (default: the experiment's)"
    )
    ap.add_argument(
        "--emulate-delays", type=float, nargs="+", default=[0.0], help="publish delays of the emulated points (s)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "results/staleness")
    ap.add_argument("--docs", type=Path, default=None, help="copy the figure into this folder")
    ap.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="parallel simulated points (default: the cores)"
    )
    ap.add_argument("--dask", metavar="ADDRESS", help="simulate on a Dask cluster ('local' or tcp://HOST:8786)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": str(a.experiment),
        "seeds": a.seeds,
        "polls": a.polls,
        "delays": a.delays,
        "sim": {},
        "emu": {},
    }
    todo = [(a.experiment, p, d, s) for d in a.delays for p in a.polls for s in a.seeds]
    t0 = time.monotonic()
    for i, (p, d, s, res) in enumerate(run_points(_sim_job, todo, a.jobs, a.dask), 1):
        doc["sim"][f"{p:g}/{d:g}/{s}"] = res
        el = time.monotonic() - t0
        print(f"[staleness] simulated {i}/{len(todo)} (poll {p:g} s, delay {d:g} s, seed {s}); "
              f"{el:.0f} s, ~{el / i * (len(todo) - i):.0f} s left", file=sys.stderr)  # fmt: skip
    from netkv.config import load as load_exp

    emu_seeds = a.emulate_seeds or [load_exp(a.experiment).seed]
    emu_todo = [(p, d, s) for d in a.emulate_delays for p in a.emulate for s in emu_seeds]
    t1 = time.monotonic()
    for i, (p, d, s) in enumerate(emu_todo, 1):
        print(f"[staleness] emulating {i}/{len(emu_todo)}: poll {p:g} s, delay {d:g} s, seed {s}", file=sys.stderr)
        doc["emu"][f"{p:g}/{d:g}/{s}"] = _emu_point(a.experiment, p, d, s, a.out)
        el = time.monotonic() - t1
        print(f"[staleness] {el:.0f} s, ~{el / i * (len(emu_todo) - i):.0f} s left", file=sys.stderr)
    (a.out / "staleness.json").write_text(json.dumps(doc, indent=1))
    plot(doc, a.out / "staleness.png")
    for line in table(doc):
        print(line)
    print(f"wrote {a.out / 'staleness.json'}, {a.out / 'staleness.png'}")
    if a.docs is not None:
        a.docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(a.out / "staleness.png", a.docs / "staleness.png")
        print(f"copied the figure to {a.docs / 'staleness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

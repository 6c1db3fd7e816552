"""Simulator fidelity across conditions: the fidelity report at several loads, with and without
background congestion, and with a link failure (root; docs/fidelity.md).

    .venv/bin/python scripts/fidelity_sweep.py [--experiment experiments/demo.toml] [--requests 40]
        [--dilation 4] [--out results/fidelity-sweep] [--only NAME ...]

Each condition is one `netkv emulate` of the experiment (round_robin and netkv) followed by its
fidelity report: the simulator replays the run's choices and compares request by request. A run the
fidelity guard flags (OVS or the machine saturated) is marked as excluded in its rows. Writes fidelity-sweep.json and
prints one row per condition and policy. Resumable: a condition whose run directory holds a
fidelity.json is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (overrides, drop the background?, add a link failure?)
CONDITIONS = {
    "load x1": (["trace.rate_multiplier=1.0"], False, False),
    "load x2": (["trace.rate_multiplier=2.0"], False, False),
    "load x4": (["trace.rate_multiplier=4.0"], False, False),
    "load x2, no background": (["trace.rate_multiplier=2.0"], True, False),
    "load x2, link failure": (["trace.rate_multiplier=2.0"], False, True),
}
FAILURE = {"link": ["a0_0", "c0_0"], "at_s": 2.0, "down_s": 4.0}


def run_condition(path: Path, name: str, requests: int, dilation: float, out: Path) -> dict:
    from netkv.config import FaultCfg, load
    from netkv.emulation.run import emulate_experiment
    from netkv.scheduler.cluster import Cluster
    from netkv.simulator.replay import fidelity_report

    sets, quiet, fail = CONDITIONS[name]
    where = out / name.replace(" ", "").replace(",", "-")
    done = sorted(where.glob("*/fidelity/fidelity.json"))
    if done:
        return json.loads(done[-1].read_text())
    exp = load(path, [*sets, f"trace.requests={requests}", f"emulation.time_dilation={dilation}"])
    if quiet:
        exp.background = []
    if fail:
        exp.faults = [FaultCfg(link=list(FAILURE["link"]), at_s=FAILURE["at_s"], down_s=FAILURE["down_s"])]
    run, _ = emulate_experiment(
        Cluster.build(exp), ["round_robin", "netkv"], where, log=lambda *a: print(*a, file=sys.stderr)
    )
    rep, _ = fidelity_report(run.root, log=lambda *a: None)
    return rep


def rows(name: str, rep: dict) -> list[str]:
    out = []
    flagged = bool(rep.get("guard", {}).get("flagged"))
    for pol, p in rep["policies"].items():
        t = p["transfer"]
        out.append(
            f"{name:<24} {pol:<12} {t['n']:4d} {100 * t['rel_p50']:6.1f} {100 * t['rel_p95']:7.1f} "
            f"{100 * t['bias']:+6.1f} {100 * p['ttft_mean_rel']:6.1f} {'yes' if rep['same_ranking'] else 'no':>8}"
            f"{'  (guard flagged: excluded)' if flagged else ''}"
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", type=Path, default=REPO / "experiments/demo.toml")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--dilation", type=float, default=4.0)
    ap.add_argument("--out", type=Path, default=REPO / "results/fidelity-sweep")
    ap.add_argument("--only", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {}
    t0 = time.monotonic()
    for i, name in enumerate(a.only, 1):
        print(f"[fidelity] condition {i}/{len(a.only)}: {name}", file=sys.stderr)
        doc[name] = run_condition(a.experiment, name, a.requests, a.dilation, a.out)
        el = time.monotonic() - t0
        print(f"[fidelity] {el:.0f} s, ~{el / i * (len(a.only) - i):.0f} s left", file=sys.stderr)
    (a.out / "fidelity-sweep.json").write_text(json.dumps(doc, indent=1))
    print(
        f"{'condition':<24} {'policy':<12} {'n':>4} {'p50 %':>6} {'p95 %':>7} {'bias %':>6} {'TTFT %':>6} {'ranking':>8}"
    )
    for name, rep in doc.items():
        for line in rows(name, rep):
            print(line)
    print(f"wrote {a.out / 'fidelity-sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Oracle accuracy study: each oracle's transfer-time estimate beside the transfer it estimated.

    .venv/bin/python scripts/oracle_accuracy.py [--requests 200] [--seeds 1 2 3] [--emulated RUN ...]
        [--out results/oracles] [--docs docs/figures]

Simulated: round_robin (its choices ignore the oracle, so every oracle is judged on the very same
transfers) on the congestion scenarios of experiments/scenarios/ plus the demo cluster without
background ("quiet"), once per oracle: static (bytes / path capacity), counters (residual of the
polled counters with the floor, the scheduler's in-flight transfers counted) and counters without
in-flight, and fair share (the rate a new flow would get under max-min, from counters and the
scheduler's own transfers), and probe (each pair priced by its latest packet train: in
simulation the rate a new flow would get when the train ran). Per oracle, tier and scenario: median and p95 of |estimate - actual| /
actual, and the median signed error (bias); and what it does for the policy that uses it: netkv's
mean TTFT with each oracle on each scenario. Cost: netkv's decision time with each oracle (p50 us),
and telemetry polls. Emulated (optional): the given `netkv emulate` run directories, whose decisions used the
counters over real port counters or the probe oracle's packet trains (grouped by the oracle each
decision used; for probe runs, the prober's trains, traffic and CPU). Writes oracles.json,
oracles.png and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ORACLES = {
    "static": ["telemetry.oracle=static"],
    "counters": ["telemetry.oracle=counters", "telemetry.count_committed=true"],
    "counters, no in-flight": ["telemetry.oracle=counters", "telemetry.count_committed=false"],
    "fair share": ["telemetry.oracle=fair_share", "telemetry.count_committed=true"],
    "probe": ["telemetry.oracle=probe"],
}
TIERS = ("same server", "same edge", "same pod", "cross-pod")


# The congestion scenarios (experiments/scenarios/) sit on the demo's cluster as it was before its
# edge became 2:1 (every fabric link 400 Gbit/s); "quiet" and the cost runs take demo.toml on that fabric too
DEMO_FABRIC = ["topology.oversubscription=1.0"]


def scenarios() -> dict[str, Path]:
    out = {"quiet": REPO / "experiments/demo.toml"}
    out.update({p.stem: p for p in sorted((REPO / "experiments/scenarios").glob("*.toml"))})
    return out


def _cluster(path: Path, overrides: list[str], quiet: bool):
    from netkv.config import load
    from netkv.scheduler.cluster import Cluster

    exp = load(path, [*DEMO_FABRIC, *overrides] if path.name == "demo.toml" else overrides)
    if quiet:
        exp.background = []
    return Cluster.build(exp)


def errors(rows: list[dict]) -> list[tuple[int, float]]:
    """(tier, signed relative error) of every completed transfer that moved bytes."""
    out = []
    for r in rows:
        if r["status"] == "completed" and r["bytes_sent"] > 0 and r["transfer_s"] and r["est_transfer_s"] is not None:
            out.append((r["tier"], (r["est_transfer_s"] - r["transfer_s"]) / r["transfer_s"]))
    return out


def stats(errs: list[float]) -> dict:
    if not errs:
        return {"n": 0}
    a = np.array(errs)
    return {
        "n": len(a),
        "p50_abs": float(np.median(np.abs(a))),
        "p95_abs": float(np.percentile(np.abs(a), 95)),
        "bias": float(np.median(a)),
    }


def simulate(requests: int, seeds: list[int], log) -> dict:
    from netkv.simulator.engine import Simulation

    doc: dict = {"errors": {}, "cost": {}, "netkv_ttft": {}}
    todo = [(sc, path, o, s) for sc, path in scenarios().items() for o in ORACLES for s in seeds]
    t0 = time.monotonic()
    for i, (sc, path, o, seed) in enumerate(todo, 1):
        ov = [*ORACLES[o], f"trace.requests={requests}", f"seed={seed}"]
        cluster = _cluster(path, ov, sc == "quiet")
        rows = [r.to_row() for r in Simulation(cluster, "round_robin").run()]
        doc["errors"].setdefault(sc, {}).setdefault(o, []).extend(errors(rows))
        rows = [r.to_row() for r in Simulation(cluster, "netkv").run()]
        ttft = float(np.mean([r["ttft_s"] for r in rows if r["status"] == "completed"]))
        doc["netkv_ttft"].setdefault(sc, {}).setdefault(o, []).append(ttft)
        el = time.monotonic() - t0
        log(
            f"[oracles] simulated {i}/{len(todo)} ({sc}, {o}, seed {seed}); {el:.0f} s, ~{el / i * (len(todo) - i):.0f} s left"
        )
    for o in ORACLES:  # what each costs a netkv decision
        sim = Simulation(
            _cluster(REPO / "experiments/demo.toml", [*ORACLES[o], f"trace.requests={requests}"], False), "netkv"
        )
        rows = [r.to_row() for r in sim.run()]
        doc["cost"][o] = {
            "decision_us_p50": float(np.median([r["decision_us"] for r in rows])),
            "polls": o not in ("static", "probe"),
        }
        if o == "probe":
            doc["cost"][o]["trains_per_s"] = 1.0 / sim.exp.telemetry.probe_interval_s
    return doc


def summarise(doc: dict) -> dict:
    """errors -> per scenario, oracle, tier (and all tiers): p50/p95 |error| and bias."""
    out = {}
    for sc, by_o in doc["errors"].items():
        for o, errs in by_o.items():
            cell = {"all": stats([e for _, e in errs])}
            for t, name in enumerate(TIERS):
                cell[name] = stats([e for tt, e in errs if tt == t])
            out.setdefault(sc, {})[o] = cell
    return out


def emulated(run_dirs: list[Path]) -> dict:
    """Per oracle the decisions used (the rows' `oracle`: counters over real ports, probe trains,
    static fallback): errors per tier; and, for probe runs, what the prober cost (its totals line)."""
    from netkv.results import RunDir

    errs: dict[str, list] = {}
    probe_cost = {"trains": 0, "bytes_sent": 0, "cpu_s": 0.0, "wall_s": 0.0}
    for d in run_dirs:
        run = RunDir(d)
        meta = run.read_meta()
        for pol in run.read_summary()["policies"]:
            rows = run.read_requests(pol)
            for o in sorted({r["oracle"] for r in rows if r.get("oracle")}):
                errs.setdefault(o, []).extend(errors([r for r in rows if r.get("oracle") == o]))
            probes = run.root / pol / "probes.jsonl"
            if probes.exists():
                for line in probes.read_text().splitlines():
                    x = json.loads(line)
                    if "totals" in x:
                        for k in ("trains", "bytes_sent", "cpu_s"):
                            probe_cost[k] += x["totals"][k]
                probe_cost["wall_s"] += meta["wall_s"][pol]
    out: dict = {}
    for o, e in errs.items():
        out[o] = {"all": stats([x for _, x in e])}
        for t, name in enumerate(TIERS):
            out[o][name] = stats([x for tt, x in e if tt == t])
    if probe_cost["trains"]:
        w = probe_cost["wall_s"]
        out["probe_cost"] = {
            **probe_cost,
            "emulated_mbps": probe_cost["bytes_sent"] * 8 / 1e6 / w,
            "cpu_share": probe_cost["cpu_s"] / w,
        }
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = list(summary)
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / len(ORACLES)
    for k, o in enumerate(ORACLES):
        p50 = [100 * summary[sc][o]["all"].get("p50_abs", np.nan) for sc in scs]
        p95 = [100 * summary[sc][o]["all"].get("p95_abs", np.nan) for sc in scs]
        x = np.arange(len(scs)) + k * w
        ax.bar(x, p50, w, label=f"{o}: median")
        ax.plot(x, p95, "kv", ms=6)
    ax.plot([], [], "kv", ms=6, label="p95")
    ax.set_xticks(np.arange(len(scs)) + w * (len(ORACLES) - 1) / 2, scs)
    ax.set_ylabel("|estimate - actual| / actual (%)")
    ax.set_title("transfer-time estimate error per oracle (simulated, round_robin's transfers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary: dict, cost: dict, emu: dict | None, ttft: dict | None = None) -> list[str]:
    def f(c):
        if not c.get("n"):
            return f"{'-':>22}"
        return f"{100 * c['p50_abs']:6.1f} {100 * c['p95_abs']:7.1f} {100 * c['bias']:+7.1f}"

    lines = [f"{'scenario':<15} {'oracle':<23} {'tier':<11} {'n':>5} {'p50 %':>6} {'p95 %':>7} {'bias %':>7}"]
    for sc, by_o in summary.items():
        for o, cell in by_o.items():
            for tier in ("all", *TIERS):
                c = cell[tier]
                if c.get("n"):
                    lines.append(f"{sc:<15} {o:<23} {tier:<11} {c['n']:5d} {f(c)}")
    for o, c in cost.items():
        lines.append(f"cost: {o}: netkv decision p50 {c['decision_us_p50']:.1f} us; telemetry polls: {c['polls']}")
    if ttft:
        names = list(next(iter(ttft.values())))
        lines.append(f"{'netkv TTFT s':<15} " + " ".join(f"{o:>23}" for o in names))
        for sc, by_o in ttft.items():
            lines.append(f"{sc:<15} " + " ".join(f"{np.mean(by_o[o]):23.4f}" for o in names))
    if emu:
        for o, cell in emu.items():
            if o == "probe_cost":
                continue
            label = {"counters": "counters (real ports)", "probe": "probe (scapy trains)"}.get(o, o)
            for tier in ("all", *TIERS):
                if cell[tier].get("n"):
                    lines.append(f"{'emulated':<15} {label:<23} {tier:<11} {cell[tier]['n']:5d} {f(cell[tier])}")
        pc = emu.get("probe_cost")
        if pc:
            lines.append(
                f"cost: probe (emulated): {pc['trains']} trains, {pc['emulated_mbps']:.2f} Mbit/s of probe traffic "
                f"on the emulated fabric, prober CPU {100 * pc['cpu_share']:.1f}% of a core"
            )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--emulated", type=Path, nargs="*", default=[], help="netkv emulate run directories")
    ap.add_argument("--out", type=Path, default=REPO / "results/oracles")
    ap.add_argument("--docs", type=Path, default=None, help="copy the figure into this folder")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    raw = simulate(a.requests, a.seeds, lambda m: print(m, file=sys.stderr))
    summary = summarise(raw)
    emu = emulated(a.emulated) if a.emulated else None
    doc = {
        "requests": a.requests,
        "seeds": a.seeds,
        "summary": summary,
        "cost": raw["cost"],
        "netkv_ttft": raw["netkv_ttft"],
        "emulated": emu,
    }
    (a.out / "oracles.json").write_text(json.dumps(doc, indent=1))
    plot(summary, a.out / "oracles.png")
    for line in table(summary, raw["cost"], emu, raw["netkv_ttft"]):
        print(line)
    print(f"wrote {a.out / 'oracles.json'}, {a.out / 'oracles.png'}")
    if a.docs is not None:
        a.docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(a.out / "oracles.png", a.docs / "oracles.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

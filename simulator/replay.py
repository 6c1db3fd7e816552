"""Replay a run in the simulator with its own (prefill, decode) choices, so that the two compare like
with like: per-request differences then measure the network and compute models, not diverging
decisions (an emulated run's netkv agrees with a free simulation on only part of its choices)."""

from __future__ import annotations

import json
from pathlib import Path

from netkv.config import ConfigError, Experiment, load, load_json, to_dict
from netkv.results import RunDir, summarize_exp
from netkv.scheduler.cluster import Cluster
from netkv.simulator.engine import Simulation
from netkv.trace import window_from_config


def run_experiment(root: Path) -> Experiment:
    """The experiment a run directory ran: its experiment.json, or (runs written before that file
    existed) its experiment.toml with the overrides and request count its meta.json recorded."""
    root = Path(root)
    if (root / "experiment.json").exists():
        return load_json(root / "experiment.json")
    if not (root / "experiment.toml").exists():
        raise ConfigError(f"{root}: no experiment.json or experiment.toml (not a run directory)")
    meta = json.loads((root / "meta.json").read_text())
    exp = load(root / "experiment.toml", meta.get("overrides") or [])
    exp.trace.requests = meta.get("requests", exp.trace.requests)
    return exp


def choices(run: RunDir, policy: str, cluster: Cluster) -> dict[int, tuple[int, int]]:
    """Request id -> (prefill host, decode host) as the run decided them."""
    idx = cluster.topo.host_index
    return {r["id"]: (idx[r["prefill"]], idx[r["decode"]]) for r in run.read_requests(policy) if r.get("decode")}


def replay_run(source: str | Path, out: str | Path, log=print) -> RunDir:
    """Simulate every policy of run `source` with its choices; write a run directory at `out`."""
    src = RunDir(Path(source))
    cluster = Cluster.build(run_experiment(src.root))
    policies = list(src.read_summary()["policies"])
    requests = window_from_config(cluster.exp)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    (out / "experiment.json").write_text(json.dumps(to_dict(cluster.exp), indent=1))
    summaries = {}
    for pol in policies:
        sim = Simulation(cluster, pol, requests, replay=choices(src, pol, cluster))
        rows = [r.to_row() for r in sim.run()]
        run.write_requests(pol, rows)
        summaries[pol] = summarize_exp(rows, cluster.exp.slo)
        run.write_policy_summary(pol, summaries[pol])
        log(f"  replayed {pol}: {len(rows)} requests")
    run.write_meta({"mode": "replay", "replay_of": str(src.root), "policies": policies, "partial": False})
    run.write_summary(summaries, False)
    return run


def fidelity_report(emu_dir: str | Path, sim_dir: str | Path | None = None, log=print) -> tuple[dict, Path]:
    """The fidelity report of an emulated run, written into RUN/fidelity/: the simulator replays the
    run's choices (replay/), simulates the same experiment freely for the ranking (unless `sim_dir`
    gives such a run), compares request by request (fidelity.json) and plots the transfers
    (transfers.png). Returns the report and the directory."""
    from netkv.compare import fidelity
    from netkv.report import fidelity_plot
    from netkv.simulator.run import simulate_experiment

    emu = Path(emu_dir)
    out = emu / "fidelity"
    replay = replay_run(emu, out / "replay", log=log)
    if sim_dir is None:
        cluster = Cluster.build(run_experiment(emu))
        policies = list(RunDir(emu).read_summary()["policies"])
        free, _ = simulate_experiment(cluster, policies, out, progress=False, log=lambda *a: None)
        sim_dir = free.root
    rep = fidelity(replay.root, emu, sim_dir)
    rep["free_simulation"] = str(sim_dir)
    (out / "fidelity.json").write_text(json.dumps(rep, indent=1))
    fidelity_plot(replay.root, emu, out / "transfers.png")
    return rep, out

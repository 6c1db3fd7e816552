"""Run an experiment's policies in the simulator and write a run directory."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from netkv import __version__
from netkv.config import to_dict
from netkv.results import RunDir, format_summary, summarize_exp
from netkv.scheduler.cluster import Cluster
from netkv.simulator.engine import Simulation
from netkv.trace import window_from_config


def simulate_experiment(
    exp, policies: list[str] | None = None, out: Path = Path("results"), progress: bool = True, log=print
) -> tuple[RunDir, dict]:
    """Simulate every policy on the same trace window; returns the run dir and the summaries.
    `exp`: a built Cluster, or an Experiment (its cluster is built here)."""
    cluster = exp if isinstance(exp, Cluster) else Cluster.build(exp)
    exp, topo, compute = cluster.exp, cluster.topo, cluster.compute
    policies = policies or exp.policies
    requests = window_from_config(exp)
    pre, dec = cluster.prefill_hosts, cluster.decode_hosts
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = RunDir.create(out, f"{exp.name}-sim", stamp, exp.path)
    (run.root / "experiment.json").write_text(json.dumps(to_dict(exp), indent=1))  # exactly what ran
    meta = {
        "mode": "simulate",
        "experiment": exp.name,
        "netkv_version": __version__,
        "started_utc": stamp,
        "seed": exp.seed,
        "policies": policies,
        "requests": len(requests),
        "prefill_instances": len(pre),
        "decode_instances": len(dec),
        "topology": topo.summary(),
        "compute": compute.describe(),
        "overrides": exp.overrides,
        "wall_s": {},
        "partial": True,
    }
    run.write_meta(meta)
    summaries: dict[str, dict] = {}
    log(
        f"simulating {len(requests)} requests on {len(pre)} prefill + {len(dec)} decode instances "
        f"(k={topo.k}, {topo.gpus_per_server} GPUs/server) -> {run.root}"
    )
    unmodelled = [f.label for f in exp.faults if f.kind != "link"]
    if unmodelled:
        log(f"not simulated (processes of the emulated testbed, absent from the flow model): {', '.join(unmodelled)}")
    try:
        for pol in policies:
            t0 = time.perf_counter()
            sim = Simulation(cluster, pol, requests, progress=progress)
            recs = sim.run()
            wall = time.perf_counter() - t0
            rows = [r.to_row() for r in recs]
            run.write_requests(pol, rows)
            s = summarize_exp(rows, exp.slo)
            s["wall_s"] = wall
            s["events"] = sim.events
            s["core"] = sim.core
            if exp.background:
                s["background"] = sim.background_report()
            if exp.faults:
                s["faults"] = sorted(sim.fault_log, key=lambda e: e["t"])
            run.write_policy_summary(pol, s)
            summaries[pol] = s
            meta["wall_s"][pol] = wall
            log(f"  {pol}: {wall:.2f} s wall, {sim.events} events ({sim.core})")
    except KeyboardInterrupt:
        raise KeyboardInterrupt(str(run.root)) from None  # says where the partial results are
    finally:
        partial = len(summaries) < len(policies)
        meta["partial"] = partial
        run.write_meta(meta)
        if summaries:
            run.write_summary(summaries, partial)
    log(format_summary(summaries))
    return run, summaries

"""The `netkv` command: simulate, topo, report (and the emulation commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load(path):
    from .config import load

    return load(path)


def cmd_simulate(a) -> int:
    from .report import make_plots
    from .simulator.run import simulate_experiment

    exp = _load(a.experiment)
    if a.requests is not None:
        exp.trace.requests = a.requests
    for p in a.policy or []:
        if p not in exp.policies and p not in _policy_names():
            raise SystemExit(f"netkv: error: --policy: unknown policy '{p}' (known: {', '.join(_policy_names())})")
    run, _ = simulate_experiment(exp, a.policy, Path(a.out), progress=not a.quiet and sys.stderr.isatty())
    plots = make_plots(run.root)
    print(f"results: {run.root}")
    print(f"plots:   {', '.join(str(p) for p in plots)}")
    return 0


def _policy_names():
    from .scheduler.policies import registry

    return registry.names()


def cmd_topo(a) -> int:
    from .cluster import build_topology, placement
    from .topology import Routing

    if a.experiment:
        exp = _load(a.experiment)
        topo = build_topology(exp)
        routing = Routing(topo, exp.topology.routing)
        pre, dec = placement(exp, topo)
    else:
        from .topology import FatTree

        topo = FatTree(a.k, a.gpus)
        routing = Routing(topo, a.routing)
        pre = dec = None
    s = topo.summary()
    s["routing"] = routing.strategy.name
    if pre is not None:
        s["prefill_instances"], s["decode_instances"] = len(pre), len(dec)
    print(f"four-tier fat-tree k={topo.k}: {topo.n_hosts} GPU instances on {topo.n_servers} servers")
    print(f"  switches: {s['switches']['server']} server, {s['switches']['edge']} edge, "
          f"{s['switches']['agg']} aggregation, {s['switches']['core']} core = {s['switches']['total']}")
    print(f"  directed links: {topo.n_links}; Gbit/s per tier: " +
          ", ".join(f"{k} {v:g}" for k, v in s["link_gbps"].items()))
    print(f"  equal-cost paths: " + ", ".join(f"{k} {v}" for k, v in s["equal_cost_paths"].items()))
    print(f"  routing: {routing.strategy.name}")
    if pre is not None:
        print(f"  placement: {len(pre)} prefill, {len(dec)} decode")
    if a.json:
        Path(a.json).write_text(topo.dumps(routing if a.routes else None))
        print(f"wrote {a.json}")
    return 0


def cmd_report(a) -> int:
    from .report import make_plots
    from .results import RunDir, format_table

    run = RunDir(Path(a.run_dir))
    try:
        doc = run.read_summary()
    except FileNotFoundError:
        raise SystemExit(f"netkv: error: {a.run_dir}: no summary.json (not a run directory)")
    if doc.get("partial"):
        print("(partial run: not every policy finished)")
    print(format_table(doc["policies"]))
    for p in make_plots(run.root):
        print(f"plot: {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="netkv", description="NetKV testbed: network-aware decode selection")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("simulate", help="run an experiment's policies in the flow-level simulator")
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument("--policy", action="append", help="policy to run (repeatable; default: the file's list)")
    p.add_argument("--requests", type=int, help="override trace.requests")
    p.add_argument("--out", default="results", help="parent directory of the run directory (default: results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("topo", help="print a topology summary and optionally export it as JSON")
    p.add_argument("experiment", nargs="?", help="experiment TOML file (else --k/--gpus)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--gpus", type=int, default=4, help="GPUs per server")
    p.add_argument("--routing", default="sum-mod")
    p.add_argument("--json", help="write the description (nodes, ids, links) to this file")
    p.add_argument("--routes", action="store_true", help="include every host pair's routed path in --json")
    p.set_defaults(fn=cmd_topo)

    p = sub.add_parser("report", help="print a run's summary table and draw its plots")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv=None) -> int:
    from .compute import ProfileError
    from .config import ConfigError
    from .trace import TraceError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, TraceError, ProfileError, FileNotFoundError) as e:
        print(f"netkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netkv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

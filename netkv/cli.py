"""The `netkv` command: simulate, topo, report (and the emulation commands)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path


def _load(path, overrides=None, requests: int | None = None):
    """Read an experiment file and build its cluster (every check; --requests applied here, once)."""
    from netkv.config import load
    from netkv.scheduler.cluster import Cluster

    exp = load(path, overrides)
    if requests is not None:
        exp.trace.requests = requests
    return Cluster.build(exp)


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it (exit 2)."""


def _check_policies(names) -> None:
    for i, p in enumerate(names or []):  # names are argparse choices from the policy registry
        if p in names[:i]:
            raise UsageError(f"--policy: '{p}' given twice")


def _check_requests(n) -> None:
    if n is not None and n < 1:
        raise UsageError(f"--requests: must be >= 1, got {n}")


def _print_outputs(root: Path) -> None:
    from netkv.report import make_plots

    plots = make_plots(root)
    print(f"results: {root}")
    print(f"plots:   {', '.join(str(p) for p in plots)}")


def cmd_simulate(a) -> int:
    from netkv.simulator.run import simulate_experiment

    _check_requests(a.requests)
    _check_policies(a.policy)
    cluster = _load(a.experiment, a.set, a.requests)
    run, _ = simulate_experiment(cluster, a.policy, Path(a.out), progress=not a.quiet and sys.stderr.isatty())
    if a.no_plots:
        print(f"results: {run.root}")
    else:
        _print_outputs(run.root)
    return 0


def cmd_emulate(a) -> int:
    from netkv.emulation.fabric import FabricError
    from netkv.emulation.run import emulate_experiment
    from netkv.report import make_plots

    _check_requests(a.requests)
    _check_policies(a.policy)
    cluster = _load(a.experiment, a.set, a.requests)
    try:  # root, tools and the system's OVS (when the layout uses it) are checked before anything starts
        run, _ = emulate_experiment(cluster, a.policy, Path(a.out), cli=a.cli)
        if not a.no_fidelity:
            from netkv.compare import format_fidelity
            from netkv.simulator.replay import fidelity_report

            print("fidelity (the simulator replays this run's choices; errors are emulated vs flow model):")
            rep, out = fidelity_report(run.root, log=lambda *x: None)
            print(format_fidelity(rep))
            print(f"fidelity report: {out / 'fidelity.json'}, {out / 'transfers.png'}")
    except (FabricError, RuntimeError) as e:
        print(f"netkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = str(e) if str(e).startswith(str(a.out)) or "/" in str(e) else a.out
        print(f"netkv: interrupted; partial results kept in {where}", file=sys.stderr)
        try:
            make_plots(where)
        except (FileNotFoundError, KeyError, ValueError):
            pass
        return 130
    _print_outputs(run.root)
    return 0


def _strategy_names() -> list[str]:
    from netkv.topology.routing import STRATEGIES

    return list(STRATEGIES)


def _policy_names():
    from netkv.scheduler.policies import registry

    return registry.names()


def cmd_topo(a) -> int:
    from netkv.topology import FatTree, Routing

    if a.experiment:
        given = [f for f, v in (("--k", a.k), ("--gpus", a.gpus), ("--routing", a.routing)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: the experiment file sets the topology; give one or the other")
        cluster = _load(a.experiment)
        topo = cluster.topo
        routing = Routing(topo, cluster.exp.topology.routing)
        pre, dec = cluster.prefill_hosts, cluster.decode_hosts
    else:
        from netkv.config import parse_section

        try:
            dflt = lambda v, d: d if v is None else v  # noqa: E731
            table = {"k": dflt(a.k, 4), "gpus_per_server": dflt(a.gpus, 4), "routing": dflt(a.routing, "sum-mod")}
            section = parse_section("topology", table, "")
            topo = FatTree.from_config(section)
        except ValueError as e:  # the message names the experiment key; say which flag instead
            msg = str(e).removeprefix(": ").replace("topology.k", "--k").replace("topology.gpus_per_server", "--gpus")
            raise UsageError(msg.replace("topology: k/2 * gpus_per_server", "--k/2 * --gpus")) from None
        routing = Routing(topo, section.routing)
        pre = dec = None
    s = topo.summary()
    s["routing"] = routing.strategy.name
    if pre is not None:
        s["prefill_instances"], s["decode_instances"] = len(pre), len(dec)
    print(f"four-tier fat-tree k={topo.k}: {topo.n_hosts} GPU instances on {topo.n_servers} servers")
    print(
        f"  switches: {s['switches']['server']} server, {s['switches']['edge']} edge, "
        f"{s['switches']['agg']} aggregation, {s['switches']['core']} core = {s['switches']['total']}"
    )
    print(
        f"  directed links: {topo.n_links}; Gbit/s per tier: "
        + ", ".join(f"{k} {v:g}" for k, v in s["link_gbps"].items())
    )
    print("  equal-cost paths: " + ", ".join(f"{k} {v}" for k, v in s["equal_cost_paths"].items()))
    names = {"server": "server switch", "edge": "edge", "agg": "aggregation"}
    print(
        "  oversubscription (down:up): "
        + ", ".join(f"{names[k]} {v:.3g}:1" for k, v in s["oversubscription_by_layer"].items())
    )
    print(
        f"  latency per link: {topo.hop_latency_s * 1e6:g} us + one {topo.mtu_bytes} B packet at the link's rate"
        + " (0: cut-through)" * (topo.mtu_bytes == 0)
    )
    print(f"  routing: {routing.strategy.name}")
    if pre is not None:
        print(f"  placement: {len(pre)} prefill, {len(dec)} decode")
    if a.json:
        Path(a.json).write_text(topo.dumps(routing if a.routes else None))
        print(f"wrote {a.json}")
    return 0


def cmd_report(a) -> int:
    from netkv.report import make_plots
    from netkv.results import RunDir, format_summary

    run = RunDir(Path(a.run_dir))
    try:
        doc = run.read_summary()
    except FileNotFoundError:
        raise UsageError(f"{a.run_dir}: no summary.json (not a run directory)") from None
    if doc.get("partial"):
        print("(partial run: not every policy finished)")
    print(format_summary(doc["policies"]))
    for p in make_plots(run.root):
        print(f"plot: {p}")
    return 0


def _spec_from_args(a):
    from netkv.emulation.fabric import FabricSpec

    if a.experiment:
        spec = FabricSpec.from_experiment(_load(a.experiment).exp)
    else:
        spec = FabricSpec.for_fattree(a.k, a.gpus)
    if a.poll is not None:
        spec.poll_interval = a.poll
    spec.rest_port = a.rest_port
    spec.of_port = a.of_port
    if a.ovs_daemons is not None:
        spec.ovs_daemons = a.ovs_daemons
    if a.servers is not None:
        spec.servers = a.servers
    return spec


def cmd_net_up(a) -> int:
    import signal
    import time

    from netkv.emulation import statedir
    from netkv.emulation.fabric import FabricError, make_fabric
    from netkv.emulation.fidelity import FidelityGuard

    spec = _spec_from_args(a)
    log_dir = Path(a.log_dir)
    try:
        with make_fabric(spec, log_dir) as fab:
            failed = [] if a.no_check else fab.reachability()
            n_pairs = fab.topo.n_hosts * (fab.topo.n_hosts - 1)
            if a.no_check:
                print("reachability: not checked (--no-check)", flush=True)
            else:
                print(f"reachability: {n_pairs - len(failed)} of {n_pairs} host pairs answered ping", flush=True)
            if failed:
                print(f"unreachable pairs (first 10): {failed[:10]}", flush=True)
            statedir.register_net(fab.rest, fab.topo.k, fab.topo.gpus_per_server, log_dir)
            print(f"controller REST API: {fab.rest}/health  (logs: {log_dir})", flush=True)
            with FidelityGuard() as guard:
                if a.cli:
                    from mininet.cli import CLI

                    CLI(fab.net)
                else:
                    print("fabric running; Ctrl-C or `netkv net down` stops it", flush=True)
                    signal.pause() if hasattr(signal, "pause") else time.sleep(10**9)
            rep = guard.report()
            print(f"fidelity: {rep['note']}")
    except KeyboardInterrupt:
        pass
    except FabricError as e:
        print(f"netkv: error: {e}", file=sys.stderr)
        return 2
    finally:
        statedir.unregister_net()
    print("fabric down")
    return 0


def cmd_net_status(a) -> int:
    from netkv.controller.client import ControllerClient
    from netkv.emulation import statedir
    from netkv.emulation.cleanup import find_leftovers

    state = statedir.net_file()
    net_live = state.exists() and state not in statedir.stale_state_entries()
    live = [r for r in statedir.live_runs() if "netkv net up" not in r]
    if live and not net_live:
        print("an emulated run is live: " + "; ".join(live) + " (its bridges and processes are not leftovers)")
        return 0
    if not net_live:
        left = find_leftovers()
        gone = f": {state} names pid {statedir.owner_pid(state)}, which is gone" if state.exists() else ""
        print("no fabric is running" + gone + (f"; leftovers: {'; '.join(left)} (run `netkv clean`)" if left else ""))
        return 1 if left else 0
    st = statedir.read_net() or {}
    client = ControllerClient(st.get("rest", ""))
    try:
        h = client.health()
        links = client.links()
    except (OSError, ValueError) as e:
        print(f"fabric process {st.get('pid')} is registered but its controller does not answer: {e}")
        return 1
    print(f"fabric k={st['k']} x {st['gpus']} GPUs, pid {st['pid']}, logs {st['log_dir']}")
    print(
        f"  switches {h['switches_connected']}/{h['switches_expected']} connected, routes on "
        f"{h['routes_installed']}, polls {h['polls']}, links down {h['links_down']}"
    )
    busy = sorted(links, key=lambda x: -x["utilisation"])[:5]
    for lk in busy:
        print(f"  {lk['src']:>10} -> {lk['dst']:<10} {lk['rate_mbps']:7.1f} / {lk['capacity_mbps']:.0f} Mbit/s")
    return 0


def cmd_net_down(a) -> int:
    import os
    import signal
    import time

    from netkv.emulation import statedir
    from netkv.emulation.cleanup import find_leftovers

    st = statedir.read_net()
    if st and "pid" in st:
        pid = st["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(600):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
    left = find_leftovers()
    if left:
        print("leftovers: " + "; ".join(left) + "; run `netkv clean`")
        return 1
    print("no fabric running; nothing left over")
    return 0


def cmd_clean(a) -> int:
    from netkv.emulation.cleanup import clean, find_leftovers
    from netkv.emulation.statedir import live_runs

    live = live_runs()
    if live and not a.force:
        raise UsageError(
            "a run is live: " + "; ".join(live) + "; `netkv clean` would destroy it: stop it "
            "first (Ctrl-C, or kill its pid), or pass --force"
        )
    before = find_leftovers()
    if not before:
        print("nothing to clean")
        return 0
    print("found: " + "; ".join(before))
    left = clean(force=a.force)
    if left:
        print("still present: " + "; ".join(left), file=sys.stderr)
        return 1
    print("clean")
    return 0


def cmd_compare(a) -> int:
    from netkv.compare import compare_runs, format_comparison

    for d in (a.run_a, a.run_b):
        if not (Path(d) / "summary.json").exists():
            raise UsageError(f"{d}: no summary.json (not a run directory)")
    cmp = compare_runs(a.run_a, a.run_b)
    if a.json:
        Path(a.json).write_text(json.dumps(cmp, indent=1))
    print(format_comparison(cmp, "A", "B"))
    return 0


def cmd_fidelity(a) -> int:
    from netkv.compare import format_fidelity
    from netkv.simulator.replay import fidelity_report

    for d in [a.run, *([a.sim] if a.sim else [])]:
        if not (Path(d) / "summary.json").exists():
            raise UsageError(f"{d}: no summary.json (not a run directory)")
    rep, out = fidelity_report(a.run, a.sim, log=lambda *x: None)
    print(format_fidelity(rep))
    print(f"fidelity report: {out / 'fidelity.json'}, {out / 'transfers.png'}")
    return 0


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by `simulate` and `emulate`."""
    p.add_argument("experiment", help="experiment TOML file")
    p.add_argument(
        "--policy",
        action="append",
        choices=_policy_names(),
        help="policy to run (repeatable; default: the file's list)",
    )
    p.add_argument("--requests", type=int, help="override trace.requests")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a key of the file, e.g. --set emulation.bandwidth_scale=16000 (repeatable)",
    )
    p.add_argument("--out", default="results", help="parent directory of the run directory (default: results)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="netkv", description="NetKV testbed: network-aware decode selection")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("simulate", help="run an experiment's policies in the flow-level simulator")
    _run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-plots", action="store_true", help="write results only (`netkv report RUN` draws the plots later)"
    )
    p.set_defaults(fn=cmd_simulate, exit_fast=True)

    p = sub.add_parser("emulate", help="run an experiment's policies on the emulated testbed (root)")
    _run_arguments(p)
    p.add_argument("--cli", action="store_true", help="open the Mininet CLI on the running testbed before teardown")
    p.add_argument("--no-fidelity", action="store_true", help="skip the fidelity report (`netkv fidelity RUN` later)")
    p.set_defaults(fn=cmd_emulate)

    p = sub.add_parser("topo", help="print a topology summary and optionally export it as JSON")
    p.add_argument("experiment", nargs="?", help="experiment TOML file (else --k/--gpus/--routing)")
    p.add_argument("--k", type=int, help="pods (default 4)")
    p.add_argument("--gpus", type=int, help="GPUs per server (default 4)")
    p.add_argument("--routing", choices=_strategy_names(), help="path choice among equal-cost paths (default sum-mod)")
    p.add_argument("--json", help="write the description (nodes, ids, links) to this file")
    p.add_argument("--routes", action="store_true", help="include every host pair's routed path in --json")
    p.set_defaults(fn=cmd_topo)

    net = sub.add_parser("net", help="the emulated fabric alone: up (foreground), status, down")
    nsub = net.add_subparsers(dest="net_cmd", required=True)
    p = nsub.add_parser("up", help="start controller + Mininet fabric; runs until Ctrl-C or `netkv net down`")
    p.add_argument("experiment", nargs="?", help="experiment TOML (topology, emulation, telemetry)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--poll", type=float, help="controller poll interval, wall seconds")
    p.add_argument("--rest-port", type=int, default=8080)
    p.add_argument("--of-port", type=int, default=6653, help="OpenFlow port (--ovs-daemons shared)")
    p.add_argument(
        "--ovs-daemons",
        choices=["switch", "shared"],
        help="one ovs-vswitchd per switch (default) or the system's for the whole fabric",
    )
    p.add_argument(
        "--servers",
        type=int,
        default=None,
        help="across N stand-in servers (namespaces over SSH; needs --ovs-daemons shared); 0: this machine",
    )
    p.add_argument("--log-dir", default="results/net")
    p.add_argument("--cli", action="store_true", help="open the Mininet CLI")
    p.add_argument("--no-check", action="store_true", help="skip the full ping check")
    p.set_defaults(fn=cmd_net_up)
    p = nsub.add_parser("status", help="health and busiest links of the running fabric")
    p.set_defaults(fn=cmd_net_status)
    p = nsub.add_parser("down", help="stop the running fabric")
    p.set_defaults(fn=cmd_net_down)

    p = sub.add_parser("clean", help="remove leftovers of crashed emulated runs (bridges, veths, processes)")
    p.add_argument("--force", action="store_true", help="also when a run is live (destroys it)")
    p.set_defaults(fn=cmd_clean)

    p = sub.add_parser("compare", help="compare two runs request by request (e.g. simulated vs emulated)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--json", help="also write the comparison as JSON")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser(
        "fidelity",
        help="how far an emulated run is from the flow model: the simulator replays its choices; "
        "per-transfer and per-tier errors, TTFT error, rankings (JSON + PNG in RUN/fidelity/)",
    )
    p.add_argument("run", help="an emulated run directory")
    p.add_argument("--sim", help="a simulated run of the same experiment for the ranking (default: simulate it)")
    p.set_defaults(fn=cmd_fidelity)

    p = sub.add_parser("report", help="print a run's summary table and draw its plots")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    return ap


def main(argv=None, exit_fast: bool = False) -> int:
    """Run one command; returns its exit status. `exit_fast` (the installed command): a command that
    holds nothing but its results in memory (`simulate`) ends the process once its output is flushed,
    without freeing its objects one by one (see `_exit_now`)."""
    from netkv.compare import CompareError
    from netkv.compute import ProfileError
    from netkv.config import ConfigError
    from netkv.results import RunDirError
    from netkv.trace import TraceError

    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows up in a log file or a pipe as it happens
    if exit_fast and getattr(args, "exit_fast", False):
        # this process ends by _exit_now: the cyclic collector has nothing to give back before then,
        # and its passes over a simulation's objects (trace, records, rows) cost ~2% of the command
        gc.disable()
    try:
        code = args.fn(args)
        if exit_fast and getattr(args, "exit_fast", False):
            _exit_now(code)
        return code
    except (UsageError, ConfigError, TraceError, ProfileError, RunDirError, CompareError) as e:
        print(f"netkv: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output or input path that cannot be used (a file, a directory, no permission)
        where = f"{e.filename}: " if e.filename else ""
        print(f"netkv: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = f"; partial results kept in {e}" if str(e) else ""
        print(f"netkv: interrupted{where}", file=sys.stderr)
        return 130


def _exit_now(code: int) -> None:
    """End the process at once with `code`, its output flushed. A simulation leaves millions of
    small objects (records, trace tuples, caches) that the interpreter would free one by one at exit:
    ~0.2 s of a 3.5 s `netkv simulate` of the whole paper trace. Every file the command wrote is
    closed by then (written to a temporary name and renamed); no atexit handler is needed (the same
    shortcut Instagram takes for its web workers: "Dismissing Python Garbage Collection at
    Instagram", 2017)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def console() -> None:
    """The installed `netkv` command."""
    sys.exit(main(exit_fast=True))


if __name__ == "__main__":
    console()

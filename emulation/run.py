"""`netkv emulate`: fabric up, agents in their hosts, each policy in turn, teardown, results and plots.

Per policy: the agents are reset (fresh queues and caches), the background traffic restarts, and a
scheduler service process replays the trace window; its per-request JSONL and summary land in the
run directory beside the simulator's format. Ctrl-C stops the running policy (its results are
written and marked partial), tears everything down and keeps what was written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from netkv import __version__
from netkv.emulation.background import BackgroundError, BackgroundMonitor, BackgroundTraffic, delivered_report, format_report
from netkv.emulation.cleanup import STATE_DIR
from netkv.topology.placement import build_topology, placement
from netkv.compute import compute_from_config
from netkv.emulation.fabric import Fabric, FabricSpec
from netkv.emulation.fidelity import FidelityGuard
from netkv.results import RunDir, format_table
from netkv.topology import Routing
from netkv.trace import window_from_config

AGENT_ENV = {"NETKV_RUN": "netkv"}


def start_agents(fab: Fabric, exp_path: Path, pre, dec, sock_dir: Path, log_dir: Path,
                 overrides: list[str] = ()) -> dict[str, subprocess.Popen]:
    procs = {}
    sock_dir.mkdir(parents=True, exist_ok=True)
    for role, hosts in (("prefill", pre), ("decode", dec)):
        for h in hosts:
            name = fab.topo.hosts[h].name
            logf = open(log_dir / f"agent-{name}.log", "wb")
            procs[name] = fab.host(name).popen(
                [sys.executable, "-m", "netkv.agents.agent", "--role", role, "--host", name,
                 "--experiment", str(exp_path), "--sock-dir", str(sock_dir),
                 *[x for ov in overrides for x in ("--set", ov)]],
                stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **AGENT_ENV})
            logf.close()
    deadline = time.monotonic() + 120
    for name, p in procs.items():
        while not (sock_dir / f"{name}.sock").exists():
            if p.poll() is not None:
                raise RuntimeError(f"agent {name} exited at start; see {log_dir / f'agent-{name}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {name} did not open its socket within 120 s")
            time.sleep(0.1)
    return procs


def stop_agents(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def emulate_experiment(exp, policies=None, out: Path = Path("results"), cli: bool = False,
                       requests: int | None = None, log=print, on_running=None) -> tuple[RunDir, dict]:
    """Run the experiment's policies on the emulated testbed; returns the run dir and summaries.

    `on_running(fabric, agents, policy)` is called once per policy after its scheduler started
    (tests use it to inject failures)."""
    if exp.path is None:
        raise ValueError("emulate needs an experiment file on disk")
    policies = policies or exp.policies
    if requests is not None:
        exp.trace.requests = requests
    topo = build_topology(exp)
    compute = compute_from_config(exp)
    reqs = window_from_config(exp)
    pre, dec = placement(exp, topo)
    spec = FabricSpec.from_experiment(exp)
    Fabric(spec, Path("."), log=log).preflight()  # refuse before writing anything
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = RunDir.create(out, f"{exp.name}-emu", stamp, exp.path)
    logs = run.root / "logs"
    logs.mkdir()
    sock_dir = STATE_DIR / f"sock-{stamp}-{os.getpid()}"
    meta = {
        "mode": "emulate", "experiment": exp.name, "netkv_version": __version__, "started_utc": stamp,
        "seed": exp.seed, "policies": policies, "requests": len(reqs), "prefill_instances": len(pre),
        "decode_instances": len(dec), "topology": topo.summary(), "compute": compute.describe(),
        "emulation": {k: getattr(exp.emulation, k) for k in exp.emulation.__dataclass_fields__},
        "byte_scale": exp.emulation.byte_scale, "overrides": exp.overrides, "wall_s": {}, "partial": True,
    }
    run.write_meta(meta)
    summaries: dict[str, dict] = {}
    interrupted = False
    D = exp.emulation.time_dilation
    span = reqs[-1].arrival_s * D
    log(f"emulating {len(reqs)} requests ({span:.0f} s of wall-clock arrivals per policy, time dilation {D:g}) on "
        f"{len(pre)} prefill + {len(dec)} decode agents, k={topo.k} fat-tree -> {run.root}")
    guard = FidelityGuard()
    agents: dict[str, subprocess.Popen] = {}
    try:
        # mark this run as live before any bridge exists, so that `netkv net status` and `netkv clean`
        # name it instead of calling its fabric leftovers
        sock_dir.mkdir(parents=True, exist_ok=True)
        (sock_dir / "owner.json").write_text(json.dumps(
            {"what": f"netkv emulate {exp.path or exp.name}", "run_dir": str(run.root)}))
        with Fabric(spec, logs, log=log) as fab:
            meta["fabric_up_s"] = fab.timings.get("ready_s")
            failed = fab.reachability()
            if failed:
                raise RuntimeError(f"{len(failed)} host pairs unreachable after bring-up, e.g. {failed[:3]}")
            agents = start_agents(fab, run.root / "experiment.toml", pre, dec, sock_dir, logs, exp.overrides)
            guard.start()
            bg = BackgroundTraffic(fab, exp, logs, env=AGENT_ENV)
            mon = BackgroundMonitor(fab.rest, spec.poll_interval)
            routing = Routing(topo, exp.topology.routing)
            for pol in policies:
                bg.start()
                if bg.pairs:
                    mon.start()
                t0 = time.monotonic()
                args = [sys.executable, "-m", "netkv.scheduler.service", "--experiment", str(run.root / "experiment.toml"),
                        "--policy", pol, "--run-dir", str(run.root), "--sock-dir", str(sock_dir), "--rest", fab.rest]
                if requests is not None:
                    args += ["--requests", str(requests)]
                for ov in exp.overrides:
                    args += ["--set", ov]
                log(f"policy {pol}: replaying")
                svc = subprocess.Popen(args, start_new_session=True)
                bg_error = None
                try:
                    if on_running is not None:
                        on_running(fab, agents, pol)
                    while (rc := svc.poll()) is None:
                        bg_error = bg.error()
                        if bg_error:
                            svc.send_signal(signal.SIGINT)  # it writes what it has, marked partial
                            rc = svc.wait(timeout=120)
                            break
                        time.sleep(0.2)
                except KeyboardInterrupt:
                    interrupted = True
                    svc.send_signal(signal.SIGINT)
                    svc.wait(timeout=120)
                    rc = 130
                finally:
                    mon.stop()
                    bg.stop()
                meta["wall_s"][pol] = time.monotonic() - t0
                if bg_error:
                    raise BackgroundError(f"policy {pol}: {bg_error} (logs in {logs})")
                try:
                    summaries[pol] = RunDir(run.root).read_policy_summary(pol)
                except FileNotFoundError:
                    raise RuntimeError(f"policy {pol}: the scheduler service failed (exit code {rc}) and wrote "
                                       "no results; its error is printed above") from None
                if bg.pairs:
                    rep = delivered_report(topo, routing, bg.pairs, mon.snapshots, spec.poll_interval,
                                           spec.bandwidth_scale, since=mon.started_at)
                    summaries[pol]["background"] = rep
                    RunDir(run.root).write_policy_summary(pol, summaries[pol])
                    meta.setdefault("background", {})[pol] = rep
                    for line in format_report(rep):
                        log(f"policy {pol}: {line}")
                if interrupted:
                    break
                log(f"policy {pol}: done in {meta['wall_s'][pol]:.0f} s")
            if cli and not interrupted:
                from mininet.cli import CLI

                log("opening the Mininet CLI on the running testbed (exit to tear down)")
                CLI(fab.net)
            guard.stop()
            stop_agents(agents)
            meta["teardown"] = "ok"
    except KeyboardInterrupt:
        interrupted = True
    finally:
        guard.stop()
        stop_agents(agents)
        shutil.rmtree(sock_dir, ignore_errors=True)
        partial = interrupted or len(summaries) < len(policies) or any(s.get("partial") for s in summaries.values())
        meta["partial"] = partial
        meta["fidelity"] = guard.report()
        run.write_meta(meta)
        if summaries:
            run.write_summary(summaries, partial)
    if meta["fidelity"].get("flagged"):
        log(f"WARNING: {meta['fidelity']['note']}")
    log(format_table(summaries))
    if interrupted:
        raise KeyboardInterrupt(str(run.root))
    return run, summaries

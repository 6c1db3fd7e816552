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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from netkv import __version__
from netkv.agents.agent import command as agent_command
from netkv.config import to_dict
from netkv.emulation import statedir
from netkv.emulation.background import (
    BackgroundError,
    BackgroundMonitor,
    BackgroundTraffic,
    delivered_report,
    format_report,
)
from netkv.emulation.fabric import Fabric, FabricSpec, make_fabric
from netkv.emulation.faults import FaultInjector
from netkv.emulation.fidelity import FidelityGuard
from netkv.results import RunDir, format_summary
from netkv.scheduler import journal
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import ORACLES, probe_pairs
from netkv.scheduler.service import clock_file, probes_file, resumed_file
from netkv.topology import Routing
from netkv.trace import window_from_config

AGENT_ENV = {"NETKV_RUN": "netkv"}
EXPERIMENT_JSON = "experiment.json"  # the validated experiment every process of the run reads


def start_agents(fab: Fabric, exp_json: Path, pre, dec, sock_dir: Path, log_dir: Path) -> dict[str, subprocess.Popen]:
    """Start the prefill and decode agents in their hosts; returns once every one listens."""
    sock_dir.mkdir(parents=True, exist_ok=True)
    fab.share(files=[exp_json], dirs=[sock_dir])  # other servers: the experiment, a socket directory
    procs = {}
    for role, hosts in (("prefill", pre), ("decode", dec)):
        for h in hosts:
            name = fab.topo.hosts[h].name
            procs[name] = _spawn_agent(fab, exp_json, role, name, sock_dir, log_dir)
    _wait_agents(fab, procs, sock_dir, log_dir)
    return procs


def _spawn_agent(fab: Fabric, exp_json: Path, role: str, name: str, sock_dir: Path, log_dir: Path):
    fab.forget_socket(sock_dir, name)  # a killed agent's socket file stays behind
    with open(log_dir / f"agent-{name}.log", "ab") as logf:
        return fab.host(name).popen(
            agent_command(role, name, exp_json, sock_dir),
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AGENT_ENV},
        )


def _wait_agents(fab: Fabric, procs: dict[str, subprocess.Popen], sock_dir: Path, log_dir: Path) -> None:
    # each agent's start (Python, numpy) costs ~0.15 s of CPU: 512 of them take a minute on 2 cores
    limit = 120 + 0.5 * len(procs)
    deadline = time.monotonic() + limit
    pending = dict(procs)
    while True:
        for name in fab.sockets_ready(sock_dir, list(pending)):
            del pending[name]
        if not pending:
            return
        for name, p in pending.items():
            if p.poll() is not None:
                raise RuntimeError(f"agent {name} exited at start; see {log_dir / f'agent-{name}.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent {next(iter(pending))} did not open its socket within {limit:.0f} s")
        time.sleep(fab.socket_poll_s)


def start_prober(fab: Fabric, cluster: Cluster, out: Path, log_dir: Path, label: str) -> subprocess.Popen:
    """The probe oracle's prober (netkv.agents.prober) over the cluster's (prefill, decode) pairs, in
    the order the simulator probes them, one train every probe_interval_s x time_dilation wall s."""
    exp, topo = cluster.exp, cluster.topo
    te = exp.telemetry

    def host(h):
        node = fab.host(topo.hosts[h].name)
        return [node.name, node.pid, node.IP()]

    spec = {
        "pairs": [host(p) + host(d) for p, d in probe_pairs(cluster.prefill_hosts, cluster.decode_hosts, exp.seed)],
        "interval_s": te.probe_interval_s * exp.emulation.time_dilation,
        "packets": te.probe_packets,
        "packet_bytes": te.probe_packet_bytes or exp.emulation.mtu,
        "bandwidth_scale": exp.emulation.bandwidth_scale,
        "out": str(out),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    spec_path = log_dir / f"prober-{label}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    with open(log_dir / f"prober-{label}.log", "ab") as logf:
        return subprocess.Popen(
            [sys.executable, "-m", "netkv.agents.prober", str(spec_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **AGENT_ENV},
        )


def _prober_error(p: subprocess.Popen | None, log_dir: Path, label: str) -> str | None:
    """Why the prober stopped during the run (a failing child process is an error), or None."""
    if p is None or p.poll() is None:
        return None
    return f"the prober exited (code {p.returncode}); see {log_dir / f'prober-{label}.log'}"


def stop_prober(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


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


class _Processes:
    """One policy's scheduler service process and the run's agents, as the fault injector kills and
    starts them (`netkv.emulation.faults.Processes`)."""

    def __init__(self, args: list[str], sock_dir: Path, policy: str, agents: dict, start_agent):
        self.args, self.sock_dir, self.policy = args, sock_dir, policy
        self.agents, self._start_agent = agents, start_agent
        self.lock = threading.Lock()
        self.down = False  # the service was killed by a fault and not yet restarted
        self.proc = subprocess.Popen(args, start_new_session=True)

    def poll(self) -> int | None:
        """The service's exit code once it has ended (not while a fault holds it down)."""
        with self.lock:
            return None if self.down else self.proc.poll()

    def signal(self, sig) -> None:
        with self.lock:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_scheduler(self) -> None:
        with self.lock:
            self.down = True
            self.proc.kill()
            self.proc.wait(10)

    def restart_scheduler(self) -> float:
        t0 = time.monotonic()
        marker = resumed_file(self.sock_dir, self.policy)
        marker.unlink(missing_ok=True)
        with self.lock:
            self.proc = subprocess.Popen([*self.args, "--resume"], start_new_session=True)
            self.down = False
        while not marker.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the restarted scheduler service exited (code {self.proc.returncode})")
            if time.monotonic() - t0 > 120:
                raise RuntimeError("the restarted scheduler service did not resume within 120 s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def kill_agent(self, host: str) -> None:
        p = self.agents[host]
        p.kill()
        p.wait(10)

    def start_agent(self, host: str) -> None:
        self.agents[host] = self._start_agent(host)


class _Run:
    """One `netkv emulate`: the cluster, its run directory and what has been collected so far."""

    def __init__(self, cluster: Cluster, policies: list[str], out: Path, log):
        exp = cluster.exp
        self.cluster, self.exp, self.policies, self.log = cluster, exp, policies, log
        self.reqs = window_from_config(exp)
        self.spec = FabricSpec.from_experiment(exp)
        make_fabric(self.spec, Path("."), log=log).preflight()  # refuse before writing anything
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run = RunDir.create(out, f"{exp.name}-emu", stamp, exp.path)
        self.logs = self.run.root / "logs"
        self.logs.mkdir()
        self.exp_json = self.run.root / EXPERIMENT_JSON
        self.exp_json.write_text(json.dumps(to_dict(exp), indent=1))
        self.stamp = stamp
        self.summaries: dict[str, dict] = {}
        self.interrupted = False
        self.guard = FidelityGuard()
        topo = cluster.topo
        self.meta = {
            "mode": "emulate",
            "experiment": exp.name,
            "netkv_version": __version__,
            "started_utc": stamp,
            "seed": exp.seed,
            "policies": policies,
            "requests": len(self.reqs),
            "prefill_instances": len(cluster.prefill_hosts),
            "decode_instances": len(cluster.decode_hosts),
            "topology": topo.summary(),
            "compute": cluster.compute.describe(),
            "emulation": {k: getattr(exp.emulation, k) for k in exp.emulation.__dataclass_fields__},
            "byte_scale": exp.emulation.byte_scale,
            "overrides": exp.overrides,
            "wall_s": {},
            "partial": True,
        }
        self.run.write_meta(self.meta)

    def policy(
        self,
        fab: Fabric,
        sock_dir: Path,
        pol: str,
        bg: BackgroundTraffic,
        mon: BackgroundMonitor,
        agents,
        on_running,
    ) -> None:
        """Replay the trace with one policy: background on, faults on the trace clock, the
        scheduler service, results collected."""
        tcp0, drops0 = fab.tcp_counters(), fab.queue_drops()
        bg.start()
        if bg.pairs:
            mon.start()
        clock = clock_file(sock_dir, pol)
        clock.unlink(missing_ok=True)
        t0 = time.monotonic()
        args = [
            sys.executable,
            "-m",
            "netkv.scheduler.service",
            "--experiment",
            str(self.exp_json),
            "--policy",
            pol,
            "--run-dir",
            str(self.run.root),
            "--sock-dir",
            str(sock_dir),
            "--rest",
            fab.rest,
        ]
        self.log(f"policy {pol}: replaying")
        prober = None
        if getattr(ORACLES.get(self.exp.telemetry.oracle), "probes", False):
            prober = start_prober(fab, self.cluster, probes_file(self.run.root, pol), self.logs, pol)
        svc = _Processes(args, sock_dir, pol, agents, lambda h: self._restart_agent(fab, sock_dir, h))
        faults = FaultInjector(fab, self.exp, svc)
        faults.start(clock)
        bg_error = None
        try:
            if on_running is not None:
                on_running(fab, agents, pol)
            rebased = False
            while (rc := svc.poll()) is None:
                if not rebased and clock.exists():
                    # the replay has started: count from here, not from the agents' reset (the first
                    # policy's reset opens every KV connection, a storm of handshakes at k = 8)
                    tcp0, drops0, rebased = fab.tcp_counters(), fab.queue_drops(), True
                bg_error = bg.error() or faults.error() or _prober_error(prober, self.logs, pol)
                if bg_error:
                    svc.signal(signal.SIGINT)  # it writes what it has, marked partial
                    rc = svc.wait(timeout=120)
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.interrupted = True
            svc.signal(signal.SIGINT)
            svc.wait(timeout=120)
            rc = 130
        finally:
            stop_prober(prober)
            faults.stop()
            mon.stop()
            bg.stop()
        self.meta["wall_s"][pol] = time.monotonic() - t0
        tcp = {k: v - tcp0[k] for k, v in fab.tcp_counters().items()}
        self.meta.setdefault("tcp", {})[pol] = tcp
        drops = {k: v - drops0.get(k, 0) for k, v in fab.queue_drops().items()}
        self.meta.setdefault("queue_drops", {})[pol] = drops
        self.log(
            f"policy {pol}: TCP on the hosts (KV and background): {tcp['Tcp.RetransSegs']} of "
            f"{tcp['Tcp.OutSegs']} segments retransmitted, {tcp['TcpExt.TCPTimeouts']} retransmission timeouts, "
            f"{tcp['TcpExt.TCPLossProbes']} tail-loss probes; packets dropped by the queues: "
            + (", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) or "none")
        )
        if bg_error:
            raise BackgroundError(f"policy {pol}: {bg_error} (logs in {self.logs})")
        try:
            self.summaries[pol] = RunDir(self.run.root).read_policy_summary(pol)
        except FileNotFoundError:
            raise RuntimeError(
                f"policy {pol}: the scheduler service failed (exit code {rc}) and wrote "
                "no results; its error is printed above"
            ) from None
        try:  # the guard also judges the samples taken while this policy's KV moved
            self.guard.add_windows(transfer_windows(self.run.root, pol, self.exp.emulation.time_dilation).values())
        except (journal.JournalError, FileNotFoundError) as e:
            self.log(f"policy {pol}: the fidelity guard judges the whole run only ({e})")
        if faults.events:
            self.summaries[pol]["faults"] = faults.report()
            RunDir(self.run.root).write_policy_summary(pol, self.summaries[pol])
            self.meta.setdefault("faults", {})[pol] = faults.report()
            late = max((abs(e["late_s"]) for e in faults.report()), default=0.0)
            rec = [f"{e['fault']} {e['recovery_wall_s']:.1f} s" for e in faults.report() if "recovery_wall_s" in e]
            self.log(
                f"policy {pol}: {len(faults.report())} fault changes injected (at most {late * 1e3:.0f} ms late)"
                + (f"; back after (wall): {', '.join(rec)}" if rec else "")
            )
        if bg.pairs:
            self._background(pol, bg, mon)

    def _restart_agent(self, fab: Fabric, sock_dir: Path, host: str) -> subprocess.Popen:
        """Start a killed agent afresh (the next scheduler resets it like the others)."""
        h = self.cluster.topo.host_index[host]
        role = "prefill" if h in self.cluster.prefill_hosts else "decode"
        p = _spawn_agent(fab, self.exp_json, role, host, sock_dir, self.logs)
        _wait_agents(fab, {host: p}, sock_dir, self.logs)
        return p

    def _background(self, pol: str, bg: BackgroundTraffic, mon: BackgroundMonitor) -> None:
        topo = self.cluster.topo
        rep = delivered_report(
            topo,
            Routing(topo, self.exp.topology.routing),
            bg.pairs,
            mon.snapshots,
            self.spec.poll_interval,
            self.spec.bandwidth_scale,
            since=mon.started_at,
        )
        self.summaries[pol]["background"] = rep
        RunDir(self.run.root).write_policy_summary(pol, self.summaries[pol])
        self.meta.setdefault("background", {})[pol] = rep
        for line in format_report(rep):
            self.log(f"policy {pol}: {line}")

    def finish(self, guard: FidelityGuard) -> None:
        s = self.summaries
        partial = self.interrupted or len(s) < len(self.policies) or any(x.get("partial") for x in s.values())
        self.meta["partial"] = partial
        self.meta["fidelity"] = guard.report()
        guard.write_samples(self.logs / "guard.csv")
        self.run.write_meta(self.meta)
        if s:
            self.run.write_summary(s, partial)


def transfer_windows(run_root: Path, pol: str, dilation: float) -> dict[int, tuple[float, float]]:
    """Request id -> wall-clock span of its KV transfer (prefill end to KV arrival), from the policy's
    records and the wall instant of its trace time 0 (the journal's start record)."""
    t0 = journal.read(journal.journal_path(run_root, pol))[0]["t0"]
    spans = {}
    for r in RunDir(run_root).read_requests(pol):
        a, b = r.get("t_prefill_end"), r.get("t_transfer_end")
        if a is not None and b is not None:
            spans[r["id"]] = (t0 + a * dilation, t0 + b * dilation)
    return spans


def guard_verdict(run_root: Path) -> dict:
    """The fidelity guard's verdict on a finished run, judged again from its samples (logs/guard.csv)
    and its transfers under the current rules."""
    run = RunDir(run_root)
    meta = run.read_meta()
    guard = FidelityGuard.from_csv(Path(run_root) / "logs" / "guard.csv", meta["fidelity"].get("interval_s", 0.5))
    for pol in run.read_summary()["policies"]:
        guard.add_windows(transfer_windows(run_root, pol, meta["emulation"]["time_dilation"]).values())
    return guard.report()


def emulate_experiment(
    exp, policies=None, out: Path = Path("results"), cli: bool = False, log=print, on_running=None
) -> tuple[RunDir, dict]:
    """Run the experiment's policies on the emulated testbed; returns the run dir and summaries.

    `exp`: a built Cluster, or an Experiment (its cluster is built here); it must come from a file.
    `on_running(fabric, agents, policy)` is called once per policy after its scheduler started
    (tests use it to inject failures)."""
    cluster = exp if isinstance(exp, Cluster) else Cluster.build(exp)
    if cluster.exp.path is None:
        raise ValueError("emulate needs an experiment file on disk")
    r = _Run(cluster, policies or cluster.exp.policies, out, log)
    D = cluster.exp.emulation.time_dilation
    log(
        f"emulating {len(r.reqs)} requests ({r.reqs[-1].arrival_s * D:.0f} s of wall-clock arrivals per policy, "
        f"time dilation {D:g}) on {len(cluster.prefill_hosts)} prefill + {len(cluster.decode_hosts)} decode "
        f"agents, k={cluster.topo.k} fat-tree -> {r.run.root}"
    )
    guard = r.guard
    agents: dict[str, subprocess.Popen] = {}
    sock_dir = statedir.claim_run(r.stamp, f"netkv emulate {cluster.exp.path}", r.run.root)
    try:
        fabric = make_fabric(r.spec, r.logs, log=log)
        fabric.run_dirs = [r.run.root, sock_dir]
        with fabric as fab:
            r.meta["fabric_up_s"] = fab.timings.get("ready_s")
            # whether the shapers' timers could count on awake CPUs (emulation/pollidle.py)
            r.meta["poll_idle"] = {"asked": r.spec.poll_idle, "held": fab.poll_idle.held, "error": fab.poll_idle.error}
            n, t0 = fab.topo.n_hosts, time.monotonic()
            log(f"pinging all {n * (n - 1)} host pairs (each pair's first packets set up flows in every switch)")
            failed = fab.reachability()
            if failed:
                raise RuntimeError(f"{len(failed)} host pairs unreachable after bring-up, e.g. {failed[:3]}")
            log(f"all {n * (n - 1)} host pairs answered ping ({time.monotonic() - t0:.1f} s); starting {n} agents")
            t0 = time.monotonic()
            agents = start_agents(fab, r.exp_json, cluster.prefill_hosts, cluster.decode_hosts, sock_dir, r.logs)
            r.meta["agents_up_s"] = round(time.monotonic() - t0, 1)
            log(f"agents listening ({r.meta['agents_up_s']:.1f} s)")
            guard.start()
            bg = BackgroundTraffic(fab, cluster.exp, r.logs, env=AGENT_ENV)
            mon = BackgroundMonitor(fab.rest, r.spec.poll_interval)
            for pol in r.policies:
                r.policy(fab, sock_dir, pol, bg, mon, agents, on_running)
                if r.interrupted:
                    break
                log(f"policy {pol}: done in {r.meta['wall_s'][pol]:.0f} s")
            if cli and not r.interrupted:
                from mininet.cli import CLI

                log("opening the Mininet CLI on the running testbed (exit to tear down)")
                CLI(fab.net)
            guard.stop()
            stop_agents(agents)
            r.meta["teardown"] = "ok"
    except KeyboardInterrupt:
        r.interrupted = True
    finally:
        guard.stop()
        stop_agents(agents)
        shutil.rmtree(sock_dir, ignore_errors=True)
        r.finish(guard)
    if r.meta["fidelity"].get("flagged"):
        log(f"WARNING: {r.meta['fidelity']['note']}")
    log(format_summary(r.summaries))
    if r.interrupted:
        raise KeyboardInterrupt(str(r.run.root))
    return r.run, r.summaries

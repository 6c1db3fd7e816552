"""Background traffic in emulation: iperf3 elephants per [[background]] entry, and what they delivered.

`BackgroundTraffic` runs one iperf3 server/client pair per (src, dst) pair of every entry inside the
Mininet hosts, on the entry's on/off schedule in dilated wall time. An always-on flow runs for the
whole policy run: iperf3 caps one test at 86,400 s, so a client that finishes its test normally is
started again at once; a client or server that exits on its own with an error is an error of the
run (`BackgroundError`, naming the entry and quoting iperf3), never retried. Every process's output
is appended to `logs/bg-<entry>-<src>-<dst>-{server,client}.log`.

`BackgroundMonitor` samples the controller's per-link counters while a policy runs, and
`delivered_report` turns the samples into, per pair: the rate on the last link of its path (into
the destination: what was delivered) while it was on and while it was off, and the rate on the
first link (out of the source: what was sent, retransmissions included), beside the max-min share
the flow model gives the background flows that were on at the time (`flow_model_shares`). Link
counters see all traffic on a link: a destination that also receives KV or another elephant reads
higher than the elephant alone, and a source that also sends does on the first link.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netkv.messages import log_reason
from netkv.simulator.maxmin import maxmin_rates

IPERF_MAX_S = 86400  # iperf3 refuses a longer test ("test duration too long")
# Client source ports: CPORT_BASE + (server port mod 64) + 64 x m keeps the low bits (the fair-queue
# bucket) of a pair; m runs on across on-periods and across runs in this process, so that no client
# binds a 4-tuple still in TIME_WAIT from a run a few seconds earlier (iperf3 --cport fails with
# "Address already in use" then). Each process starts at a random slot: two processes started in
# quick succession (consecutive pids) would otherwise walk the same slots within TIME_WAIT's 60 s.
# The ports stay below Linux's ephemeral range (32768-60999 by default): a port in it may be the
# kernel's pick for another connection to the same server port (iperf3's own control connection, or
# one still in TIME_WAIT), which made a client fail now and then.
CPORT_BASE = 8192  # a multiple of 64, above the server ports
CPORT_SLOTS = 384  # 8192 + 63 + 64 x 383 = 32767
_cport_seq = itertools.count(random.SystemRandom().randrange(CPORT_SLOTS))
BASE_PORT = 5400
SETTLE_S = 2.0  # wall seconds after a flow starts or stops before its counters count as steady (TCP converging)


class BackgroundError(RuntimeError):
    """A background traffic source failed; the message names the entry and quotes the process."""


@dataclass
class BgPair:
    """One elephant: entry index, host indices, TCP port, demand cap (real bytes/s, inf = elastic)."""

    entry: int
    src: int
    dst: int
    port: int
    demand_Bps: float = math.inf
    on: list[list[float]] = field(default_factory=list)  # [start, end] wall times (end inf while on)


def pairs_of(topo, background) -> list[BgPair]:
    from netkv.topology.placement import background_pairs

    out = []
    for i, bg in enumerate(background):
        demand = math.inf if bg.rate_gbps is None else bg.rate_gbps * 1e9 / 8
        for s, d in background_pairs(topo, bg):
            out.append(BgPair(i, s, d, BASE_PORT + len(out), demand))
    return out


def flow_model_shares(topo, routing, pairs: list[BgPair], on: list[bool]) -> np.ndarray:
    """Max-min rate (real bytes/s) of each pair that is on, with only the background on the fabric."""
    idx = [i for i, x in enumerate(on) if x]
    out = np.zeros(len(pairs))
    if not idx:
        return out
    cap = np.array([lk.bytes_per_s for lk in topo.links])
    links = [np.asarray(routing.path(pairs[i].src, pairs[i].dst)) for i in idx]
    out[idx] = maxmin_rates(links, cap, np.array([pairs[i].demand_Bps for i in idx]))
    return out


def _state(p: BgPair, t0: float, t1: float, settle: float) -> str:
    """'on' if p ran steadily over [t0, t1], 'off' if it was stopped (and drained) throughout, else ''."""
    for a, b in p.on:
        if a + settle <= t0 and t1 <= b:
            return "on"
        if a < t1 and t0 - settle < b:
            return ""
    return "off"


def delivered_report(
    topo,
    routing,
    pairs: list[BgPair],
    snapshots: list[dict],
    poll_s: float,
    scale: float,
    settle: float = SETTLE_S,
    since: float = -math.inf,
) -> list[dict]:
    """Per pair: counter rates on its path while on / off beside the flow model's share (Gbit/s, real).

    `snapshots` are `/netkv/links` documents (emulated Mbit/s, wall `sampled_at`); `scale` is the
    bandwidth scale (real rate = emulated rate x scale). Windows that began before `since` (the
    run's start: counters may still show the previous policy run's elephants) are ignored."""
    paths = [list(routing.path(p.src, p.dst)) for p in pairs]
    on_meas: list[list[float]] = [[] for _ in pairs]
    on_exp: list[list[float]] = [[] for _ in pairs]
    on_sent: list[list[float]] = [[] for _ in pairs]
    off_meas: list[list[float]] = [[] for _ in pairs]
    seen: list[set] = [set() for _ in pairs]
    share_cache: dict[tuple, np.ndarray] = {}
    for snap in snapshots:
        links = snap["links"]
        for k, p in enumerate(pairs):
            ls = [links[i] for i in paths[k]]
            stamps = [x["sampled_at"] for x in ls]
            if any(s is None for s in stamps) or not all(x["up"] for x in ls):
                continue
            key = tuple(stamps)
            if key in seen[k]:
                continue
            seen[k].add(key)
            t0, t1 = min(stamps) - poll_s, max(stamps)
            if t0 < since:
                continue
            rate = ls[-1]["rate_mbps"] * scale / 1e3  # real Gbit/s, delivered into the destination
            st = _state(p, t0, t1, settle)
            if st == "off":
                off_meas[k].append(rate)
            elif st == "on":
                states = [_state(q, t0, t1, settle) for q in pairs]
                if "" in states:
                    continue  # another elephant started or stopped meanwhile: share not constant
                on = tuple(s == "on" for s in states)
                if on not in share_cache:
                    share_cache[on] = flow_model_shares(topo, routing, pairs, list(on))
                on_meas[k].append(rate)
                on_sent[k].append(ls[0]["rate_mbps"] * scale / 1e3)
                on_exp[k].append(share_cache[on][k] * 8 / 1e9)
    out = []
    for k, p in enumerate(pairs):
        m = float(np.mean(on_meas[k])) if on_meas[k] else None
        e = float(np.mean(on_exp[k])) if on_exp[k] else None
        # window by window: the typical steady window, which a second-long machine hiccup cannot move
        per = [a / b for a, b in zip(on_meas[k], on_exp[k]) if b > 0]
        out.append(
            {
                "entry": p.entry,
                "src": topo.hosts[p.src].name,
                "dst": topo.hosts[p.dst].name,
                "path": [f"{topo.links[i].src}->{topo.links[i].dst}" for i in paths[k]],
                "on_samples": len(on_meas[k]),
                "off_samples": len(off_meas[k]),
                "delivered_gbps_on": m,
                "flow_model_gbps_on": e,
                "sent_gbps_on": float(np.mean(on_sent[k])) if on_sent[k] else None,
                "ratio": (m / e) if (m is not None and e) else None,
                "ratio_median": float(np.median(per)) if per else None,
                "delivered_gbps_off": float(np.mean(off_meas[k])) if off_meas[k] else None,
            }
        )
    return out


def format_report(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
        ratio = "" if r["ratio"] is None else f" ({r['ratio']:.0%} of it, median window {r['ratio_median']:.0%})"
        lines.append(
            f"background #{r['entry']} {r['src']} -> {r['dst']}: {f(r['delivered_gbps_on'])} Gbit/s delivered "
            f"while on, flow model {f(r['flow_model_gbps_on'])}{ratio}, sent {f(r['sent_gbps_on'])}; "
            f"{f(r['delivered_gbps_off'])} while off ({r['on_samples']}/{r['off_samples']} samples)"
        )
    return lines


# ------------------------------------------------------------------------------------------------
# emulated sources


class BackgroundTraffic:
    """The iperf3 elephants of one policy run; `start`, poll `error()`, `stop`."""

    def __init__(self, fab, exp, log_dir: Path, env: dict | None = None, clock=time.time):
        self.fab, self.exp, self.log_dir = fab, exp, Path(log_dir)
        self.D = exp.emulation.time_dilation
        self.env = {**os.environ, **(env or {})}
        self.clock = clock
        self.pairs = pairs_of(fab.topo, exp.background)
        self._servers: list[subprocess.Popen] = []
        self._clients: dict[int, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.restarts = 0  # clients started again after a full-length iperf3 test ended normally
        self.fresh_servers = 0  # servers replaced after an on-period (see _fresh_server)
        self._replacing: set[int] = set()  # pairs whose server is being replaced: its exit is ours

    def _log(self, k: int, role: str) -> Path:
        p = self.pairs[k]
        return (
            self.log_dir
            / f"bg-{p.entry}-{self.fab.topo.hosts[p.src].name}-{self.fab.topo.hosts[p.dst].name}-{role}.log"
        )

    def _name(self, k: int) -> str:
        p = self.pairs[k]
        return f"background entry #{p.entry} ({self.fab.topo.hosts[p.src].name} -> {self.fab.topo.hosts[p.dst].name})"

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.errors.append(msg)
        self._stop.set()

    def error(self) -> str | None:
        """The first failure of a background source so far (also checks the servers are alive)."""
        with self._lock:
            servers = [(k, srv) for k, srv in enumerate(self._servers) if k not in self._replacing]
        for k, srv in servers:
            if srv.poll() is not None and not self._stop.is_set():
                with self._lock:  # ended by _fresh_server since the list was taken: not a failure
                    if k in self._replacing or self._servers[k] is not srv:
                        continue
                self._fail(
                    f"{self._name(k)}: iperf3 server exited (code {srv.returncode}): {log_reason(self._log(k, 'server'))}"
                )
        return self.errors[0] if self.errors else None

    def check(self) -> None:
        err = self.error()
        if err:
            raise BackgroundError(err)

    def start(self) -> None:
        if not self.pairs:
            return
        self._stop.clear()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for p in self.pairs:
            p.on = []
        offsets = []
        for k in range(len(self.pairs)):
            srv, off = self._spawn_server(k)
            self._servers.append(srv)
            offsets.append(off)
        deadline = time.monotonic() + 15
        for k in range(len(self.pairs)):
            msg = self._await_listening(k, offsets[k], deadline)
            if msg:
                self.stop()
                raise BackgroundError(msg)
        self._threads = [
            threading.Thread(target=self._run_client, args=(k,), daemon=True, name=f"bg-{k}")
            for k in range(len(self.pairs))
        ]
        for th in self._threads:
            th.start()

    def _spawn_server(self, k: int) -> tuple[subprocess.Popen, int]:
        """Start pair k's iperf3 server; returns it and where its output starts in the log (logs
        are appended across policy runs and servers: look only at what the new one writes)."""
        p = self.pairs[k]
        host = self.fab.host(self.fab.topo.hosts[p.dst].name)
        with open(self._log(k, "server"), "ab") as f:
            off = f.tell()
            srv = host.popen(
                ["iperf3", "-s", "-p", str(p.port), "--forceflush"], stdout=f, stderr=subprocess.STDOUT, env=self.env
            )
        return srv, off

    def _await_listening(self, k: int, offset: int, deadline: float) -> str | None:
        """None once pair k's server listens; the error if it exits or the deadline passes first."""
        while b"listening" not in self._log(k, "server").read_bytes()[offset:]:
            if self._servers[k].poll() is not None or time.monotonic() > deadline:
                return f"{self._name(k)}: iperf3 server did not start: {log_reason(self._log(k, 'server'))}"
            time.sleep(0.05)
        return None

    def _fresh_server(self, k: int) -> bool:
        """Replace pair k's server after an on-period whose client we ended. The terminated client
        tells its server over a control connection that shares the congested path; when that
        message is late the server still holds the test, and the next on-period's client is refused
        ("the server is busy running a test"). A new server for every on-period cannot be busy.
        Returns False (and records the error) if the new server does not start."""
        with self._lock:
            self._replacing.add(k)
        old = self._servers[k]
        old.kill()  # discarded either way; SIGKILL also ends a server that stopped answering
        old.wait(5)
        srv, off = self._spawn_server(k)
        self._servers[k] = srv
        msg = self._await_listening(k, off, time.monotonic() + 15)
        with self._lock:
            self._replacing.discard(k)
        if msg:
            self._fail(msg)
            return False
        self.fresh_servers += 1
        return True

    def _client_args(self, k: int, secs: int) -> list[str]:
        p = self.pairs[k]
        # the source port picks the fair-queue bucket (u32 hash on its low bits): keep it per pair,
        # but never reuse a recent one (see CPORT_SLOTS)
        cport = CPORT_BASE + p.port % 64 + 64 * (next(_cport_seq) % CPORT_SLOTS)
        args = [
            "iperf3",
            "-c",
            self.fab.topo.hosts[p.dst].ip,
            "-p",
            str(p.port),
            "-t",
            str(secs),
            "--cport",
            str(cport),
            "--forceflush",
            "-i",
            "1",
        ]
        bg = self.exp.background[p.entry]
        if bg.rate_gbps is not None:
            args += ["-b", f"{bg.rate_gbps * 1000 / self.exp.emulation.bandwidth_scale:.3f}M"]
        return args

    def _run_client(self, k: int) -> None:
        try:
            self._client_loop(k)
        except Exception as e:  # a bug or an OS error here must end the run, not leave it without traffic
            self._fail(f"{self._name(k)}: source thread failed: {type(e).__name__}: {e}")

    def _client_loop(self, k: int) -> None:
        p = self.pairs[k]
        bg = self.exp.background[p.entry]
        host = self.fab.host(self.fab.topo.hosts[p.src].name)
        if self._stop.wait(bg.start_s * self.D):
            return
        cycle = 0
        while not self._stop.is_set():
            on_end = self.clock() + bg.on_s * self.D if math.isfinite(bg.on_s) else math.inf
            p.on.append([self.clock(), math.inf])
            first = True
            while not self._stop.is_set():
                left = on_end - self.clock()
                if left <= 0 or (not first and left <= 0.5):  # a restart this close to the end: a blip
                    break
                first = False
                secs = IPERF_MAX_S if math.isinf(left) else int(min(IPERF_MAX_S, max(1, math.ceil(left))))
                with open(self._log(k, "client"), "ab") as f:
                    f.write(f"--- start {time.strftime('%H:%M:%S')} cycle {cycle} -t {secs}\n".encode())
                    f.flush()
                    proc = host.popen(self._client_args(k, secs), stdout=f, stderr=subprocess.STDOUT, env=self.env)
                self._clients[k] = proc
                cycle += 1
                while proc.poll() is None and not self._stop.is_set() and self.clock() < on_end:
                    time.sleep(0.05)
                if proc.poll() is None:  # we end it: the on-period is over or the run stops
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
                    if not self._stop.is_set() and not self._fresh_server(k):
                        return
                    break
                if proc.returncode != 0:
                    p.on[-1][1] = self.clock()
                    self._fail(
                        f"{self._name(k)}: iperf3 client exited (code {proc.returncode}): "
                        f"{log_reason(self._log(k, 'client'))}"
                    )
                    return
                self.restarts += 1  # a full-length test ended normally: go on seamlessly
            p.on[-1][1] = self.clock()
            if not math.isfinite(bg.on_s) or self._stop.wait(max(bg.off_s * self.D, 0.3)):
                return

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=10)
        for proc in [*self._clients.values(), *self._servers]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self._clients.values(), *self._servers]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._servers, self._clients, self._threads = [], {}, []


class BackgroundMonitor:
    """Fetches the controller's `/netkv/links` twice per poll interval while a policy runs."""

    def __init__(self, rest: str, poll_s: float):
        self.rest, self.every = rest, max(poll_s / 2, 0.05)
        self.snapshots: list[dict] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self.snapshots = []
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bg-monitor")
        self._thread.start()

    def _run(self) -> None:
        from netkv.controller.client import http_json

        while not self._stop.wait(self.every):
            try:
                self.snapshots.append(http_json(f"{self.rest}/links", timeout=2))
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                self.failures += 1  # the controller may be restarting (fault tests)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

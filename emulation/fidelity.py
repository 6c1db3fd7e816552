"""Fidelity guard: sample the CPU of ovs-vswitchd and of the machine during an emulated run.

The userspace datapath forwards every packet in an ovs-vswitchd main thread (the system's, or one
per emulated switch); when such a thread (or the machine) is saturated, queues build outside the shaped links and the emulation stops being
faithful (Mininet-HiFi's argument, CoNEXT 2012). The guard samples every `interval` seconds and
reports the share of samples near saturation; a run with a large share is flagged.
"""

from __future__ import annotations

import threading
import time

import psutil

SATURATED = 90.0  # percent of one core (busiest ovs thread) or of the machine


class OvsCpu:
    """CPU of every ovs-vswitchd on the machine (the system's, or one per emulated switch): total and
    busiest thread, in percent of one core, since the previous call."""

    def __init__(self):
        self._procs: dict[int, psutil.Process] = {}
        self._prev: dict[tuple[int, int], float] = {}
        self._prev_t = time.monotonic()
        self.sample()

    def _refresh(self) -> None:
        for p in psutil.process_iter(["name"]):
            if p.info["name"] == "ovs-vswitchd" and p.pid not in self._procs:
                self._procs[p.pid] = p

    def sample(self) -> tuple[float, float, int]:
        """(total %, busiest thread %, daemons seen) over the time since the previous sample."""
        self._refresh()
        now = time.monotonic()
        dt, self._prev_t = now - self._prev_t, now
        cur: dict[tuple[int, int], float] = {}
        for pid, p in list(self._procs.items()):
            try:
                for t in p.threads():
                    cur[(pid, t.id)] = t.user_time + t.system_time
            except psutil.Error:
                del self._procs[pid]
        deltas = [v - self._prev[k] for k, v in cur.items() if k in self._prev]
        self._prev = cur
        if dt <= 0:
            return 0.0, 0.0, len(self._procs)
        return sum(deltas) / dt * 100, max(deltas, default=0.0) / dt * 100, len(self._procs)


class FidelityGuard:
    """Background sampler; use as a context manager, then read `report()`."""

    def __init__(self, interval: float = 0.5, threshold: float = SATURATED, flag_share: float = 0.10):
        self.interval = interval
        self.threshold = threshold
        self.flag_share = flag_share
        self.samples: list[
            tuple[float, float, float, float]
        ] = []  # t, all ovs-vswitchd %, busiest ovs thread %, machine %
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fidelity-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        ovs = OvsCpu()
        psutil.cpu_percent(None)
        while not self._stop.wait(self.interval):
            total, busiest, _ = ovs.sample()
            self.samples.append((time.monotonic(), total, busiest, psutil.cpu_percent(None)))

    def report(self) -> dict:
        n = len(self.samples)
        if n == 0:
            return {"samples": 0, "flagged": False, "note": "no samples (run too short)"}
        busiest = [s[2] for s in self.samples]
        machine = [s[3] for s in self.samples]
        sat = sum(1 for s in self.samples if s[2] >= self.threshold or s[3] >= self.threshold)
        share = sat / n
        return {
            "samples": n,
            "interval_s": self.interval,
            "ovs_busiest_thread_pct": {"mean": sum(busiest) / n, "max": max(busiest)},
            "ovs_total_pct_mean": sum(s[1] for s in self.samples) / n,
            "machine_pct": {"mean": sum(machine) / n, "max": max(machine)},
            "saturated_share": share,
            "flagged": share > self.flag_share,
            "note": (
                "CPU-bound emulation: results may not be faithful (ovs-vswitchd or the machine was "
                f"near saturation in {share:.0%} of samples)"
            )
            if share > self.flag_share
            else "ok",
        }

"""Fidelity guard: sample the CPU of ovs-vswitchd and of the machine during an emulated run.

The userspace datapath forwards every packet in one ovs-vswitchd thread; when that thread (or the
machine) is saturated, queues build outside the shaped links and the emulation stops being
faithful (Mininet-HiFi's argument, CoNEXT 2012). The guard samples every `interval` seconds and
reports the share of samples near saturation; a run with a large share is flagged.
"""

from __future__ import annotations

import threading
import time

import psutil

SATURATED = 90.0  # percent of one core (busiest ovs thread) or of the machine


def _ovs() -> psutil.Process | None:
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "ovs-vswitchd":
            return p
    return None


class FidelityGuard:
    """Background sampler; use as a context manager, then read `report()`."""

    def __init__(self, interval: float = 0.5, threshold: float = SATURATED, flag_share: float = 0.10):
        self.interval = interval
        self.threshold = threshold
        self.flag_share = flag_share
        self.samples: list[tuple[float, float, float, float]] = []  # t, ovs total %, ovs busiest thread %, machine %
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
        ovs = _ovs()
        psutil.cpu_percent(None)
        prev_threads: dict[int, float] = {}
        prev_t = time.monotonic()
        prev_total = None
        if ovs is not None:
            try:
                prev_threads = {t.id: t.user_time + t.system_time for t in ovs.threads()}
                ct = ovs.cpu_times()
                prev_total = ct.user + ct.system
            except psutil.Error:
                ovs = None
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            dt = now - prev_t
            prev_t = now
            machine = psutil.cpu_percent(None)
            total = busiest = 0.0
            if ovs is not None:
                try:
                    threads = {t.id: t.user_time + t.system_time for t in ovs.threads()}
                    ct = ovs.cpu_times()
                except psutil.Error:
                    ovs = None
                    threads, ct = {}, None
                if ct is not None and dt > 0:
                    busiest = max(((v - prev_threads.get(k, v)) / dt * 100 for k, v in threads.items()), default=0.0)
                    total = ((ct.user + ct.system) - (prev_total or 0.0)) / dt * 100
                    prev_threads, prev_total = threads, ct.user + ct.system
            self.samples.append((now, total, busiest, machine))

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

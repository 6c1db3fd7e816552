"""Faults in emulation: the [[fault]] entries, injected on the replay's trace clock.

The scheduler service writes the wall-clock instant of trace time 0
(`netkv.scheduler.service.clock_file`) when its replay starts; `FaultInjector` waits for it, then
acts at t0 + t x time_dilation for each change of each fault, in time order:

    link        both ends set down / up (Mininet's `configLinkStatus`, in the switches' namespaces);
                the controller sees the port status and moves the pairs that crossed the link
    switch      its ovs-vswitchd SIGKILLed / started again on its database (the controller
                reinstalls its rules)
    controller  SIGKILLed / started again (the switches keep their rules meanwhile)
    scheduler   the scheduler service SIGKILLed / started again with --resume (its journal)
    agent       SIGKILLed (for good within the policy: its requests fail)

Each change records how late it was and, for a restart, the seconds until the component worked
again (`recovery_s`). At the end of a policy everything is brought back (links up, processes
restarted, a killed agent started afresh), so the next policy starts on the whole testbed. A
failure to inject ends the run (never retried).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Protocol


class Processes(Protocol):
    """What the orchestrator lets the injector kill and start (besides the fabric's own)."""

    def kill_scheduler(self) -> None: ...

    def restart_scheduler(self) -> float: ...  # seconds until the restarted service has resumed

    def kill_agent(self, host: str) -> None: ...

    def start_agent(self, host: str) -> None: ...


class FaultInjector:
    """One policy's faults; `start(clock_file)`, then `stop()`; `report()` lists what was done."""

    def __init__(self, fab, exp, procs: Processes | None = None, clock=time.time):
        self.fab, self.exp, self.procs, self.clock = fab, exp, procs, clock
        self.D = exp.emulation.time_dilation
        self.events = sorted(
            ((t, i, up) for i, f in enumerate(exp.faults) for t, up in f.schedule()), key=lambda e: (e[0], e[1])
        )
        self.done: list[dict] = []
        self._down: set[int] = set()
        self._error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, clock_file: Path) -> None:
        """One thread per fault, so that one component's restart never delays another's fault."""
        if not self.events:
            return
        self.done, self._error = [], None
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._run, args=(Path(clock_file), i), daemon=True, name=f"fault-{i}")
            for i in range(len(self.exp.faults))
        ]
        for th in self._threads:
            th.start()

    def error(self) -> str | None:
        return self._error

    def _set(self, i: int, up: bool) -> float | None:
        """Fault i's component down or back up; for a restart, the seconds until it works again."""
        f = self.exp.faults[i]
        took = None
        t0 = time.monotonic()
        if f.kind == "link":
            a, b = f.link
            self.fab.net.configLinkStatus(a, b, "up" if up else "down")
        elif f.kind == "switch":
            took = self.fab.start_switch(f.target) if up else self.fab.kill_switch(f.target)
        elif f.kind == "controller":
            if up:
                self.fab.start_controller()
                self.fab.wait_ready(timeout=60)
                took = time.monotonic() - t0
            else:
                self.fab.kill_controller()
        elif f.kind == "scheduler":
            took = self.procs.restart_scheduler() if up else self.procs.kill_scheduler()
        elif f.kind == "agent":
            if up:
                self.procs.start_agent(f.target)
            else:
                self.procs.kill_agent(f.target)
        with self._lock:
            if up:
                self._down.discard(i)
            else:
                self._down.add(i)
        return took

    def _run(self, clock_file: Path, i: int) -> None:
        try:
            while not clock_file.exists():
                if self._stop.wait(0.05):
                    return
            t0 = json.loads(clock_file.read_text())["t0"]
            f = self.exp.faults[i]
            for t, up in f.schedule():
                due = t0 + t * self.D
                if self._stop.wait(max(0.0, due - self.clock())):
                    return
                late = (self.clock() - due) / self.D
                took = self._set(i, up)
                e = {"t": t, "fault": f.label, "kind": f.kind, "up": up, "late_s": late}
                if f.kind == "link":
                    e["link"] = f.label
                if took is not None:
                    e["recovery_wall_s"] = took
                with self._lock:
                    self.done.append(e)
        except Exception as e:  # an OS, Mininet or process error: the run ends with it
            self._error = f"fault injection failed ({self.exp.faults[i].label}): {type(e).__name__}: {e}"

    def stop(self) -> None:
        """Stop injecting; bring back every component this policy took down (the scheduler is not
        restarted: its policy is over)."""
        self._stop.set()
        for th in self._threads:
            th.join(timeout=90)
        self._threads = []
        for i in sorted(self._down):
            if self.exp.faults[i].kind != "scheduler":
                self._set(i, True)
        self._down.clear()

    def report(self) -> list[dict]:
        """What was done, in trace-clock order."""
        with self._lock:
            return sorted(self.done, key=lambda e: e["t"])

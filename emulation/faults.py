"""Link faults in emulation: [[fault]] links taken down and up on the replay's trace clock.

The scheduler service writes the wall-clock instant of trace time 0
(`netkv.scheduler.service.clock_file`) when its replay starts; `FaultInjector` waits for it, then sets both ends of each fault link down or up at
t0 + at_s x time_dilation (Mininet's `configLinkStatus`, inside the switches' namespaces). The
controller sees the port-status change and moves the pairs that crossed the link, as the flow
model's routing does. At the end of a policy's replay every fault link is brought back up, so the
next policy starts on the whole fabric. A failure to change a link ends the run (never retried).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class FaultInjector:
    """One policy's link faults; `start(clock)`, then `stop()`; `report()` lists what was done."""

    def __init__(self, fab, exp, clock=time.time):
        self.fab, self.exp, self.clock = fab, exp, clock
        self.D = exp.emulation.time_dilation
        self.events = sorted(
            ((t, i, up) for i, f in enumerate(exp.faults) for t, up in f.schedule()), key=lambda e: (e[0], e[1])
        )
        self.done: list[dict] = []
        self._down: set[int] = set()
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, clock_file: Path) -> None:
        if not self.events:
            return
        self.done, self._error = [], None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(Path(clock_file),), daemon=True, name="faults")
        self._thread.start()

    def error(self) -> str | None:
        return self._error

    def _set(self, i: int, up: bool) -> None:
        a, b = self.exp.faults[i].link
        self.fab.net.configLinkStatus(a, b, "up" if up else "down")
        if up:
            self._down.discard(i)
        else:
            self._down.add(i)

    def _run(self, clock_file: Path) -> None:
        try:
            while not clock_file.exists():
                if self._stop.wait(0.05):
                    return
            t0 = json.loads(clock_file.read_text())["t0"]
            for t, i, up in self.events:
                due = t0 + t * self.D
                if self._stop.wait(max(0.0, due - self.clock())):
                    return
                self._set(i, up)
                a, b = self.exp.faults[i].link
                self.done.append({"t": t, "link": f"{a}-{b}", "up": up, "late_s": (self.clock() - due) / self.D})
        except Exception as e:  # an OS or Mininet error: the run ends with it
            self._error = f"fault injection failed: {type(e).__name__}: {e}"

    def stop(self) -> None:
        """Stop injecting and bring every link this policy took down back up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for i in sorted(self._down):
            self._set(i, True)

    def report(self) -> list[dict]:
        return list(self.done)

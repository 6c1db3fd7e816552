"""Hold every CPU in polling idle while a fabric runs: a PM QoS request for 0 us wake-up latency.

The fabric's port shapers (TBF and HTB, one-frame token buckets) release each frame from a kernel
timer. An idle CPU that halts wakes late for it (on this VM: cpuidle driver `haltpoll` with
`haltpoll.guest_halt_poll_ns=0`, so an idle vCPU halts at once and the hypervisor schedules its
wake-up), and a one-frame bucket cannot bank the time it lost: a shaped port sends slower than its
rate by the mean lateness over the frame time. Measured on the two-elephant steering scenario
(tests/test_emulate_root.py, 50 Mbit/s ports, no retransmissions in most runs): the elephants at
0.66-0.98 of their max-min share over eight runs without the request, 0.96-0.99 over nine with it
(docs/emulation.md, "Timers and idle CPUs"). The switch daemons' and agents' wake-ups gain too:
idle RTT across pods 2.3 -> 1.7-2.0 ms, a 64-flow permutation 0.76-0.83 -> 0.84-0.86 of max-min.

The kernel's CPU latency QoS interface (Documentation/power/pm_qos_interface.rst): a process opens
/dev/cpu_dma_latency, writes a 32-bit value in microseconds, and the request lasts while the file
stays open; the kernel drops it when the file is closed, also when the process dies, so a crash
leaves nothing behind. A limit of 0 leaves cpuidle only its polling state (state0, POLL).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

DEVICE = Path("/dev/cpu_dma_latency")
_HELD: set[PollIdle] = set()  # the requests this process holds (see held_here)


def current_limit_us(device: Path = DEVICE) -> int | None:
    """The CPU wake-up latency limit now in force (all requests combined), or None if unreadable."""
    try:
        with open(device, "rb") as f:
            raw = f.read(4)
    except OSError:
        return None
    return struct.unpack("i", raw)[0] if len(raw) == 4 else None


class PollIdle:
    """A PM QoS request of 0 us, held from `acquire()` to `release()` (or the process's end)."""

    def __init__(self, device: Path = DEVICE):
        self.device = Path(device)
        self.error: str | None = None  # why acquire() failed, for the run's log and meta
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Ask for 0 us; False (and `error` says why) where the machine has no such interface or
        refuses it (not root, a container without the device)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            self.error = f"{self.device}: {e.strerror}"
            return False
        try:
            os.write(fd, struct.pack("i", 0))
        except OSError as e:
            os.close(fd)
            self.error = f"{self.device}: write refused: {e.strerror}"
            return False
        self._fd, self.error = fd, None
        _HELD.add(self)
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        _HELD.discard(self)

    def __enter__(self) -> PollIdle:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def held_here() -> list[PollIdle]:
    """The requests this process holds now (a fabric that was never stopped leaves one: the tests'
    clean-machine check)."""
    return list(_HELD)

#!/usr/bin/env python3
"""Benchmark: one TCP flow through one port shaped as the fabric shapes it, against its rate (root).

Two network namespaces joined by a veth; the sending end gets the fabric's switch-port shaping
(`fair_queue_batch`: a TBF at the link rate over per-flow fair queues, MTU 9000, 20 ms queues). One
iperf3 flow runs for --seconds with 0..N busy loops beside it, for the TBF bucket of one frame (what
the fabric uses) and one frame plus --extra-ms at the rate, each with and without the CPUs held in
polling idle (emulation/pollidle.py, what a fabric does). Prints goodput / link rate per case: a
one-frame bucket cannot bank tokens, so every late qdisc timer is bandwidth lost, and a halted CPU
serves its timer late (docs/emulation.md, "Timers and idle CPUs"). The payload's share of a 9000-byte frame, 0.993, is
the most a case can reach. Needs root, iperf3 and tc; leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from netkv.emulation.pollidle import PollIdle  # noqa: E402
from netkv.topology.mininet_fabric import fair_queue_batch  # noqa: E402

NS = ("netkv-shape-a", "netkv-shape-b")
MTU = 9000


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def teardown() -> None:
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False)


def setup(rate_mbps: float, extra_ms: float) -> None:
    teardown()
    a, b = NS
    for ns in NS:
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b)
    for ns, dev, ip in ((a, "va", "10.9.0.1/24"), (b, "vb", "10.9.0.2/24")):
        sh("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU))
        sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", check=False)
    extra = int(rate_mbps * 1e6 / 8 * extra_ms / 1000)  # bytes the link sends in extra_ms
    lines = fair_queue_batch("va", rate_mbps, mtu=MTU, queue_ms=20, tbf_extra_bytes=extra)
    p = subprocess.run(
        ["ip", "netns", "exec", a, "tc", "-batch", "-"], input="\n".join(lines) + "\n", text=True, capture_output=True
    )
    if p.returncode:
        raise SystemExit(f"bench_port_shaping: tc -batch failed: {p.stderr.strip()}")


def goodput(seconds: float, hogs: int) -> float:
    """Mbit/s one iperf3 flow delivers from namespace a to b, with `hogs` busy loops running."""
    srv = subprocess.Popen(["ip", "netns", "exec", NS[1], "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    busy = []
    try:
        time.sleep(0.5)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        out = sh("ip", "netns", "exec", NS[0], "iperf3", "-c", "10.9.0.2", "-t", f"{seconds:g}", "-O", "1", "-J")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        for h in busy:
            h.kill()
            h.wait()
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=56.25, help="link rate, Mbit/s (default 56.25: 900G / 16000)")
    ap.add_argument("--seconds", type=float, default=6.0, help="iperf3 test length (default 6)")
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 2], help="busy loops per case (default 0 2)")
    ap.add_argument("--extra-ms", type=float, default=1.0, help="bucket beyond one frame, at the rate (default 1)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_port_shaping: needs root (network namespaces, tc)", file=sys.stderr)
        return 2
    for name, v in (("--rate", a.rate), ("--seconds", a.seconds), ("--extra-ms", a.extra_ms)):
        if not v > 0:
            print(f"bench_port_shaping: {name} must be > 0, got {v}", file=sys.stderr)
            return 2
    if any(h < 0 for h in a.hogs):
        print(f"bench_port_shaping: --hogs must be >= 0, got {a.hogs}", file=sys.stderr)
        return 2
    idle = PollIdle()
    try:
        for extra in (0.0, a.extra_ms):
            setup(a.rate, extra)
            bucket = "one frame" if not extra else f"one frame + {extra:g} ms"
            for hold in (False, True):
                if hold and not idle.acquire():
                    print(f"bench_port_shaping: cannot hold the CPUs in polling idle: {idle.error}", file=sys.stderr)
                    return 1
                cpus = "polling idle" if hold else "halting idle"
                for hogs in a.hogs:
                    r = goodput(a.seconds, hogs)
                    print(
                        f"{a.rate:g} Mbit/s, TBF bucket {bucket}, CPUs {cpus}, {hogs} busy loops: "
                        f"{r:.2f} Mbit/s = {r / a.rate:.3f} of the rate"
                    )
                idle.release()
    finally:
        idle.release()
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

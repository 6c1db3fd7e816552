#!/usr/bin/env python3
"""Benchmark of the emulated fabric (root): up/teardown time, leftovers, controller CPU at a 100 ms
poll, and aggregate goodput of a permutation traffic pattern against the max-min prediction.

For each MTU, one fabric is built; every host sends one iperf3 flow to its partner under a seeded
random permutation (no host sends to itself); the sum of goodputs is compared with the sum of the
max-min fair rates the flow model gives on the same routed paths and emulated capacities.
Prints every figure; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from netkv.emulation import cleanup
from netkv.emulation.fabric import Fabric, FabricSpec
from netkv.emulation.fidelity import FidelityGuard
from netkv.simulator.maxmin import maxmin_rates
from netkv.topology import Routing


def permutation(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(i != x for i, x in enumerate(p)):
            return p


def controller_cpu(fab: Fabric, seconds: float) -> float:
    proc = psutil.Process(fab.ctrl.pid)
    proc.cpu_percent(None)
    time.sleep(seconds)
    return proc.cpu_percent(None)


def run_permutation(fab: Fabric, perm: list[int], seconds: int) -> tuple[float, float, list[float]]:
    t = fab.topo
    servers, clients = [], []
    for i, j in enumerate(perm):
        port = 6000 + i
        servers.append(
            fab.host(t.hosts[j].name).popen(
                ["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    time.sleep(1.0)
    for i, j in enumerate(perm):
        clients.append(
            fab.host(t.hosts[i].name).popen(
                [
                    "iperf3",
                    "-c",
                    t.hosts[j].ip,
                    "-p",
                    str(6000 + i),
                    "-t",
                    str(seconds),
                    "-J",
                    "--cport",
                    str(20000 + i),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    goods = []
    for c in clients:
        out, _ = c.communicate(timeout=seconds + 60)
        try:
            goods.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6)
        except (json.JSONDecodeError, KeyError):
            goods.append(0.0)
    for s in servers:
        try:
            s.wait(timeout=10)
        except subprocess.TimeoutExpired:
            s.kill()
    routing = Routing(t, fab.spec.routing)
    links = [np.array(routing.path(i, j)) for i, j in enumerate(perm)]
    cap = t.capacity_bps / fab.spec.bandwidth_scale * 8 / 1e6  # emulated Mbit/s
    pred = maxmin_rates(links, cap)
    return float(sum(goods)), float(pred.sum()), goods


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--scale", type=float, default=4000, help="bandwidth_scale (400G -> 100 Mbit/s at 4000)")
    ap.add_argument("--mtus", type=int, nargs="+", default=[9000, 1500])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if cleanup.find_leftovers():
        raise SystemExit("leftovers on the machine; run `netkv clean` first")
    for mtu in a.mtus:
        spec = FabricSpec.for_fattree(a.k, a.gpus, bandwidth_scale=a.scale, mtu=mtu, poll_interval=0.1)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.monotonic()
            fab = Fabric(spec, Path(d), log=lambda *x: None)
            fab.__enter__()
            try:
                up = time.monotonic() - t0
                cpu = controller_cpu(fab, 10.0)
                perm = permutation(fab.topo.n_hosts, a.seed)
                with FidelityGuard() as guard:
                    got, pred, goods = run_permutation(fab, perm, a.seconds)
                rep = guard.report()
            finally:
                t1 = time.monotonic()
                fab.__exit__(None, None, None)
                down = time.monotonic() - t1
        left = cleanup.find_leftovers()
        print(f"k={a.k} x {a.gpus} GPUs, bandwidth_scale {a.scale:g}, MTU {mtu}:")
        print(f"  fabric up {up:.1f} s, teardown {down:.1f} s, leftovers after teardown: {left or 'none'}")
        print(f"  controller CPU at 100 ms poll (idle fabric, 10 s): {cpu:.1f} % of one core")
        print(
            f"  permutation of {len(perm)} flows, {a.seconds} s: aggregate goodput {got:.0f} Mbit/s vs "
            f"max-min prediction {pred:.0f} Mbit/s -> ratio {got / pred:.3f}"
        )
        print(f"  per-flow goodput min/median/max: {min(goods):.1f} / {np.median(goods):.1f} / {max(goods):.1f} Mbit/s")
        print(
            f"  fidelity guard: busiest ovs thread mean {rep['ovs_busiest_thread_pct']['mean']:.0f} %, "
            f"max {rep['ovs_busiest_thread_pct']['max']:.0f} %; machine mean {rep['machine_pct']['mean']:.0f} %; "
            f"{rep['note']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

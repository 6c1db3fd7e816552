#!/usr/bin/env python3
"""Benchmark of the emulated fabric (root): up/teardown time, leftovers, controller CPU at a 100 ms
poll, idle RTT across pods, OVS CPU under a 4-flow incast, and aggregate goodput of a permutation
traffic pattern against the max-min prediction; for each OVS layout (a daemon per switch, or the
whole fabric in the system's daemon) and MTU.

Incast: four GPUs in other pods each send one iperf3 flow to the same GPU, so that the four share
one shaped port (the server switch's port to that GPU); the figure is the CPU of every
ovs-vswitchd together, in % of one core, and the goodput against the port's rate.
Permutation: every host sends one iperf3 flow to its partner under a seeded random permutation (no
host sends to itself); the sum of goodputs is compared with the sum of the max-min fair rates the
flow model gives on the same routed paths and emulated capacities.
Prints every figure; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from netkv.emulation import cleanup
from netkv.emulation.fabric import Fabric, FabricSpec
from netkv.emulation.fidelity import FidelityGuard, OvsCpu
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


def idle_rtt_ms(fab: Fabric) -> float:
    """Mean ping RTT (ms) from the first GPU to the last (different pods: seven switches)."""
    t = fab.topo
    out = fab.host(t.hosts[0].name).cmd(f"ping -c 20 -i 0.05 -q {t.hosts[-1].ip}")
    try:
        return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])
    except (IndexError, ValueError):
        return float("nan")


PROBE = str(Path(__file__).with_name("xfer_probe.py"))


def run_transfers(fab: Fabric, sizes: list[int], reps: int = 8) -> list[str]:
    """Idle-link transfer time over a long-lived connection vs bytes / bottleneck rate (the flow
    model's time without latency), for a same-server and a cross-pod pair; one line per case. The
    time includes the one-byte answer (one RTT more than the transfer itself)."""
    t = fab.topo
    a = t.hosts[0]
    same = next(h for h in t.hosts[1:] if h.name.rsplit("_", 1)[0] == a.name.rsplit("_", 1)[0])
    far = t.hosts[-1]
    routing = Routing(t, fab.spec.routing)
    cap = t.capacity_bps / fab.spec.bandwidth_scale  # emulated bytes/s per link
    lines = []
    for label, b in (("same server", same), ("cross-pod", far)):
        rate = float(min(cap[x] for x in routing.path(t.host_index[a.name], t.host_index[b.name])))
        for n in sizes:
            port = 7600 + len(lines)
            srv = fab.host(b.name).popen([sys.executable, PROBE, "server", str(port)])
            time.sleep(0.3)
            cl = fab.host(a.name).popen(
                [sys.executable, PROBE, "client", b.ip, str(port), str(n), str(reps), "0.3"],
                stdout=subprocess.PIPE,
                text=True,
            )
            out, _ = cl.communicate(timeout=120)
            srv.wait(timeout=10)
            med = float(np.median(json.loads(out)))
            ideal = n / rate
            lines.append(
                f"  transfer {label:11s} {n:>8d} B at {rate * 8 / 1e6:.1f} Mbit/s: median {med * 1e3:7.2f} ms, "
                f"bytes/rate {ideal * 1e3:7.2f} ms, ratio {med / ideal:.2f}"
            )
    return lines


def run_incast(fab: Fabric, seconds: int, flows: int = 4) -> tuple[float, float, float]:
    """(OVS CPU % of one core, goodput Mbit/s, max-min prediction Mbit/s) of `flows` cross-pod
    flows into one GPU."""
    t = fab.topo
    dst = t.hosts[0]
    srcs = [h for h in t.hosts if h.pod != dst.pod][::4][:flows]
    srv = [
        fab.host(dst.name).popen(["iperf3", "-s", "-1", "-p", str(7000 + i)], stdout=subprocess.DEVNULL)
        for i in range(len(srcs))
    ]
    time.sleep(1.0)
    cpu = OvsCpu()
    cl = [
        fab.host(h.name).popen(
            ["iperf3", "-c", dst.ip, "-p", str(7000 + i), "-t", str(seconds), "-J"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i, h in enumerate(srcs)
    ]
    outs = [c.communicate(timeout=seconds + 60)[0] for c in cl]
    total, _, _ = cpu.sample()
    for p in srv:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    good = 0.0
    for o in outs:
        try:
            good += json.loads(o)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (json.JSONDecodeError, KeyError):
            pass
    routing = Routing(t, fab.spec.routing)
    links = [np.array(routing.path(t.host_index[h.name], t.host_index[dst.name])) for h in srcs]
    pred = maxmin_rates(links, t.capacity_bps / fab.spec.bandwidth_scale * 8 / 1e6)
    return total, good, float(pred.sum())


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


def plain_mininet(k: int, gpus: int, scale: float, mtu: int) -> tuple[float, float]:
    """(build + start, stop) seconds of plain Mininet on the same topology: the system's OVS
    (userspace datapath), Mininet's TCLinks at the same rates, no controller, no checks."""
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSSwitch

    from netkv.topology.mininet_fabric import NetKVFatTree

    setLogLevel("error")
    topo = NetKVFatTree(k=k, gpus=gpus, bandwidth_scale=scale, mtu=mtu)
    t0 = time.monotonic()
    net = Mininet(
        topo=topo,
        switch=lambda name, **kw: OVSSwitch(name, datapath="user", **kw),
        controller=None,
        autoSetMacs=False,
        waitConnected=False,
    )
    net.start()
    up = time.monotonic() - t0
    t1 = time.monotonic()
    net.stop()
    return up, time.monotonic() - t1


@contextlib.contextmanager
def timed_fabric(spec: FabricSpec, log=lambda *x: None):
    """The fabric up for the block; yields (fabric, times): times["t0"] is when its start began,
    times["down"] its teardown's seconds, set once the block is left."""
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        times["t0"] = time.monotonic()
        fab = Fabric(spec, Path(d), log=log)
        fab.__enter__()
        try:
            yield fab, times
        finally:
            t1 = time.monotonic()
            fab.__exit__(None, None, None)
            times["down"] = time.monotonic() - t1


def bench_build(a, layout: str, mtu: int) -> None:
    """Fabric up (controller, every switch routed, every pair pinged) and teardown, then plain
    Mininet building and stopping the same topology; stage times as the fabric logs them."""
    spec = FabricSpec.for_fattree(a.k, a.gpus, bandwidth_scale=a.scale, mtu=mtu, ovs_daemons=layout)
    stages: list[str] = []
    with timed_fabric(spec, log=lambda *x: stages.append(" ".join(map(str, x)).strip())) as (fab, times):
        ready = time.monotonic() - times["t0"]
        unreachable = fab.reachability()
        up = time.monotonic() - times["t0"]
    down = times["down"]
    left = cleanup.find_leftovers()
    base_up, base_down = plain_mininet(a.k, a.gpus, a.scale, mtu)
    n = fab.topo.n_hosts
    print(f"k={a.k} x {a.gpus} GPUs ({len(fab.topo.switches)} switches), bandwidth_scale {a.scale:g}, MTU {mtu}, "
          f"ovs_daemons={layout}:")  # fmt: skip
    print("  " + "\n  ".join(stages))
    print(
        f"  fabric ready {ready:.1f} s, up with all {n * (n - 1)} pairs pinged {up:.1f} s "
        f"({len(unreachable)} unreachable), teardown {down:.1f} s, leftovers: {left or 'none'}"
    )
    print(
        f"  plain Mininet, same topology: up {base_up:.1f} s, stop {base_down:.1f} s -> "
        f"ready {ready / base_up:.2f}x, up {up / base_up:.2f}x, teardown {down / base_down:.2f}x",
        flush=True,
    )


def bench_one(a, layout: str, mtu: int, malloc: str = "keep", poll_idle: bool = True) -> None:
    spec = FabricSpec.for_fattree(
        a.k, a.gpus, bandwidth_scale=a.scale, mtu=mtu, poll_interval=0.1, ovs_daemons=layout,
        ovs_keep_memory=malloc == "keep", poll_idle=poll_idle,
    )  # fmt: skip
    with timed_fabric(spec) as (fab, times):
        unreachable = fab.reachability()
        up = time.monotonic() - times["t0"]  # controller, switches, routes installed, every pair pinged
        cpu = controller_cpu(fab, 10.0)
        rtt = idle_rtt_ms(fab)
        xfers = run_transfers(fab, a.transfers) if a.transfers else []
        inc_cpu, inc_good, inc_pred = run_incast(fab, a.seconds)
        perm = permutation(fab.topo.n_hosts, a.seed)
        with FidelityGuard() as guard:
            got, pred, goods = run_permutation(fab, perm, a.seconds)
        rep = guard.report()
    down = times["down"]
    left = cleanup.find_leftovers()
    base_up, base_down = plain_mininet(a.k, a.gpus, a.scale, mtu)
    mem = f", ovs malloc={malloc}" if layout == "switch" else ""
    idle = "polling" if poll_idle else "halting"
    print(
        f"k={a.k} x {a.gpus} GPUs, bandwidth_scale {a.scale:g}, MTU {mtu}, ovs_daemons={layout}{mem}, idle CPUs {idle}:"
    )
    print(
        f"  fabric up {up:.1f} s (controller, routes, {len(unreachable)} pairs unreachable), teardown "
        f"{down:.1f} s, leftovers after "
        f"teardown: {left or 'none'}; plain Mininet, same topology: up {base_up:.1f} s, stop {base_down:.1f} s "
        f"-> {up / base_up:.2f}x and {down / base_down:.2f}x"
    )
    print(f"  controller CPU at 100 ms poll (idle fabric, 10 s): {cpu:.1f} % of one core")
    print(f"  idle RTT across pods (7 switches): {rtt:.2f} ms")
    print("\n".join(xfers))
    print(
        f"  incast, 4 cross-pod flows into one GPU, {a.seconds} s: OVS CPU (all daemons) {inc_cpu:.1f} % of one "
        f"core, goodput {inc_good:.1f} Mbit/s vs max-min {inc_pred:.1f} ({inc_good / inc_pred:.2f})"
    )
    print(
        f"  permutation of {len(perm)} flows, {a.seconds} s: aggregate goodput {got:.0f} Mbit/s vs "
        f"max-min prediction {pred:.0f} Mbit/s -> ratio {got / pred:.3f}"
    )
    print(f"  per-flow goodput min/median/max: {min(goods):.1f} / {np.median(goods):.1f} / {max(goods):.1f} Mbit/s")
    print(
        f"  fidelity guard: busiest ovs thread mean {rep['ovs_busiest_thread_pct']['mean']:.0f} %, "
        f"max {rep['ovs_busiest_thread_pct']['max']:.0f} %; all ovs {rep['ovs_total_pct_mean']:.0f} %; "
        f"machine mean {rep['machine_pct']['mean']:.0f} %; {rep['note']}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--scale", type=float, default=4000, help="bandwidth_scale (400G -> 100 Mbit/s at 4000)")
    ap.add_argument("--mtus", type=int, nargs="+", default=[9000])
    ap.add_argument("--ovs-daemons", nargs="+", default=["switch", "shared"], choices=["switch", "shared"])
    ap.add_argument(
        "--ovs-malloc",
        nargs="+",
        default=["keep"],
        choices=["keep", "glibc"],
        help="per-switch daemons: keep freed memory (the fabric's default) or glibc's default trimming",
    )
    ap.add_argument(
        "--poll-idle",
        nargs="+",
        default=["on"],
        choices=["on", "off"],
        help="hold the CPUs in polling idle while the fabric lives (the default, emulation/pollidle.py) or not",
    )
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--transfers", type=int, nargs="*", default=[15000, 60000, 240000, 960000], help="probe sizes, bytes"
    )
    ap.add_argument(
        "--build-only",
        action="store_true",
        help="only fabric up / teardown beside plain Mininet (for large k, where the traffic tests take long)",
    )
    a = ap.parse_args()
    if cleanup.find_leftovers():
        raise SystemExit("leftovers on the machine; run `netkv clean` first")
    if a.build_only:
        for layout in a.ovs_daemons:
            bench_build(a, layout, a.mtus[0])
        return 0
    for layout in a.ovs_daemons:
        for mtu in a.mtus:
            for malloc in a.ovs_malloc if layout == "switch" else ["keep"]:
                for idle in a.poll_idle:
                    bench_one(a, layout, mtu, malloc, idle == "on")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Benchmark: decision wall time per policy at |D| = 64, 256, 1024, 4096 decode instances.

The cluster view is filled like a busy cluster: every decode instance holds a random load and a
prefix cache filled from earlier requests of the Mooncake conversation trace; the counter oracle
has a snapshot with random link utilisation. The policy's decode choice is timed with
perf_counter_ns over requests of the trace (the prefill choice, common to every policy, is timed
separately and printed once per size). Prints the median and p99 per policy and the ratio of each
policy's median to round_robin's, measured in the same run.
Targets (issue 2): netkv median <= 50 us at |D| = 64 and <= 1 ms at |D| = 4096.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from netkv import DATA_DIR
from netkv.compute import MODEL_PRESETS, ComputeModel, load_profile
from netkv.kvcache import PrefixCache
from netkv.scheduler.core import Scheduler
from netkv.scheduler.oracle import CounterOracle, Snapshot
from netkv.scheduler.policies import registry
from netkv.scheduler.view import ClusterView
from netkv.topology import FatTree, Routing
from netkv.trace import load_trace

# (k, GPUs per server) giving |D| = k^3 G / 8 decode instances with half the GPUs prefill
SHAPES = {64: (4, 8), 256: (8, 4), 1024: (8, 16), 4096: (16, 8)}


def build(n_decode: int, trace, rng):
    k, G = SHAPES[n_decode]
    topo = FatTree(k, G)
    routing = Routing(topo)
    model = MODEL_PRESETS["llama3-8b"]
    compute = ComputeModel(load_profile(DATA_DIR / "h200-llama3-hf-eager.csv", model.name), model)
    pre = [h.index for h in topo.hosts if h.c < G // 2]
    dec = [h.index for h in topo.hosts if h.c >= G // 2]
    view = ClusterView(pre, dec, compute)
    n = len(dec)
    view.active[:] = rng.integers(0, 32, n)
    view.queued[:] = rng.integers(0, 2, n)
    view.inbound[:] = rng.integers(0, 2, n)
    view.kv_used[:] = view.active * 30
    view.ctx_total[:] = view.active * 12000.0
    view.remaining[:] = view.active * 200.0
    view.prefill_backlog_s[:] = rng.random(len(pre))
    caches = [PrefixCache(400, i, view.decode_index) for i in range(n)]
    pcaches = [PrefixCache(400, i, view.prefill_index) for i in range(len(pre))]
    for r in trace[:2000]:
        caches[rng.integers(n)].insert(r.hash_ids)
        pcaches[rng.integers(len(pre))].insert(r.hash_ids)
    snap = Snapshot(0.0, topo.capacity_bps * rng.random(topo.n_links) * 0.9, version=1)
    oracle = CounterOracle(topo, routing, lambda: snap, lambda: 0.5)
    return topo, view, oracle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SHAPES))
    ap.add_argument("--decisions", type=int, default=2000)
    args = ap.parse_args()
    trace = load_trace(DATA_DIR / "mooncake-conversation.jsonl.gz", requests=2000 + args.decisions)
    policies = ["round_robin"] + [p for p in registry.names() if p != "round_robin"]
    print(f"decision time per policy (us), {args.decisions} decisions each; ratio = median / round_robin median")
    print(f"{'|D|':>5} {'policy':<17} {'median':>9} {'p99':>9} {'ratio':>7}")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        topo, view, oracle = build(n, trace, rng)
        meds = {}
        for pol in policies:
            sched = Scheduler(pol, {}, 1, view, oracle, topo)
            reqs = trace[2000 : 2000 + args.decisions]
            for r in reqs[:50]:  # warm caches of path rows
                sched.decide(r)
            us, pus = [], []
            for r in reqs:
                d = sched.decide(r)
                us.append(d.decision_us)
                pus.append(d.prefill_choice_us)
            meds[pol] = statistics.median(us)
            p99 = float(np.percentile(us, 99))
            print(
                f"{n:>5} {pol:<17} {meds[pol]:>9.1f} {p99:>9.1f} {meds[pol] / meds['round_robin'] if 'round_robin' in meds else float('nan'):>7.2f}"
            )
        print(f"{n:>5} {'(prefill choice)':<17} {statistics.median(pus):>9.1f} {float(np.percentile(pus, 99)):>9.1f}")
        target = 50 if n <= 64 else (1000 if n >= 4096 else None)
        for pol in ("netkv", "netkv_tbt") if target is not None else ():
            if pol in meds:
                verdict = "meets" if meds[pol] <= target else "MISSES"
                print(f"      {pol} target <= {target} us at |D| = {n}: {verdict} ({meds[pol]:.1f} us)")
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"(benchmark wall time {time.perf_counter() - t0:.1f} s)")
    raise SystemExit(rc)

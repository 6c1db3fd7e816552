#!/usr/bin/env python3
"""Benchmark: `netkv simulate` against splitwise-sim, whole processes, side by side in one run.

Both simulate the 12,031 requests of the Mooncake conversation trace on 64 instances: ours the
paper-like cluster (experiments/paper-64gpu.toml from trace second 0, one policy), splitwise-sim
(the peer P/D simulator, MIT, github.com/Mutinifni/splitwise-sim) 32 prompt + 32 token DGX-H100
instances with its mixed_pool scheduler, the arguments of ../shared/peer/splitwise/run.sh. Each
round runs every variant once, in alternating order, as a fresh process; the wall time includes
interpreter start-up, imports, trace loading, the simulation and writing results (and, for the
"with plots" variant, drawing them), after one untimed run of each (caches warm), with Python free
to cache bytecode as it does by default. Prints per variant the median and min wall seconds, peak RSS,
our events/s, and how many times faster than splitwise-sim each of ours is (median over median).

Needs splitwise-sim set up as ../shared/peer/splitwise/README.md says: --peer DIR (or $PEER) holding
splitwise-sim/, venv-sw/ and traces/mooncake_all.csv.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments/paper-64gpu.toml"


def splitwise_args(peer: Path, out: Path) -> list[str]:
    """splitwise-sim's command line for the whole trace on 64 instances (as run.sh)."""
    return [
        str(peer / "venv-sw/bin/python"),
        "run.py",
        "applications.0.scheduler=mixed_pool",
        "applications.0.model_architecture=llama2-70b",
        "applications.0.model_size=llama2-70b-fp16",
        "cluster=half_half",
        "cluster.servers.0.count=0",
        "cluster.servers.1.count=64",
        "start_state=splitwise",
        "start_state.prompt.num_instances=32",
        "start_state.token.num_instances=32",
        "performance_model=db",
        f"trace.dir={peer / 'traces'}",
        "trace.filename=mooncake_all",
        "seed=0",
        f"output_dir={out}",
    ]


def netkv_args(policy: str, out: Path, plots: bool) -> list[str]:
    args = [sys.executable, "-m", "netkv.cli", "simulate", str(EXPERIMENT), "--policy", policy]
    args += ["--set", "trace.start_s=0", "--out", str(out), "--quiet"]
    return args + ([] if plots else ["--no-plots"])


def child_env() -> dict[str, str]:
    """The children's environment: ours, but Python free to cache bytecode (its default). Where
    PYTHONDONTWRITEBYTECODE is set (as on this machine), every process of either program would
    compile its own modules again (0.1 s of ours), which is not how either runs anywhere else."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_one(args: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one process (its own rusage, by wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err, text=True, env=child_env())
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read(), err.read()
    if p.returncode != 0:
        tail = (etext or text).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"bench_vs_splitwise: {Path(args[1]).name} failed (exit {p.returncode}): {tail[0]}")
    return wall, usage.ru_maxrss / 1024, text


def check_peer(peer: Path | None) -> Path:
    guide = "see ../shared/peer/splitwise/README.md"
    if peer is None:
        raise SystemExit(f"bench_vs_splitwise: --peer DIR (or $PEER) is not set; {guide}")
    for need in ("splitwise-sim/run.py", "venv-sw/bin/python", "traces/mooncake_all.csv"):
        if not (peer / need).exists():
            raise SystemExit(f"bench_vs_splitwise: {peer / need} is missing; {guide}")
    return peer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", type=Path, default=os.environ.get("PEER"), help="splitwise-sim work dir (default: $PEER)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every variant once (default 3)")
    ap.add_argument("--policy", default="netkv", help="our policy (default netkv)")
    a = ap.parse_args()
    if a.rounds < 1:
        raise SystemExit(f"bench_vs_splitwise: --rounds must be >= 1, got {a.rounds}")
    peer = check_peer(Path(a.peer) if a.peer else None)
    variants = ["splitwise-sim", "netkv simulate --no-plots", "netkv simulate"]
    walls: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, float] = dict.fromkeys(variants, 0.0)
    events, core = 0, "?"
    with tempfile.TemporaryDirectory(prefix="bench-sw-") as tmp:
        tmpd = Path(tmp)
        # one untimed run of each program first: bytecode and font caches, the trace files in the page cache
        run_one(splitwise_args(peer, tmpd / "sw-warm"), cwd=peer / "splitwise-sim")
        run_one(netkv_args(a.policy, tmpd / "nk-warm", plots=True))
        print("warm-up: one untimed run of each", flush=True)
        for rnd in range(a.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for v in order:
                if v == "splitwise-sim":
                    w, mb, _ = run_one(splitwise_args(peer, tmpd / f"sw{rnd}"), cwd=peer / "splitwise-sim")
                else:
                    w, mb, out = run_one(netkv_args(a.policy, tmpd / f"nk{rnd}", plots=v == "netkv simulate"))
                    m = re.search(r"(\d+) events \((.+)\)", out)
                    if m is None:
                        raise SystemExit(f"bench_vs_splitwise: no event count in netkv's output: {out[-200:]!r}")
                    events, core = int(m.group(1)), m.group(2)
                walls[v].append(w)
                peaks[v] = max(peaks[v], mb)
                print(f"round {rnd + 1}/{a.rounds}: {v:<26} {w:6.2f} s  {mb:5.0f} MB", flush=True)
    base = statistics.median(walls["splitwise-sim"])
    print(f"\n12,031 requests, 64 instances; ours: policy {a.policy}, {events} events, {core}")
    print(f"{'variant':<26} {'median s':>8} {'min s':>7} {'peak MB':>8} {'x faster':>9} {'events/s':>9}")
    for v in variants:
        med = statistics.median(walls[v])
        faster = "-" if v == "splitwise-sim" else f"{base / med:.2f}"
        evs = "-" if v == "splitwise-sim" else f"{events / med:,.0f}"
        print(f"{v:<26} {med:>8.2f} {min(walls[v]):>7.2f} {peaks[v]:>8.0f} {faster:>9} {evs:>9}")
    print("target (issue 8): >= 3x faster than splitwise-sim as a whole process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the fabric runs on a server that holds Mininet hosts: ping from them, end what runs in them,
list agent sockets. Called here directly, and over SSH on other servers
(`python -m netkv.emulation.remote ping|kill|sockets`, arguments as JSON on standard input), since
process ids and files of another server mean nothing on this one."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import psutil


def kill_in_namespaces(shell_pids: list[int]) -> int:
    """SIGKILL every process in the network namespaces of `shell_pids` (Mininet hosts' shells)
    besides the shells themselves; never this process's namespace. Returns how many it killed."""
    spaces = set()
    for pid in shell_pids:
        try:
            spaces.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            pass
    spaces.discard(os.stat("/proc/self/ns/net").st_ino)
    skip = {*shell_pids, os.getpid()}
    n = 0
    for p in psutil.process_iter(["pid"]):
        if p.pid in skip:
            continue
        try:
            if os.stat(f"/proc/{p.pid}/ns/net").st_ino in spaces:
                p.kill()
                n += 1
        except (OSError, psutil.Error):
            pass
    return n


def sockets_present(sock_dir: str | Path, names: list[str]) -> list[str]:
    """Those of `names` whose agent socket (`<name>.sock`) exists in sock_dir."""
    d = Path(sock_dir)
    return [n for n in names if (d / f"{n}.sock").is_socket()]


def ping(sources: dict[int, int], pairs: list[tuple[int, int]], ips: dict[int, str], timeout_s: float) -> list:
    """emulation.ping.ping_pairs with addresses from a table (what travels as JSON)."""
    from netkv.emulation.ping import ping_pairs

    return ping_pairs(sources, pairs, lambda h: ips[h], timeout_s=timeout_s)


def command(op: str) -> list[str]:
    """The command line that runs `op` here or on a server with the same Python at the same path."""
    return [sys.executable, "-m", "netkv.emulation.remote", op]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("op", choices=("ping", "kill", "sockets"))
    a = ap.parse_args(argv)
    req = json.load(sys.stdin)
    if a.op == "kill":
        out: object = kill_in_namespaces([int(p) for p in req["pids"]])
    elif a.op == "sockets":
        out = sockets_present(req["dir"], list(req["names"]))
    else:
        out = ping(
            {int(k): int(v) for k, v in req["sources"].items()},
            [(int(s), int(d)) for s, d in req["pairs"]],
            {int(k): v for k, v in req["ips"].items()},
            float(req["timeout_s"]),
        )
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time KV-like transfers over one long-lived TCP connection (run inside two Mininet hosts).

server PORT                      accept one connection; per message: read its 8-byte length and
                                 the bytes, answer one byte; when the client closes, print one JSON
                                 line with each message's receive span (its first segment's arrival
                                 to its last byte's: what the agents time), warm-up ones included
client IP PORT NBYTES REPS GAP [WARMUP]
                                 send WARMUP (default 2) + REPS messages of NBYTES, GAP seconds apart
                                 (the connection idles before each, as between KV transfers); print
                                 one JSON line with the seconds from first byte sent to the answer,
                                 for each message after the warm-up ones
Used by scripts/bench_fabric.py --transfers.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def server(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    c, _ = s.accept()
    spans = []
    while True:
        hdr = c.recv(8, socket.MSG_WAITALL)
        if len(hdr) < 8:
            break
        t0 = time.monotonic()
        left = int.from_bytes(hdr, "big")
        while left:
            b = c.recv(min(1 << 20, left))
            if not b:
                break
            left -= len(b)
        spans.append(time.monotonic() - t0)
        c.sendall(b"k")
    print(json.dumps(spans), flush=True)


def client(ip: str, port: int, n: int, reps: int, gap: float, warmup: int = 2) -> None:
    c = socket.create_connection((ip, port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = n.to_bytes(8, "big") + b"x" * n
    times = []
    for i in range(reps + warmup):
        time.sleep(gap)
        t0 = time.monotonic()
        c.sendall(data)
        c.recv(1)
        if i >= warmup:
            times.append(time.monotonic() - t0)
    print(json.dumps(times))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(
            sys.argv[2],
            int(sys.argv[3]),
            int(sys.argv[4]),
            int(sys.argv[5]),
            float(sys.argv[6]),
            *map(int, sys.argv[7:8]),
        )

"""Packet-train prober for the probe oracle: trains built with scapy, sent and received inside the fabric.

python -m netkv.agents.prober SPEC.json

One process in the root namespace holds, for every host of the spec, a socket opened inside that
host's network namespace (entered with setns(2) through /proc/PID/ns/net of the host's shell): a raw
IP socket in each sending (prefill) host, a UDP socket with kernel receive timestamps
(SO_TIMESTAMPNS) in each receiving (decode) host. Every `interval_s` wall seconds it sends the next
pair's train: `packets` IPv4/UDP packets of `packet_bytes`, built with scapy (its IP and UDP layers
and a probe header of ours: train id, sequence number, train length; one train at start, its
addresses and train id patched in for each pair and train), back to back from the sender's namespace; the receiver's kernel stamps each arrival. The train's rate is its asymptotic
dispersion rate, (received - 1) frames over the time from the first arrival to the last (Dovrolis,
Ramanathan, Moore, "Packet-dispersion techniques and a capacity-estimation methodology", IEEE/ACM
ToN 2004: between the available bandwidth and the capacity of the path, nearer the first when cross
traffic is elastic). Each finished train is one JSON line in `out`: wall time, pair, packets sent and
received, the rate in real-cluster bytes/s (x `bandwidth_scale`). SIGTERM or SIGINT end it after a
last line with its totals (trains, bytes sent, CPU seconds).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

PORT = 47_000  # UDP port of the probe trains (source and destination)
SO_TIMESTAMPNS = 35  # Linux; Python's socket module does not name it
CLONE_NEWNET = 0x40000000
ETH_HEADER = 14  # what the link's shaper also counts per frame

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(pid: int, fn):
    """fn() run inside the network namespace of process `pid` (sockets it opens stay there)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into the namespace of pid {pid}: {os.strerror(err)}")
        try:
            return fn()
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to our namespace: {os.strerror(err)}")
    finally:
        os.close(own)
        os.close(target)


def probe_header_class():
    """The scapy layer of a probe packet's payload (built on first use: scapy is slow to import)."""
    from scapy.fields import IntField, ShortField
    from scapy.packet import Packet

    class ProbeHdr(Packet):
        name = "NetKVProbe"
        fields_desc = [IntField("train", 0), ShortField("seq", 0), ShortField("count", 0)]

    return ProbeHdr


TRAIN_AT = 28  # offset of the train id in a probe packet: after the IPv4 (20) and UDP (8) headers


def build_train(src_ip: str, dst_ip: str, train: int, packets: int, packet_bytes: int) -> list[bytes]:
    """The train's IPv4 packets, `packet_bytes` long each, as raw bytes (built with scapy). The UDP
    checksum is left out (0, allowed over IPv4), so that `renumber` can reuse a pair's packets."""
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    hdr = probe_header_class()
    out = []
    for seq in range(packets):
        udp = UDP(sport=PORT, dport=PORT, chksum=0)
        p = IP(src=src_ip, dst=dst_ip, ttl=64) / udp / hdr(train=train, seq=seq, count=packets)
        pad = packet_bytes - len(p)
        if pad < 0:
            raise ValueError(f"packet_bytes {packet_bytes} is below the {len(p)} bytes of the headers")
        out.append(bytes(p / Raw(b"\0" * pad)))
    return out


def retarget(pkts: list[bytes], src_ip: str, dst_ip: str, train: int) -> list[bytes]:
    """The same packets for another pair and train: addresses and train id patched in. The IP
    checksum is left stale: a raw socket with IP_HDRINCL has the kernel fill it in (raw(7)), and
    the UDP checksum is 0 (none), so nothing else depends on what changed."""
    head = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip)
    tid = struct.pack("!I", train)
    return [p[:12] + head + p[20:TRAIN_AT] + tid + p[TRAIN_AT + 4 :] for p in pkts]


def train_rate(stamps: list[float], frame_bytes: int) -> float | None:
    """Asymptotic dispersion rate (bytes/s) of a train from its arrival times; None below 2 arrivals."""
    if len(stamps) < 2:
        return None
    span = max(stamps) - min(stamps)
    return (len(stamps) - 1) * frame_bytes / span if span > 0 else None


class Prober:
    def __init__(self, spec: dict):
        self.spec = spec
        self.pairs = spec["pairs"]  # [src name, src pid, src ip, dst name, dst pid, dst ip]
        self.interval = float(spec["interval_s"])
        self.packets = int(spec["packets"])
        self.packet_bytes = int(spec["packet_bytes"])
        self.scale = float(spec["bandwidth_scale"])
        self.tx: dict[str, socket.socket] = {}
        self.rx: dict[str, socket.socket] = {}
        for s_name, s_pid, _, d_name, d_pid, d_ip in self.pairs:
            if s_name not in self.tx:
                self.tx[s_name] = in_netns(
                    s_pid, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                )
            if d_name not in self.rx:
                self.rx[d_name] = in_netns(d_pid, lambda ip=d_ip: self._rx_socket(ip))
        # one train built with scapy, retargeted for every pair and train (building 1,024 pairs'
        # trains with scapy took ~10% of a core)
        self._template = build_train("0.0.0.0", "0.0.0.0", 0, self.packets, self.packet_bytes)
        self.trains = self.bytes_sent = 0
        self.stop = False

    @staticmethod
    def _rx_socket(ip: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((ip, PORT))
        s.setblocking(False)
        return s

    def _drain(self, rx: socket.socket, train: int, stamps: list[float]) -> None:
        """Read what has arrived: the kernel's stamp of every packet of this train."""
        while True:
            try:
                data, anc, _, _ = rx.recvmsg(65535, 64)
            except BlockingIOError:
                return
            # the probe header's train id (scapy built it; struct reads it: a scapy dissection per
            # packet cost more CPU than everything else the prober does)
            if len(data) < 4 or struct.unpack_from("!I", data)[0] != train:
                continue  # a late packet of an earlier train
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    stamps.append(sec + nsec * 1e-9)

    def run(self, out) -> None:
        nxt = time.monotonic()
        i = 0
        while not self.stop:
            s_name, _, s_ip, d_name, _, d_ip = self.pairs[i % len(self.pairs)]
            pkts = retarget(self._template, s_ip, d_ip, i)
            tx, rx = self.tx[s_name], self.rx[d_name]
            t_send = time.time()
            for p in pkts:
                tx.sendto(p, (d_ip, 0))
            self.trains += 1
            self.bytes_sent += len(pkts) * self.packet_bytes
            stamps: list[float] = []
            nxt += self.interval
            # collect until the whole train is in or the next train is due
            while len(stamps) < self.packets and not self.stop:
                left = nxt - time.monotonic()
                if left <= 0:
                    break
                if select.select([rx], [], [], left)[0]:
                    self._drain(rx, i, stamps)
            rate = train_rate(stamps, self.packet_bytes + ETH_HEADER)
            line = {"t": t_send, "src": s_name, "dst": d_name, "sent": len(pkts), "received": len(stamps)}
            line["rate_Bps"] = None if rate is None else rate * self.scale
            out.write(json.dumps(line) + "\n")
            out.flush()
            i += 1
            time.sleep(max(0.0, nxt - time.monotonic()))

    def totals(self) -> dict:
        cpu = os.times()
        return {"trains": self.trains, "bytes_sent": self.bytes_sent, "cpu_s": cpu.user + cpu.system}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m netkv.agents.prober SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    prober = Prober(spec)

    def stop(*_):
        prober.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(spec["out"], "a") as out:
        try:
            prober.run(out)
        finally:
            out.write(json.dumps({"totals": prober.totals()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

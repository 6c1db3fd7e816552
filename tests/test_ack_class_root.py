"""The pure-ACK class of a shaped port (root; two network namespaces and a veth, no Mininet): TCP
segments without payload take it, everything else the shaped data path."""

import os
import re
import subprocess
import sys
import uuid

import pytest

from netkv.topology.mininet_fabric import fair_queue_batch

pytestmark = [pytest.mark.root]

SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(200):
    s.sendall(b"h" * 100)  # a small data segment on its own (as an agent's block header)
    s.sendall(b"x" * 20000)
    time.sleep(0.01)  # 20 KB leave a 25 Mbit/s port in 6.4 ms: the next header is sent alone
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""
RECEIVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
c.sendall(b"k")
"""


def _sh(*args):
    subprocess.run(args, check=True, capture_output=True, text=True)


def _class_counts(ns, dev, classid):
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-s", "class", "show", "dev", dev, "classid", classid],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"Sent (\d+) bytes (\d+) pkt", out)
    return int(m.group(1)), int(m.group(2))


def test_only_segments_without_payload_take_the_ack_class():
    if os.geteuid() != 0:
        pytest.skip("needs root")  # the conftest hook turns this into a failure in CI
    tag = uuid.uuid4().hex[:6]
    a, b = f"ackt-a-{tag}", f"ackt-b-{tag}"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", "ackva", "netns", a, "type", "veth", "peer", "name", "ackvb", "netns", b)
        for ns, dev, ip in ((a, "ackva", "10.250.0.1/24"), (b, "ackvb", "10.250.0.2/24")):
            _sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "mtu", "9000", "up")
            batch = "\n".join(fair_queue_batch(dev, 25, 9000, 20, 64)) + "\n"
            subprocess.run(["ip", "netns", "exec", ns, "tc", "-batch", "-"], input=batch, check=True, text=True)
        rx = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
        )
        assert rx.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", SENDER, "10.250.0.2"], check=True, timeout=60)
        rx.wait(timeout=10)
        data_ack_bytes, data_ack_pkts = _class_counts(a, "ackva", "3:2")  # the sender's side
        acks_bytes, acks_pkts = _class_counts(b, "ackvb", "3:2")  # the receiver's side: its ACKs
        data_bytes, _ = _class_counts(a, "ackva", "3:3")
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)
    assert data_bytes >= 200 * 20100  # every data byte went through the shaped class
    assert acks_pkts >= 50 and acks_bytes <= 80 * acks_pkts  # the receiver's ACKs: pure, 52-80 bytes
    # the sender's side: its SYN and final ACKs at most, never one of the 200 small data segments
    assert data_ack_pkts <= 10 and data_ack_bytes <= 80 * max(data_ack_pkts, 1), (data_ack_pkts, data_ack_bytes)

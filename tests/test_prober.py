"""The probe oracle's prober: trains built with scapy, their dispersion rate, the feed the service reads."""

import json

import pytest

from netkv.agents.prober import ETH_HEADER, build_train, probe_header_class, retarget, train_rate
from netkv.scheduler.oracle import ProbeOracle
from netkv.scheduler.service import ProbeFeed

from conftest import ROUTING, TOPO


def test_a_train_is_packets_of_the_given_size_numbered_in_order():
    from scapy.layers.inet import IP, UDP

    pkts = build_train("10.0.0.1", "10.0.1.2", train=7, packets=5, packet_bytes=1500)
    assert len(pkts) == 5 and all(len(p) == 1500 for p in pkts)
    hdr = probe_header_class()
    for i, raw in enumerate(pkts):
        ip = IP(raw)
        assert (ip.src, ip.dst, ip.len) == ("10.0.0.1", "10.0.1.2", 1500)
        h = hdr(bytes(ip[UDP].payload)[:8])
        assert (h.train, h.seq, h.count) == (7, i, 5)
    again = retarget(pkts, "10.0.2.3", "10.0.3.4", 123456)  # the same packets for another pair and train
    assert [(IP(p).src, IP(p).dst) for p in again] == [("10.0.2.3", "10.0.3.4")] * 5
    assert [hdr(bytes(IP(p)[UDP].payload)[:8]).seq for p in again] == list(range(5))
    assert [hdr(bytes(IP(p)[UDP].payload)[:8]).train for p in again] == [123456] * 5
    assert [IP(p)[UDP].chksum for p in again] == [0] * 5 and [p[40:] for p in again] == [p[40:] for p in pkts]
    assert all(len(p) == 1500 and IP(p).len == 1500 for p in again)
    with pytest.raises(ValueError, match="below the"):
        build_train("10.0.0.1", "10.0.1.2", 0, 2, 20)


def test_the_dispersion_rate_counts_the_frames_after_the_first_over_the_spread():
    # 4 frames of 1514 bytes spaced 1 ms apart (arrival order does not matter): 3 x 1514 B per 3 ms
    assert train_rate([0.003, 0.0, 0.001, 0.002], 1500 + ETH_HEADER) == pytest.approx(1514 / 1e-3)
    assert train_rate([5.0], 1514) is None and train_rate([], 1514) is None  # one packet: no spacing
    assert train_rate([1.0, 1.0], 1514) is None  # no spread to divide by


def test_the_feed_records_complete_lines_on_the_trace_clock_and_counts_empty_trains(tmp_path):
    path = tmp_path / "probes.jsonl"
    o = ProbeOracle(TOPO, ROUTING, lambda: 0.0)
    feed = ProbeFeed(path)
    feed.poll(o, TOPO, lambda w: w)  # nothing written yet: nothing happens
    line = {"t": 102.0, "src": "h0_0_0_0", "dst": "h1_0_0_0", "sent": 8, "received": 8, "rate_Bps": 5e9}
    empty = {**line, "dst": "h1_0_0_1", "received": 1, "rate_Bps": None}
    later = json.dumps({**line, "t": 104.0})
    path.write_text(json.dumps(line) + "\n" + json.dumps(empty) + "\n" + later[:20])  # the last one cut short
    feed.poll(o, TOPO, lambda wall: (wall - 100.0) / 2)
    p, d = TOPO.host_index["h0_0_0_0"], TOPO.host_index["h1_0_0_0"]
    assert o.measured == {(p, d): (5e9, 1.0)} and (feed.trains, feed.empty) == (2, 1)
    with open(path, "a") as fh:  # the rest of the cut line, then the prober's totals
        fh.write(later[20:] + "\n" + json.dumps({"totals": {}}) + "\n")
    feed.poll(o, TOPO, lambda wall: (wall - 100.0) / 2)
    assert o.measured[(p, d)] == (5e9, 2.0) and feed.trains == 3
    feed.close()

"""Per-hop and serialization latency: the flow model lands a transfer's last byte the path's latency
after it left, the oracles add the same latency, and the tiers differ by it."""

import json

import numpy as np
import pytest

from netkv.config import from_dict
from netkv.scheduler.oracle import StaticOracle
from netkv.simulator.engine import Simulation
from netkv.topology import FatTree, Routing
from netkv.topology.fattree import LinkRates


def _run(tmp_path, decode: str, hop_us: float, mtu: int):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"timestamp": 0, "input_length": 1024, "output_length": 4, "hash_ids": [1, 2]}) + "\n")
    raw = {
        "name": "lat",
        "policies": ["round_robin"],
        "topology": {"k": 2, "gpus_per_server": 2, "hop_latency_us": hop_us, "mtu_bytes": mtu},
        "placement": {"layout": "explicit", "prefill": ["h0_0_0_0"], "decode": [decode]},
        "trace": {"path": str(trace)},
        "telemetry": {"oracle": "static"},
    }
    sim = Simulation(from_dict(raw, None), "round_robin")
    (row,) = [r.to_row() for r in sim.run()]
    return sim, row


@pytest.mark.parametrize("decode", ["h0_0_0_1", "h1_0_0_1"])  # same server (2 links), across pods (10)
def test_a_transfer_lands_the_path_latency_after_its_bytes(tmp_path, decode):
    sim, row = _run(tmp_path, decode, hop_us=50.0, mtu=9000)
    _, bare = _run(tmp_path, decode, hop_us=0.0, mtu=0)
    topo = sim.topo
    links = sim.routing.path(topo.host_index["h0_0_0_0"], topo.host_index[decode])
    lat = sum(50e-6 + 9000 / topo.capacity_bps[lk] for lk in links)
    assert bare["transfer_s"] == pytest.approx(row["bytes_sent"] / topo.capacity_bps[links].min())
    assert row["transfer_s"] == pytest.approx(bare["transfer_s"] + lat, rel=1e-9)
    # the oracle's estimate of the lone transfer is what the flow model gives it
    assert row["est_transfer_s"] == pytest.approx(row["transfer_s"], rel=1e-9)
    assert row["ttft_s"] == pytest.approx(bare["ttft_s"] + lat, rel=1e-9)


def test_tiers_differ_by_latency_alone_on_equal_links():
    topo = FatTree(4, 2, LinkRates(400, 400, 400, 400), hop_latency_s=1e-6, mtu_bytes=4096)
    o, src = StaticOracle(topo, Routing(topo)), topo.host_index["h0_0_0_0"]
    dsts = np.array([topo.host_index[h] for h in ("h0_0_0_1", "h0_0_1_0", "h0_1_0_0", "h1_0_0_0")])
    sec, _ = o.cost_row(src, dsts, np.full(4, 1e6))
    hops = np.array([2, 4, 6, 8])
    lat = sec - 1e6 / (400e9 / 8)  # every link 400G: the bandwidth term is the same for all tiers
    assert lat == pytest.approx(hops * (1e-6 + 4096 / (400e9 / 8)))
    assert o.cost_row(src, dsts, np.zeros(4))[0].tolist() == [0.0] * 4  # no bytes, no latency

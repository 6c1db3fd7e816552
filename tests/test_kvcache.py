"""Prefix caches: LRU order, the slot index, and hits from trace hash_ids shortening prefill and
cutting the KV bytes sent."""

import json
import math

import numpy as np
import pytest

from netkv.config import from_dict
from netkv.kvcache import BlockIndex, PrefixCache
from netkv.simulator.engine import Simulation
from netkv.trace import load_trace


def test_lru_evicts_the_least_recently_used_block():
    c = PrefixCache(3)
    c.insert([1, 2, 3])
    c.touch([1])  # 2 is now the oldest
    c.insert([4])
    assert 2 not in c and all(b in c for b in (1, 3, 4)) and len(c) == 3
    c.insert([3])  # refresh: 1 is now the oldest
    c.insert([5])
    assert 1 not in c and all(b in c for b in (3, 4, 5))
    # match counts leading blocks only and does not change recency
    assert c.match([3, 4, 9, 5]) == 2 and c.match([9, 3]) == 0 and c.match([]) == 0
    c.insert([6])
    assert 4 not in c  # 4 was older than 3 and 5 whatever match() looked at


def test_resize_evicts_oldest_and_zero_capacity_caches_nothing():
    c = PrefixCache(5)
    c.insert([1, 2, 3, 4, 5])
    c.resize(2)
    assert [b in c for b in range(1, 6)] == [False, False, False, True, True]
    c.resize(-3)
    assert c.capacity == 0 and len(c) == 0
    z = PrefixCache(0)
    z.insert([1, 2])
    assert len(z) == 0
    one = PrefixCache(1)
    one.insert([5, 6])
    assert 6 in one and 5 not in one and len(one) == 1
    with pytest.raises(ValueError, match=r"^cache capacity must be >= 0$"):
        PrefixCache(-1)


def test_the_index_mirrors_every_cache_and_answers_prefix_hits():
    idx = BlockIndex(3)
    caches = [PrefixCache(4, s, idx) for s in range(3)]
    caches[0].insert([10, 11, 12])
    caches[1].insert([10, 11])
    caches[2].insert([11, 12])  # holds the middle but not the first block: no prefix
    assert list(idx.prefix_hits([10, 11, 12, 13])) == [3, 2, 0]
    assert list(idx.prefix_hits([])) == [0, 0, 0]
    assert list(idx.holds(11)) == [True, True, True] and idx.holds(11).dtype == bool
    assert idx.prefix_hits([10]).dtype == np.int64 and idx.prefix_hits([99]).dtype == np.int64
    caches[0].insert([20, 21])  # capacity 4: 10 and 11 leave slot 0
    assert list(idx.prefix_hits([10, 11, 12])) == [0, 2, 0]
    assert 10 not in caches[0] and list(idx.holds(10)) == [False, True, False]
    caches[1].clear()
    assert list(idx.holds(10)) == [False, False, False] and 10 not in idx.holders
    assert list(idx.prefix_hits([11, 12])) == [2, 0, 2]


def test_prefix_hits_equal_a_brute_force_over_random_caches():
    rng = np.random.default_rng(5)
    n = 70  # more slots than one byte of the mask
    idx = BlockIndex(n)
    caches = [PrefixCache(int(rng.integers(0, 30)), s, idx) for s in range(n)]
    for _ in range(400):
        s = int(rng.integers(n))
        caches[s].insert([int(x) for x in rng.integers(0, 40, rng.integers(1, 8))])
    for _ in range(200):
        ids = [int(x) for x in rng.integers(0, 40, rng.integers(0, 10))]
        want = [caches[s].match(ids) for s in range(n)]
        assert list(idx.prefix_hits(ids)) == want
        # the (hit count, slot mask) answer spreads one value per distinct hit count over the slots
        drops = idx.prefix_drops(ids)
        counts = [0] + [j for j, _ in drops]
        assert [counts[g] for g in idx.groups_of(drops)] == want
        assert len({j for j, _ in drops}) == len(drops) and all(j > 0 for j, _ in drops)


def test_memoised_hit_arrays_cannot_be_changed_by_a_caller():
    idx = BlockIndex(4)
    cache = PrefixCache(10, 2, idx)
    cache.insert([1, 2, 3])
    hits = idx.prefix_hits([1, 2, 9])
    assert list(hits) == [0, 0, 2, 0] and idx.prefix_hits([1, 2, 9]) is hits  # memoised
    with pytest.raises(ValueError):
        hits += 1  # a shared answer: read-only


def _shared_prefix_trace(path, shared_blocks=12):
    """Request 0, then request 1 one second later sharing its first `shared_blocks` of 16 blocks."""
    a = list(range(100, 116))
    b = a[:shared_blocks] + list(range(200, 200 + 16 - shared_blocks))
    lines = [
        {"timestamp": 0, "input_length": 8192, "output_length": 8, "hash_ids": a},
        {"timestamp": 1000, "input_length": 8192, "output_length": 8, "hash_ids": b},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _sim(tmp_path, **compute):
    raw = {
        "name": "cache",
        "policies": ["round_robin"],
        "topology": {"k": 2, "gpus_per_server": 2, "hop_latency_us": 0, "mtu_bytes": 0},  # bandwidth only
        "placement": {"layout": "explicit", "prefill": ["h0_0_0_0"], "decode": ["h1_0_0_1"]},
        "trace": {"path": str(_shared_prefix_trace(tmp_path / "t.jsonl"))},
        "compute": compute,
    }
    sim = Simulation(from_dict(raw, None), "round_robin")
    return sim, [r.to_row() for r in sim.run()]


def test_a_shared_prefix_shortens_the_prefill_and_cuts_the_bytes_sent(tmp_path):
    sim, (first, second) = _sim(tmp_path)
    kv = sim.compute.model.kv_bytes_per_token
    assert first["prefill_hit_blocks"] == 0 and first["decode_hit_blocks"] == 0
    assert first["bytes_sent"] == 8192 * kv and first["blocks_sent"] == 16
    # the prefill instance and the decode instance both hold the first 12 blocks now
    assert second["prefill_hit_blocks"] == 12 and second["decode_hit_blocks"] == 12
    assert second["prefill_s"] == pytest.approx(sim.compute.prefill_s(8192 - 12 * 512))
    assert second["prefill_s"] < first["prefill_s"] / 2
    assert second["bytes_sent"] == (8192 - 12 * 512) * kv and second["blocks_sent"] == 4
    assert second["transfer_s"] == pytest.approx(first["transfer_s"] / 4, rel=1e-6)


def test_no_cache_capacity_no_hits(tmp_path):
    _s, (_first, second) = _sim(tmp_path, prefill_cache_blocks=0)
    assert second["prefill_hit_blocks"] == 0 and second["decode_hit_blocks"] == 12
    # the decode cache lives in the KV space running sequences leave free: with 17 blocks, request 0
    # (17 blocks with its output) took all of it while it ran, and its blocks were evicted
    _s, (_first, second) = _sim(tmp_path, decode_kv_blocks=17)
    assert second["prefill_hit_blocks"] == 12 and second["decode_hit_blocks"] == 0


def test_the_trace_loader_keeps_the_hash_ids(tmp_path):
    reqs = load_trace(_shared_prefix_trace(tmp_path / "t.jsonl"))
    assert reqs[0].hash_ids == tuple(range(100, 116))
    assert reqs[1].hash_ids[:12] == reqs[0].hash_ids[:12] and reqs[1].n_blocks == 16
    assert math.isclose(reqs[1].arrival_s, 1.0)

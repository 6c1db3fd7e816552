"""The compiled flow network and prefix caches: built, chosen, and equal to the Python reference
operation by operation and over whole simulations (simulator/compiled.py)."""

import math
import random

import numpy as np
import pytest

from netkv.kvcache import BlockIndex, PrefixCache
from netkv.simulator import compiled
from netkv.simulator.engine import Simulation
from netkv.simulator.network import FlowNetwork
from netkv.trace import Request

from conftest import make_exp

WALL_CLOCK = {"decision_us", "prefill_choice_us"}


def test_the_compiled_core_is_built_and_chosen_unless_turned_off(monkeypatch):
    assert compiled.built(), "the compiled core is not built: run scripts/setup.sh (scripts/build_ext.py)"
    monkeypatch.delenv("NETKV_PURE_PYTHON", raising=False)
    reqs = [Request(0, 0.0, 512, 8, (1, 2))]
    assert compiled.flow_network() is compiled.CompiledFlowNetwork
    assert compiled.kv_caches(64, reqs) == (compiled.CompiledPrefixCache, compiled.CompiledBlockIndex)
    monkeypatch.setenv("NETKV_PURE_PYTHON", "1")
    assert compiled.flow_network() is FlowNetwork
    assert compiled.kv_caches(64, reqs) == (PrefixCache, BlockIndex)
    assert compiled.label(FlowNetwork, PrefixCache) == "python flow network and caches"


def test_the_caches_fall_back_to_python_where_the_compiled_ones_cannot_key(monkeypatch):
    monkeypatch.delenv("NETKV_PURE_PYTHON", raising=False)
    ok = [Request(0, 0.0, 1024, 8, (-(2**63), 2**63 - 1)), Request(1, 0.0, 1, 8, ())]
    assert compiled.kv_caches(64, ok)[0] is compiled.CompiledPrefixCache
    assert compiled.kv_caches(65, ok)[0] is PrefixCache  # more slots than a 64-bit mask holds
    for big in (2**63, -(2**63) - 1):  # a block id the trace accepts (within 64 bits) but not int64
        assert compiled.kv_caches(64, ok + [Request(2, 0.0, 512, 8, (big,))])[0] is PrefixCache
    with pytest.raises(ValueError, match="1 to 64 slots"):
        compiled.CompiledBlockIndex(65)
    with pytest.raises(TypeError, match="compiled BlockIndex"):
        compiled.CompiledPrefixCache(4, 0, BlockIndex(2))


def _net_state(net):
    flows = {fid: (f.rate, f.remaining, f.sent, f.path, f.demand, f.tag) for fid, f in net.flows.items()}
    nxt = net.next_completion()
    return (
        net.link_rate.tolist(),
        net.counters.tolist(),
        net.link_flows.tolist(),
        net.version,
        net.t,
        flows,
        list(net.finite),
        None if nxt is None else (nxt[0], nxt[1].id),
    )


@pytest.mark.parametrize("seed", range(6))
def test_the_flow_networks_agree_bit_for_bit_operation_by_operation(seed):
    rng = random.Random(seed)
    n_links = 14
    cap = np.array([rng.choice([1e9, 2.5e9, 4e9, 1e10, 3.3e9]) for _ in range(n_links)])
    paths = [tuple(rng.sample(range(n_links), rng.randint(1, 5))) for _ in range(12)] + [()]
    nets = [FlowNetwork(cap), compiled.CompiledFlowNetwork(cap)]
    t = 0.0
    for step in range(400):
        op = rng.random()
        live = sorted(nets[0].flows)
        if op < 0.45 or not live:
            path = rng.choice(paths)
            nbytes = math.inf if rng.random() < 0.15 else rng.uniform(1e6, 5e9)
            demand = rng.choice([math.inf, math.inf, rng.uniform(1e8, 5e9)])
            track = rng.random() < 0.2
            links = path if rng.random() < 0.5 else np.array(path, dtype=np.int64)
            made = [n.add(t, links, nbytes, demand, tag=("bg", step), track=track) for n in nets]
            assert made[0].id == made[1].id
        elif op < 0.65:
            nxt = nets[0].next_completion()
            if nxt is not None:  # finish the next flow to end, as the engine does
                t = max(t, nxt[0])
                for n in nets:
                    n.advance(t)
                    n.remove_many([nxt[1].id])
        elif op < 0.75:
            gone = rng.sample(live, min(len(live), rng.randint(1, 3))) + [10**6]  # and an unknown id
            for n in nets:
                n.remove_many(gone)
        elif op < 0.85:
            fid, path = rng.choice(live), rng.choice(paths)
            moved = [n.reroute(t, fid, path) for n in nets]
            assert moved[0].id == moved[1].id and moved[0].sent == moved[1].sent
        else:
            t += rng.choice([0.0, rng.uniform(0, 0.5)])
            for n in nets:
                n.advance(t)
        assert _net_state(nets[0]) == _net_state(nets[1]), f"seed {seed}, step {step}"
        probe = rng.choice(paths[:-1])
        assert nets[0].train_rate(probe) == nets[1].train_rate(probe)


@pytest.mark.parametrize("seed", range(6))
def test_the_prefix_caches_agree_operation_by_operation(seed):
    rng = random.Random(seed)
    n_slots = rng.choice([3, 7, 64])
    universe = [rng.randrange(-(2**63), 2**63) for _ in range(25)] + list(range(15))
    chains = [[rng.choice(universe) for _ in range(rng.randint(0, 12))] for _ in range(30)]
    caps = [rng.choice([0, 3, 8, 20]) if s else 10 for s in range(n_slots)]
    sides = []
    for cache_cls, index_cls in (
        (PrefixCache, BlockIndex),
        (compiled.CompiledPrefixCache, compiled.CompiledBlockIndex),
    ):
        idx = index_cls(n_slots)
        caches = [cache_cls(caps[s], s, idx) for s in range(n_slots)]
        sides.append((idx, caches))
    rng = random.Random(seed + 1000)  # the same operations on both sides
    for step in range(500):
        op, slot, chain = rng.random(), rng.randrange(n_slots), rng.choice(chains)
        cut, delta = rng.randint(0, len(chain)), rng.choice([-5, -1, 0, 2, 6])
        for _idx, caches in sides:
            c = caches[slot]
            if op < 0.5:
                c.insert(chain)
            elif op < 0.7:
                c.touch(chain[:cut])
            elif op < 0.85:
                c.resize(c.capacity + delta)
            elif op < 0.9:
                c.clear()
        q = rng.choice(chains)
        (i0, c0), (i1, c1) = sides
        assert i0.prefix_drops(q) == i1.prefix_drops(q), f"seed {seed}, step {step}"
        d = i0.prefix_drops(q)
        assert i0.hits_of(d).tolist() == i1.hits_of(d).tolist()
        assert i0.groups_of(d).tolist() == i1.groups_of(d).tolist()
        assert [len(c) for c in c0] == [len(c) for c in c1]
        assert [c.match(q) for c in c0] == [c.match(q) for c in c1]
        assert [[b in c for b in universe] for c in c0] == [[b in c for b in universe] for c in c1]
        b = rng.choice(universe)
        assert i0.holds(b).tolist() == i1.holds(b).tolist()


@pytest.mark.parametrize("policy", ["round_robin", "netkv", "netkv_joint"])
def test_a_whole_simulation_gives_identical_rows_with_either(monkeypatch, policy):
    # busy enough that transfers share links; an elephant between pods on and off (tracked flows)
    bg = [{"src": ["h1_0_0_2"], "dst": ["h0_0_0_1"], "on_s": 0.4, "off_s": 0.3}]
    exp = make_exp(trace={"requests": 120, "rate_multiplier": 8.0}, background=bg)
    rows = {}
    for pure in ("1", "0"):
        monkeypatch.setenv("NETKV_PURE_PYTHON", pure)
        sim = Simulation(exp, policy)
        rows[pure] = [{k: v for k, v in r.to_row().items() if k not in WALL_CLOCK} for r in sim.run()]
        assert sim.core == ("python" if pure == "1" else "compiled") + " flow network and caches"
    assert len(rows["1"]) == 120 and rows["1"] == rows["0"]

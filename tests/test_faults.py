"""Link faults ([[fault]]): configuration checks, and the simulator moving flows off a failed link and
back when it is repaired, every request still completing."""

import math

import pytest

from netkv.config import ConfigError, from_dict
from netkv.scheduler.cluster import Cluster
from netkv.simulator.engine import Simulation
from netkv.topology import FatTree, Routing

from conftest import make_exp

K4 = {"k": 4, "gpus_per_server": 2, "server_link_gbps": 100, "edge_link_gbps": 100, "core_link_gbps": 100}
BG_SRC, BG_DST = "h0_0_0_0", "h1_0_0_1"


def _core_link_of_background() -> tuple[str, str]:
    """The aggregation -> core link the background pair's routed path takes (no link down)."""
    t = FatTree(4, 2)
    path = Routing(t).path(t.host_index[BG_SRC], t.host_index[BG_DST])
    lk = next(t.links[x] for x in path if t.links[x].level == "core")
    return lk.src, lk.dst


def _exp(faults, requests=30):
    return make_exp(
        topology=K4,
        trace={"requests": requests, "rate_multiplier": 4.0},
        policies=["round_robin"],
        background=[{"src": [BG_SRC], "dst": [BG_DST]}],
        fault=faults,
    )


def test_flows_leave_a_failed_link_and_requests_complete():
    a, b = _core_link_of_background()
    exp = _exp([{"link": [a, b], "at_s": 0.5}])  # down for ever from 0.5 s
    cl = Cluster.build(exp)
    sim = Simulation(cl, "round_robin")
    recs = sim.run()
    assert all(r.status == "completed" for r in recs)
    down = set(cl.faults[0])
    assert sim.fault_log[0]["t"] == 0.5 and sim.fault_log[0]["up"] is False
    assert sim.fault_log[0]["flows_moved"] >= 1  # at least the elephant
    for f in sim.net.flows.values():  # nothing left on the failed link ...
        assert not down.intersection(f.links.tolist())
    sim.net.advance(sim.now)
    before = sim.net.counters[list(down)].copy()
    sim.net.advance(sim.now + 1.0)
    assert (sim.net.counters[list(down)] == before).all()  # ... and its counters stand still


def test_a_flapping_link_moves_flows_away_and_back():
    a, b = _core_link_of_background()
    exp = _exp([{"link": [a, b], "at_s": 0.5, "down_s": 0.5, "times": 3, "every_s": 1.5}])
    sim = Simulation(Cluster.build(exp), "round_robin")
    recs = sim.run()
    assert all(r.status == "completed" for r in recs)
    ups = [e for e in sim.fault_log if e["up"]]
    downs = [e for e in sim.fault_log if not e["up"]]
    assert [e["t"] for e in downs] == [0.5, 2.0, 3.5] and [e["t"] for e in ups] == [1.0, 2.5, 4.0]
    assert all(e["flows_moved"] >= 1 for e in sim.fault_log)  # the elephant goes and comes back
    # the elephant delivered on its detours: its mean rate while on is its full share
    bg = sim.background_report()[0]
    assert bg["delivered_gbps_on"] == pytest.approx(100.0, rel=0.05)


def test_a_fault_changes_transfer_times_not_decisions_of_round_robin():
    a, b = _core_link_of_background()
    base = Simulation(Cluster.build(_exp([])), "round_robin").run()
    hit = Simulation(Cluster.build(_exp([{"link": [a, b], "at_s": 0.2, "down_s": 2.0}])), "round_robin").run()
    assert [(r.prefill, r.decode) for r in base] == [(r.prefill, r.decode) for r in hit]
    xfer = lambda r: r.t_transfer_end - r.t_prefill_end  # noqa: E731
    assert any(not math.isclose(xfer(x), xfer(y)) for x, y in zip(base, hit))


@pytest.mark.parametrize(
    "fault, msg",
    [
        ({"link": "a0_0"}, "fault[0].link: expected the two switches it joins"),
        ({"link": ["a0_0", "c0_0"], "when": 1}, "fault[0].when: unknown key"),
        ({"link": ["a0_0", "c0_0"], "at_s": -1}, "fault[0].at_s: must be >= 0"),
        ({"link": ["a0_0", "c0_0"], "at_s": math.nan}, "fault[0].at_s: expected a number, got nan"),
        ({"link": ["a0_0", "c0_0"], "down_s": math.inf}, "fault[0].down_s: expected a finite number, got inf"),
        (
            {"link": ["a0_0", "c0_0"], "every_s": 10**400},
            "fault[0].every_s: expected a finite number, got an integer too",
        ),
        ({"link": ["a0_0", "c0_0"], "at_s": 1e12}, "fault[0].at_s: must be <= "),
        ({"link": ["a0_0", "c0_0"], "down_s": 0}, "fault[0].down_s: must be >= 0.001 s"),
        ({"link": ["a0_0", "c0_0"], "times": 2, "down_s": 1}, "fault[0].every_s: required when times > 1"),
        ({"link": ["a0_0", "c0_0"], "times": 2, "down_s": 1, "every_s": 1}, "fault[0].every_s: must be > down_s"),
        ({"link": ["a0_0", "c0_0"], "times": 2, "every_s": 1}, "fault[0].every_s: must be > down_s"),
        ({"link": ["a0_0", "c0_0"], "every_s": 5}, "fault[0].every_s: only with times > 1"),
        ({"link": ["a0_0", "c0_0"], "times": 0}, "fault[0].times: expected an integer within 1..10000"),
        ({"link": ["a0_0", "e1_0"]}, "fault[0].link: no link between 'a0_0' and 'e1_0'"),
        ({"link": ["h0_0_0_0", "s0_0_0"]}, "fault[0].link: 'h0_0_0_0'-'s0_0_0' is a GPU's own link"),
        ({"link": ["s0_0_0", "e0_0"]}, "fault[0].link: 's0_0_0' has no other uplink"),
        ({"kind": "power", "at_s": 1}, "fault[0].kind: unknown fault kind 'power' (known: link, switch, controller"),
        ({"kind": "scheduler", "link": ["a0_0", "c0_0"], "down_s": 1}, "fault[0].link: only for kind = 'link'"),
        ({"kind": "scheduler", "at_s": 1}, "fault[0].down_s: required for a scheduler"),
        ({"kind": "controller", "at_s": 1}, "fault[0].down_s: required for a controller"),
        ({"kind": "switch", "down_s": 1}, "fault[0].target: required: the name of the switch"),
        ({"kind": "switch", "target": "e9_9", "down_s": 1}, "fault[0].target: no switch 'e9_9'"),
        ({"kind": "switch", "target": "h0_0_0_0", "down_s": 1}, "fault[0].target: no switch 'h0_0_0_0'"),
        ({"kind": "agent", "target": "h0_0_0_0", "down_s": 1}, "fault[0].down_s: an agent is not restarted"),
        ({"kind": "agent", "target": "h9_9_9_9"}, "fault[0].target: 'h9_9_9_9' runs no prefill or decode agent"),
        ({"kind": "controller", "target": "c0_0", "down_s": 1}, "fault[0].target: only for kind = 'switch' or"),
        ({"kind": "scheduler", "down_s": 1, "times": 2, "every_s": 1}, "so the scheduler comes back in between"),
    ],
)
def test_bad_faults_are_one_line_errors(fault, msg):
    raw = {"topology": K4, "fault": [fault]}
    with pytest.raises(ConfigError) as e:
        Cluster.build(from_dict(raw))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_fault_is_an_array_of_tables():
    with pytest.raises(ConfigError, match=r"fault: expected an array of tables"):
        from_dict({"fault": {"link": ["a0_0", "c0_0"]}})


def test_faults_survive_the_json_round_trip(tmp_path):
    import json

    from netkv.config import load_json, to_dict

    exp = _exp([{"link": ["a0_0", "c0_0"], "at_s": 1.0, "down_s": 0.5, "times": 2, "every_s": 2.0}])
    p = tmp_path / "e.json"
    p.write_text(json.dumps(to_dict(exp)))
    assert load_json(p).faults == exp.faults


def test_a_switch_fault_needs_a_daemon_per_switch():
    raw = {
        "topology": K4,
        "emulation": {"ovs_daemons": "shared"},
        "fault": [{"kind": "switch", "target": "c0_0", "down_s": 1}],
    }
    with pytest.raises(ConfigError, match=r"fault\[0\].kind: a switch fault needs a daemon per switch"):
        Cluster.build(from_dict(raw))


def test_process_faults_are_emulation_only_and_the_simulation_says_so(tmp_path):
    """The flow model has no processes: a scheduler or controller fault changes nothing in the
    simulation (identical results) and its summary lists it as not modelled."""
    from netkv.simulator.run import simulate_experiment

    procs = [
        {"kind": "scheduler", "at_s": 0.5, "down_s": 1.0},
        {"kind": "controller", "at_s": 1.0, "down_s": 1.0},
        {"kind": "agent", "target": "h0_0_0_0", "at_s": 2.0},
    ]
    base = Simulation(Cluster.build(_exp([])), "round_robin").run()
    sim = Simulation(Cluster.build(_exp(procs)), "round_robin")
    recs = sim.run()
    timing = ("decision_us", "prefill_choice_us")  # the scheduler's own CPU time: measured, not modelled
    row = lambda r: {k: v for k, v in r.to_row().items() if k not in timing}  # noqa: E731
    assert [row(r) for r in recs] == [row(r) for r in base]
    assert [(e["fault"], e["modelled"]) for e in sim.fault_log] == [
        ("scheduler", False),
        ("controller", False),
        ("agent h0_0_0_0", False),
    ]
    lines = []
    run, _ = simulate_experiment(Cluster.build(_exp(procs)), out=tmp_path, log=lines.append)
    assert any("not simulated" in x and "scheduler, controller, agent h0_0_0_0" in x for x in lines)
    assert len(run.read_policy_summary("round_robin")["faults"]) == 3


def test_process_faults_survive_the_json_round_trip(tmp_path):
    import json

    from netkv.config import load_json, to_dict

    exp = _exp(
        [{"kind": "switch", "target": "c0_0", "at_s": 1.0, "down_s": 0.5}, {"kind": "agent", "target": "h0_0_0_0"}]
    )
    p = tmp_path / "e.json"
    p.write_text(json.dumps(to_dict(exp)))
    assert load_json(p).faults == exp.faults
    assert [f.label for f in exp.faults] == ["switch c0_0", "agent h0_0_0_0"]

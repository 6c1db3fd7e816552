"""The simulated controller: counters exact per link, snapshots published on time, decisions that read
the right snapshot, and the scheduler's own committed transfers."""

import numpy as np
import pytest

from netkv.config import from_dict
from netkv.scheduler.oracle import Snapshot
from netkv.simulator.engine import Simulation

from conftest import write_trace

POLL, DELAY = 0.1, 0.25
BG_GBPS = 50.0  # fixed-rate elephant h0_0_0_0 -> h1_0_0_1 over links of 100 Gbit/s


def _exp(tmp_path, arrivals, *, background=True, placement=None, **tables):
    raw = {
        "name": "tele",
        "seed": 1,
        "policies": ["netkv"],
        "topology": {
            "k": 2,
            "gpus_per_server": 4,
            "gpu_link_gbps": 100,
            "server_link_gbps": 100,
            "edge_link_gbps": 100,
            "core_link_gbps": 100,
            "hop_latency_us": 0,  # bandwidth arithmetic only
            "mtu_bytes": 0,
        },
        "placement": placement or {"layout": "explicit", "prefill": ["h0_0_0_2"], "decode": ["h0_0_0_3"]},
        "trace": {"path": str(write_trace(tmp_path / "t.jsonl", arrivals, input_tokens=1024, output_tokens=4))},
        "telemetry": {"poll_interval_s": POLL, "publish_delay_s": DELAY, "poll_phase": "zero"},  # the grid from 0
        "background": [{"src": ["h0_0_0_0"], "dst": ["h1_0_0_1"], "rate_gbps": BG_GBPS}] if background else [],
    }
    for k, v in tables.items():
        raw[k].update(v)
    return from_dict(raw, None)


class Recorder:
    """Wraps a simulation: every snapshot the controller takes, and what each decision saw."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.polls: list = []
        self.decisions: list = []
        poll, decide = sim._poll_event, sim.sched.decide

        def on_poll(a, b):
            poll(a, b)
            pub, g, rates, t = sim._snaps[-1]
            full = np.zeros(sim.topo.n_links)
            full[sim._poll_groups[g]] = rates
            self.polls.append((sim.now, (pub, Snapshot(t, full))))

        def on_decide(req):
            seen = sim._published()
            d = decide(req)
            self.decisions.append((sim.now, seen, d))
            return d

        sim._poll_event = on_poll
        sim.sched.decide = on_decide

    def run(self):
        return [r.to_row() for r in self.sim.run()]


def test_counters_show_one_flow_at_its_rate_on_exactly_its_links(tmp_path):
    # arrivals are re-based to the first request; its KV transfer (same server) is over by 0.1 s
    sim = Simulation(_exp(tmp_path, [0.0, 2.0]), "netkv")
    rec = Recorder(sim)
    sim.run()
    path = set(sim.routing.path(sim.topo.host_index["h0_0_0_0"], sim.topo.host_index["h1_0_0_1"]))
    assert len(path) == 8  # GPU up to the core and down again, across pods
    rate = BG_GBPS * 1e9 / 8
    quiet = [(t, s) for t, (_pub, s) in rec.polls if 0.15 < t < 1.95]  # no KV transfer running
    assert len(quiet) >= 15
    for t, snap in quiet:
        assert snap.sampled_at == t
        on = np.flatnonzero(snap.rates)
        assert set(on.tolist()) == path, t
        assert snap.rates[on] == pytest.approx(rate, rel=1e-9)
    # each snapshot is published exactly publish_delay_s after it was sampled
    assert all(pub == pytest.approx(s.sampled_at + DELAY, abs=1e-12) for _t, (pub, s) in rec.polls)
    # every published change is a new version
    assert sim._snap.version > len(rec.polls) // 2


def test_without_the_elephant_the_counters_read_zero(tmp_path):
    sim = Simulation(_exp(tmp_path, [0.0, 2.0], background=False), "netkv")
    rec = Recorder(sim)
    sim.run()
    assert all(not s.rates.any() for t, (_p, s) in rec.polls if 0.15 < t < 1.95)
    # the KV transfer itself shows up once it runs (1024 tokens x 128 KiB at 100 Gbit/s: ~10.7 ms)
    assert any(s.rates.any() for _t, (_p, s) in rec.polls)


def test_snapshot_age_follows_the_poll_grid_and_the_publish_delay(tmp_path):
    """Arrivals after the first: a decision at t sees the sample taken at the last grid point s with
    s + publish_delay_s <= t; one just before that instant still sees the previous sample."""
    sim = Simulation(_exp(tmp_path, [0.0, 2.34, 2.36, 2.751]), "netkv")
    rec = Recorder(sim)
    rows = rec.run()
    got = [(round(now, 3), None if seen is None else round(seen.sampled_at, 3)) for now, seen, _d in rec.decisions]
    # at 0 the controller's latest published sample of the idle fabric (taken at -0.3, out at -0.05)
    assert got == [(0.0, -0.3), (2.34, 2.0), (2.36, 2.1), (2.751, 2.5)]
    for (now, seen, _d), row in zip(rec.decisions, rows):
        assert row["telemetry_age_s"] == pytest.approx(now - seen.sampled_at)
        assert row["oracle"] == "counters"


def test_a_decision_expects_its_transfer_when_its_prefill_ends(tmp_path):
    sim = Simulation(_exp(tmp_path, [0.0, 0.001]), "netkv")
    rec = Recorder(sim)
    rows = rec.run()
    pf = sim.compute.prefill_s(1024)
    (t0, _s0, d0), (t1, _s1, d1) = rec.decisions
    assert d0.transfer_start == pytest.approx(t0 + pf)
    # the second waits behind the first on the only prefill instance
    assert d1.transfer_start == pytest.approx(t0 + 2 * pf)
    assert rows[1]["t_prefill_end"] == pytest.approx(d1.transfer_start)


@pytest.mark.parametrize("count_committed", [True, False])
def test_a_simultaneous_request_sees_the_first_requests_committed_transfer(tmp_path, count_committed):
    """Two prefill instances on one server, one decode instance across pods: two requests at the same
    instant get the same prefill time, so their KV transfers overlap on the server uplink. The second
    decision must count the first's transfer, which the counters cannot show yet."""
    placement = {"layout": "explicit", "prefill": ["h0_0_0_0", "h0_0_0_1"], "decode": ["h1_0_0_3"]}
    exp = _exp(
        tmp_path,
        [0.0, 1.0, 1.0],
        background=False,
        placement=placement,
        telemetry={"count_committed": count_committed, "floor_fraction": 0.1},
    )
    sim = Simulation(exp, "netkv")
    rec = Recorder(sim)
    rows = rec.run()[1:]  # the first request only lets the first snapshot be published
    (_, s0, d0), (_, s1, d1) = rec.decisions[1:]
    assert s0 is not None and s0 is s1 and not s0.rates.any()  # same idle snapshot for both
    assert d0.prefill_slot != d1.prefill_slot and d0.transfer_start == pytest.approx(d1.transfer_start)
    static = d0.bytes_to_send / (100e9 / 8)
    assert d0.est_transfer_s == pytest.approx(static)
    if count_committed:
        # the first transfer fills the 100 Gbit/s path: only the floor (10%) is left
        assert d1.est_transfer_s == pytest.approx(static / 0.1)
    else:
        assert d1.est_transfer_s == pytest.approx(static)
    # in the flow model the two share the uplink: each takes twice as long as alone
    assert rows[0]["transfer_s"] == pytest.approx(2 * static, rel=1e-6)


def test_a_sample_published_at_the_decision_instant_is_used(tmp_path):
    """Binary-exact times: sampled at 0.25 s, published at 0.75 s, and a request arriving at 0.75 s
    sees it (published at or before now)."""
    exp = _exp(tmp_path, [0.0, 0.75], background=False, telemetry={"poll_interval_s": 0.25, "publish_delay_s": 0.5})
    sim = Simulation(exp, "netkv")
    rec = Recorder(sim)
    rec.run()
    (_t0, first, _d0), (t1, seen, _d1) = rec.decisions
    assert first.sampled_at == -0.5 and t1 == 0.75 and seen.sampled_at == 0.25  # -0.5: out at 0


def test_the_oracle_learns_when_each_transfer_starts(tmp_path):
    sim = Simulation(_exp(tmp_path, [0.0, 0.5, 1.0], background=False), "netkv")
    started = []
    real = sim.oracle.started
    sim.oracle.started = lambda key, t: (started.append((key, t)), real(key, t))
    rows = [r.to_row() for r in sim.run()]
    assert started == [(r["id"], pytest.approx(r["t_prefill_end"])) for r in rows]
    assert sim.oracle.committed == {}  # each released when its KV arrived


def _ages(tmp_path, phase, seed=1, policy="netkv", arrivals=None):
    exp = _exp(
        tmp_path,
        arrivals or [0.0, 3.0, 3.0, 6.0, 9.0, 9.0, 12.0],
        telemetry={"poll_phase": phase, "poll_interval_s": 0.5},
    )
    exp.seed = seed
    sim = Simulation(exp, policy)
    return sim, [r.telemetry_age_s for r in sim.run()]


def test_a_poll_grid_from_zero_gives_every_decision_the_same_age_on_a_quantised_trace(tmp_path):
    """The Mooncake trace is quantised to 3 s: polls on a grid from 0 make every decision's telemetry
    exactly one interval + delay old, which would measure the phase, not the staleness."""
    _, ages = _ages(tmp_path, "zero")
    # at t = 3 n the sample taken at 3 n - 0.5 is the latest published (the one at 3 n is due at 3 n + 0.25)
    assert ages == pytest.approx([0.5] * 7)


def test_a_random_poll_phase_per_run_is_fixed_by_the_seed_and_shared_by_the_policies(tmp_path):
    sim, ages = _ages(tmp_path, "run")
    (phase,) = sim._poll_phases
    assert 0 <= phase < 0.5 and len(sim._poll_groups) == 1
    # all decisions of the run share one age (arrivals on a 3 s grid), set by this run's phase
    want = 0.5 - phase if 0.5 - phase >= DELAY else 1.0 - phase
    assert ages == pytest.approx([want] * 7)
    again, ages2 = _ages(tmp_path, "run", policy="round_robin")
    assert again._poll_phases == [phase]  # the same polls for every policy of the run
    other = {_ages(tmp_path, "run", seed=s)[0]._poll_phases[0] for s in range(2, 8)}
    assert len(other) == 6 and phase not in other  # and another run (seed), other polls


def test_per_switch_phases_give_each_path_its_own_age(tmp_path):
    sim, ages = _ages(tmp_path, "switch")
    groups = sim._poll_groups
    assert len(groups) == len(sim.topo.switches)  # every switch reads its own ports
    ids = np.concatenate(groups)
    assert sorted(ids.tolist()) == list(range(sim.topo.n_links))  # each link read by exactly one switch
    for g in groups:  # a switch reads the links out of it, and those into it from a host
        owners = {lk.src if sim.topo.nodes[lk.src].is_switch else lk.dst for lk in (sim.topo.links[i] for i in g)}
        assert len(owners) == 1
    assert len(set(sim._poll_phases)) == len(groups)
    snap = sim._published()
    assert len(np.unique(snap.link_sampled_at)) > 1  # links sampled at different instants
    path = sim.routing.path(sim.topo.host_index["h0_0_0_2"], sim.topo.host_index["h0_0_0_3"])
    assert snap.path_sampled_at(path) == pytest.approx(np.min(snap.link_sampled_at[path]))
    assert all(0 <= a <= 0.5 + DELAY for a in ages)


def test_an_unknown_poll_phase_is_a_one_line_error(tmp_path):
    from netkv.config import ConfigError

    with pytest.raises(ConfigError, match=r"telemetry.poll_phase: unknown phase 'grid' \(known: run, switch, zero\)"):
        _exp(tmp_path, [0.0], telemetry={"poll_phase": "grid"})


def test_asking_what_fresh_telemetry_would_choose_changes_nothing_and_is_recorded():
    """compare_fresh: each decision also records the policy's choice on the flow model's rates at
    that instant; the run itself is the same as without it (the shadow leaves no trace, the random
    policy's stream included)."""
    from conftest import make_exp

    timing = ("decision_us", "prefill_choice_us", "fresh_decode", "fresh_tier")
    bg = [{"src": ["pod:0"], "dst": ["pod:1"], "on_s": 1.0, "off_s": 1.0}]
    for pol in ("netkv", "random", "cache_load_aware"):
        runs = {}
        for cf in (False, True):
            exp = make_exp(
                trace={"requests": 60, "rate_multiplier": 4.0},
                telemetry={"poll_interval_s": 2.0, "compare_fresh": cf},
                background=bg,
            )
            runs[cf] = [r.to_row() for r in Simulation(exp, pol).run()]
        strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
        assert strip(runs[True]) == strip(runs[False]), pol
        assert all(r["fresh_decode"] is None for r in runs[False])
        shadow = runs[True]
        assert all(r["fresh_decode"] is not None and r["fresh_tier"] in (0, 1, 2, 3) for r in shadow)
        if pol == "random":  # the same draws: the network plays no part
            assert all(r["fresh_decode"] == r["decode"] for r in shadow)


def test_fresh_agreement_in_the_summary_counts_decisions_that_staleness_changed():
    from netkv.results import summarize

    base = {"status": "failed", "fail_reason": "x", "telemetry_age_s": None}
    rows = [
        {**base, "decode": "a", "tier": 2, "fresh_decode": "a", "fresh_tier": 2},
        {**base, "decode": "a", "tier": 2, "fresh_decode": "b", "fresh_tier": 2},
        {**base, "decode": "a", "tier": 2, "fresh_decode": "c", "fresh_tier": 3},
        {**base, "decode": "a", "tier": 2, "fresh_decode": None, "fresh_tier": None},
    ]
    s = summarize(rows, 1.0, 1.0)
    assert s["fresh_agreement"] == {
        "decisions": 3,
        "same_decode": pytest.approx(1 / 3),
        "same_tier": pytest.approx(2 / 3),
    }


def test_the_fresh_choice_agrees_with_near_fresh_telemetry_and_departs_from_old_telemetry():
    from netkv.results import summarize

    from conftest import make_exp

    bg = [{"src": ["pod:0"], "dst": ["pod:1"], "on_s": 1.0, "off_s": 1.0}]
    agree = {}
    for poll in (0.001, 10.0):
        tele = {"poll_interval_s": poll, "compare_fresh": True}
        exp = make_exp(trace={"requests": 60, "rate_multiplier": 4.0}, telemetry=tele, background=bg)
        rows = [r.to_row() for r in Simulation(exp, "netkv").run()]
        agree[poll] = summarize(rows, 30.0, 0.2)["fresh_agreement"]["same_decode"]
    assert agree[0.001] == 1.0 and agree[10.0] < 1.0

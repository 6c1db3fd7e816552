"""The fidelity report: the simulator replays a run's choices; errors per transfer and tier, TTFT error,
rankings, targets."""

import json

import pytest

from netkv.cli import main
from netkv.compare import FIDELITY_TARGETS, fidelity
from netkv.results import RunDir
from netkv.scheduler.policies import registry
from netkv.simulator.replay import replay_run
from netkv.simulator.run import simulate_experiment

from conftest import make_exp

WALL = {"decision_us", "prefill_choice_us"}


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    """A simulated run of every policy on a small cluster, written like any run (experiment.json too)."""
    tmp = tmp_path_factory.mktemp("fid")
    exp = make_exp(trace={"requests": 40, "rate_multiplier": 6.0})
    exp.path = None
    run, _ = simulate_experiment(exp, out=tmp, progress=False, log=lambda *a: None)
    return run.root


def test_replaying_a_simulated_run_reproduces_it_request_by_request(sim_run, tmp_path):
    rep = replay_run(sim_run, tmp_path / "replay", log=lambda *a: None)
    src = RunDir(sim_run)
    for pol in src.read_summary()["policies"]:
        a = [{k: v for k, v in r.items() if k not in WALL} for r in src.read_requests(pol)]
        b = [{k: v for k, v in r.items() if k not in WALL} for r in rep.read_requests(pol)]
        assert a == b, pol


def test_replay_takes_the_recorded_choices_not_the_policy_s(sim_run, tmp_path):
    """Swap the decode of two requests in the source: the replay follows the record."""
    src = tmp_path / "src"
    import shutil

    shutil.copytree(sim_run, src)
    run = RunDir(src)
    rows = run.read_requests("netkv")
    rows[3]["decode"], rows[5]["decode"] = rows[5]["decode"], rows[3]["decode"]
    assert rows[3]["decode"] != rows[5]["decode"]
    run.write_requests("netkv", rows)
    rep = replay_run(src, tmp_path / "replay", log=lambda *a: None).read_requests("netkv")
    assert [r["decode"] for r in rep] == [r["decode"] for r in rows]


def test_a_run_against_itself_is_perfectly_faithful(sim_run):
    rep = fidelity(sim_run, sim_run)
    for pol, res in rep["policies"].items():
        assert res["same_choice"] == 1.0 and res["ttft_mean_rel"] == 0.0, pol
        if "transfer" in res:
            assert res["transfer"]["rel_p50"] == res["transfer"]["rel_p95"] == 0.0
            assert sum(t["n"] for t in res["transfer_by_tier"].values()) == res["transfer"]["n"]
        assert all(res["meets"].values())
    assert rep["same_ranking"] and rep["ranking"]["emulated"] == rep["ranking"]["model"]
    assert rep["targets"] == FIDELITY_TARGETS


def test_errors_are_measured_per_tier_and_over_same_choices_only(sim_run, tmp_path):
    """Cross-pod transfers 50% longer, one request moved elsewhere: the cross-pod tier shows +50%, the
    others 0, and the moved request leaves the transfer comparison."""
    import shutil

    emu = tmp_path / "emu"
    shutil.copytree(sim_run, emu)
    run = RunDir(emu)
    rows = run.read_requests("round_robin")
    moved = next(r for r in rows if r["tier"] != 3 and r["transfer_s"])
    moved["decode"] = "elsewhere"
    for r in rows:
        if r["tier"] == 3 and r["transfer_s"]:
            r["transfer_s"] *= 1.5
    run.write_requests("round_robin", rows)
    res = fidelity(sim_run, emu)["policies"]["round_robin"]
    assert res["transfer_by_tier"]["3"]["rel_p50"] == pytest.approx(0.5)
    assert res["transfer_by_tier"]["3"]["bias"] == pytest.approx(0.5)
    others = [v for k, v in res["transfer_by_tier"].items() if k != "3"]
    assert others and all(v["rel_p95"] == 0.0 for v in others)
    with_xfer = sum(1 for r in rows if r["transfer_s"])
    assert res["transfer"]["n"] == with_xfer - 1 and res["same_choice"] == pytest.approx(1 - 1 / len(rows))
    assert res["meets"]["transfer_rel_p95"] is False


def test_netkv_fidelity_writes_its_report_and_refuses_a_directory_that_is_not_a_run(sim_run, tmp_path, capsys):
    assert main(["fidelity", str(sim_run)]) == 0
    out = capsys.readouterr().out
    n = len(registry.names())
    assert "ranking by mean TTFT, emulated:" in out and f"met by {n} of {n} policies" in out
    doc = json.loads((sim_run / "fidelity" / "fidelity.json").read_text())
    assert set(doc["policies"]) == set(registry.names())
    assert (sim_run / "fidelity" / "transfers.png").stat().st_size > 10_000
    assert main(["fidelity", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"netkv: error: {tmp_path}: no summary.json (not a run directory)"


def test_the_report_carries_the_emulated_run_s_tcp_counters_and_queue_drops(sim_run, tmp_path):
    """An emulated run's meta has the hosts' TCP counters and the queues' drops per policy; the
    report shows them per policy."""
    import shutil

    from netkv.compare import format_fidelity

    emu = tmp_path / "emu"
    shutil.copytree(sim_run, emu)
    run = RunDir(emu)
    meta = run.read_meta()
    counters = {"Tcp.OutSegs": 900, "Tcp.RetransSegs": 12, "TcpExt.TCPTimeouts": 2}
    meta["tcp"] = {"round_robin": counters}
    meta["queue_drops"] = {"round_robin": {"agg->core": 9, "edge->agg": 0}}
    run.write_meta(meta)
    rep = fidelity(sim_run, emu)
    assert rep["tcp"] == {"round_robin": counters}
    assert rep["queue_drops"] == {"round_robin": {"agg->core": 9, "edge->agg": 0}}
    text = format_fidelity(rep)
    assert (
        "TCP on the hosts, round_robin (KV and background): 12 of 900 segments retransmitted, 2 retransmission "
        "timeouts; queues dropped 9 at agg->core" in text
    )
    assert fidelity(sim_run, sim_run)["tcp"] == {}


def test_frames_follow_the_agents_byte_scaling_and_the_mtu():
    from netkv.compare import TCP_IP_OVERHEAD, frames_of

    em = {"bandwidth_scale": 16000.0, "time_dilation": 1.0, "mtu": 9000}
    payload = 9000 - TCP_IP_OVERHEAD
    assert frames_of(payload * 16000, em) == 1
    assert frames_of(payload * 16000 + 16000, em) == 2
    assert frames_of(payload * 16000, {**em, "time_dilation": 2.0}) == 2  # dilation: more emulated bytes
    assert frames_of(payload * 16000, {**em, "mtu": 1500}) == 7
    assert frames_of(1.0, em) == 1


def test_the_report_groups_transfer_errors_by_their_size_in_emulated_frames(sim_run, tmp_path):
    """One-frame transfers 20% short, all others 10% long: the report's first group says -20%, every
    other group +10%, over every compared transfer; a simulated run (no emulation in its meta) has
    no such groups and the printed report no such line."""
    import shutil

    import numpy as np

    from netkv.compare import format_fidelity, frames_of

    emu = tmp_path / "emu"
    shutil.copytree(sim_run, emu)
    run = RunDir(emu)
    sent = [r["bytes_sent"] for p in ("round_robin", "netkv") for r in run.read_requests(p) if r["transfer_s"]]
    # a scale that makes the median transfer two frames: both one-frame and larger transfers exist
    em = {"bandwidth_scale": float(np.median(sent)) / (1.5 * (9000 - 52)), "time_dilation": 1.0, "mtu": 9000}
    meta = run.read_meta()
    meta["emulation"] = em
    run.write_meta(meta)
    for pol in run.read_summary()["policies"]:
        rows = run.read_requests(pol)
        for r in rows:
            if r["transfer_s"]:
                r["transfer_s"] *= 0.8 if frames_of(r["bytes_sent"], em) == 1 else 1.1
        run.write_requests(pol, rows)
    rep = fidelity(sim_run, emu)
    groups = {g["frames"]: g for g in rep["transfer_by_frames"]}
    assert groups["1"]["median_rel"] == pytest.approx(-0.2) and groups["1"]["median_diff_s"] < 0
    assert len(groups) >= 2 and all(g["median_rel"] == pytest.approx(0.1) for k, g in groups.items() if k != "1")
    assert sum(g["n"] for g in groups.values()) == sum(r["transfer"]["n"] for r in rep["policies"].values())
    assert "by size in emulated frames (all policies; median emulated - model): 1: " in format_fidelity(rep)
    plain = fidelity(sim_run, sim_run)
    assert plain["transfer_by_frames"] == [] and "emulated frames" not in format_fidelity(plain)
    meta["emulation"] = {"bandwidth_scale": 16000.0}  # an older run's meta, without dilation or MTU
    run.write_meta(meta)
    assert fidelity(sim_run, emu)["transfer_by_frames"] == []

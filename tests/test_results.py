"""Per-request rows, `summarize` on hand-made rows with known answers, the table, the run directory."""

import json

import numpy as np
import pytest

from netkv.results import REQUEST_COLUMNS, RequestRecord, RunDir, format_table, summarize, top10_mean


def row(i, status="completed", arrival=0.0, ttft=1.0, tbt=0.05, tier=3, done=10.0, out=100, sent=1e9, age=None):
    r = dict.fromkeys(REQUEST_COLUMNS)
    r.update(id=i, status=status, arrival_s=arrival, output_tokens=out, tier=tier, bytes_sent=sent, telemetry_age_s=age)
    if status == "completed":
        r.update(
            ttft_s=ttft,
            tbt_mean_s=tbt / 2,
            tbt_p99_s=tbt,
            tbt_top10_s=tbt,
            t_done=done,
            transfer_s=0.1 * (i + 1),
            queue_s=0.0,
            decode_wait_s=0.0,
            e2e_s=done - arrival,
            decision_us=5.0,
        )
    return r


def test_summarize_counts_slo_throughput_and_tiers():
    rows = [
        row(0, arrival=0.0, ttft=1.0, tbt=0.05, tier=0, done=4.0, age=0.2),
        row(1, arrival=1.0, ttft=3.0, tbt=0.05, tier=3, done=6.0, age=0.4),  # misses the TTFT SLO
        row(2, arrival=2.0, ttft=1.0, tbt=0.30, tier=3, done=9.0),  # misses the TBT SLO
        row(3, arrival=3.0, ttft=0.5, tbt=0.10, tier=2, done=8.0),
        row(4, status="failed", arrival=-1.0),  # counts against the SLO
    ]
    s = summarize(rows, slo_ttft_s=2.0, slo_tbt_s=0.2)
    assert (s["requests"], s["completed"], s["failed"]) == (5, 4, 1)
    assert s["slo_attainment"] == pytest.approx(2 / 5)
    # completed requests over the span from the first arrival (a failed one here) to the last completion
    assert s["throughput_rps"] == pytest.approx(4 / 10.0)
    assert s["output_tokens_per_s"] == pytest.approx(400 / 10.0)
    assert s["gbytes_sent"] == pytest.approx(4.0)
    assert s["tier_share"] == {"0": 0.25, "1": 0.0, "2": 0.25, "3": 0.5}
    t = s["ttft_s"]
    assert t["mean"] == pytest.approx(5.5 / 4) and t["p50"] == pytest.approx(1.0)
    assert t["p90"] == pytest.approx(np.percentile([1, 3, 1, 0.5], 90)) and t["p99"] == pytest.approx(
        np.percentile([1, 3, 1, 0.5], 99)
    )
    assert s["transfer_s"]["mean"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.4) / 4)
    assert s["tbt_top10_s"]["mean"] == pytest.approx(0.125)
    assert s["tbt_mean_s"]["mean"] == pytest.approx(0.0625)
    assert s["e2e_s"]["mean"] == pytest.approx((4 + 5 + 7 + 5) / 4)
    assert s["slo"] == {"ttft_s": 2.0, "tbt_s": 0.2}
    ages = s["telemetry_age_s"]  # the decisions that had telemetry: ages 0.2 and 0.4
    assert ages["mean"] == pytest.approx(0.3) and ages["max"] == 0.4
    assert (ages["p10"], ages["p50"], ages["p90"]) == pytest.approx((0.22, 0.3, 0.38))
    # an SLO met on the edge counts
    assert summarize(rows, slo_ttft_s=3.0, slo_tbt_s=0.3)["slo_attainment"] == pytest.approx(4 / 5)


def test_summarize_without_completions_and_without_telemetry():
    s = summarize([row(0, status="failed"), {**row(1, status="failed"), "fail_reason": "timeout"}], 1.0, 1.0)
    assert s == {"requests": 2, "completed": 0, "failed": 2, "fail_reasons": {"unknown": 1, "timeout": 1}}
    s = summarize([row(0)], 1.0, 1.0)
    assert "telemetry_age_s" not in s and s["throughput_rps"] == pytest.approx(0.1)
    instant = row(0, arrival=5.0, done=5.0)
    assert summarize([instant], 1.0, 1.0)["throughput_rps"] is None


def test_top10_mean_is_the_mean_of_the_largest_tenth():
    assert top10_mean(np.arange(1.0, 21.0)) == pytest.approx(19.5)  # the largest 2 of 20
    assert top10_mean(np.array([3.0, 1.0])) == 3.0  # at least one gap
    assert top10_mean(np.arange(1.0, 12.0)) == pytest.approx(10.5)  # ceil(1.1) = 2


def test_a_record_becomes_a_row_of_durations():
    r = RequestRecord(7, 1.0, 1000, 4, policy="netkv")
    r.t_prefill_start, r.t_prefill_end, r.t_transfer_end, r.t_admit = 1.5, 2.0, 2.25, 2.5
    r.t_first_token, r.t_done = 2.75, 3.5
    r.gaps = np.array([0.25, 0.25, 0.25])
    r.status, r.est_transfer_s = "completed", float("inf")
    x = r.to_row()
    assert list(x) == list(REQUEST_COLUMNS)
    assert (x["queue_s"], x["prefill_s"], x["transfer_s"], x["decode_wait_s"]) == (0.5, 0.5, 0.25, 0.25)
    assert (x["ttft_s"], x["e2e_s"], x["tbt_mean_s"], x["tbt_top10_s"]) == (1.75, 2.5, 0.25, 0.25)
    assert x["est_transfer_s"] is None  # non-finite numbers are written as null
    pending = RequestRecord(8, 1.0, 10, 1).to_row()
    assert pending["status"] == "pending" and pending["ttft_s"] is None and pending["tbt_mean_s"] is None
    one_token = RequestRecord(9, 0.0, 10, 1)
    one_token.t_first_token = one_token.t_done = 1.0
    assert one_token.to_row()["tbt_mean_s"] == 0.0


def test_the_table_shows_each_policy_with_scaled_columns():
    s = summarize([row(0, ttft=1.25, tbt=0.05), row(1, ttft=0.75, tbt=0.05, tier=0)], 2.0, 0.2)
    lines = format_table({"netkv": s, "empty": {"requests": 3, "completed": 0}}).splitlines()
    assert lines[0].split()[:4] == ["policy", "done", "TTFT", "mean"]
    cells = lines[2].split()
    assert cells[:3] == ["netkv", "2/2", "1.000"]
    assert "50.0" in cells and "100.0" in cells  # TBT p99 in ms, SLO in %
    assert lines[3].split()[:3] == ["empty", "0/3", "-"]
    assert len({len(x) for x in lines}) == 1  # fixed width


def test_run_directories_are_unique_and_written_whole(tmp_path):
    exp = tmp_path / "e.toml"
    exp.write_text("name = 'e'\n")
    a = RunDir.create(tmp_path / "res", "e-sim", "20260101-000000", exp)
    b = RunDir.create(tmp_path / "res", "e-sim", "20260101-000000", None)
    assert a.root.name == "e-sim-20260101-000000" and b.root.name == "e-sim-20260101-000000-2"
    assert (a.root / "experiment.toml").read_text() == "name = 'e'\n"
    rows = [row(0), row(1)]
    a.write_requests("netkv", rows)
    a.write_policy_summary("netkv", {"requests": 2})
    a.write_summary({"netkv": {"requests": 2, "completed": 2}}, partial=True)
    a.write_meta({"when": tmp_path})
    assert a.read_requests("netkv") == json.loads(json.dumps(rows))
    assert a.read_policy_summary("netkv") == {"requests": 2}
    assert a.read_summary() == {"partial": True, "policies": {"netkv": {"requests": 2, "completed": 2}}}
    assert "netkv" in (a.root / "summary.txt").read_text()
    assert json.loads((a.root / "meta.json").read_text()) == {"when": str(tmp_path)}
    assert not list(a.root.rglob("*.tmp"))


def test_a_simulation_stopped_early_is_marked_partial(tmp_path, monkeypatch, small_exp):
    from netkv.simulator import run as simrun

    real = simrun.Simulation.run
    calls = []

    def second_one_interrupted(self):
        calls.append(self.policy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(simrun.Simulation, "run", second_one_interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        simrun.simulate_experiment(small_exp, ["round_robin", "netkv"], tmp_path, progress=False, log=lambda *a: None)
    (run,) = tmp_path.iterdir()
    assert str(e.value) == str(run)  # the interrupt says where the partial results are
    doc = json.loads((run / "summary.json").read_text())
    assert doc["partial"] is True and list(doc["policies"]) == ["round_robin"]
    assert json.loads((run / "meta.json").read_text())["partial"] is True
    assert not (run / "netkv" / "requests.jsonl").exists()
    monkeypatch.setattr(simrun.Simulation, "run", real)
    rd, sums = simrun.simulate_experiment(
        small_exp, ["round_robin"], tmp_path / "full", progress=False, log=lambda *a: None
    )
    assert rd.read_summary()["partial"] is False and json.loads((rd.root / "meta.json").read_text())["partial"] is False
    assert sums["round_robin"]["completed"] == 30


def test_summary_statistics_of_every_metric():
    vals = [0.1, 0.2, 0.4, 0.8, 1.6]
    rows = []
    for i, v in enumerate(vals):
        r = row(i, arrival=0.0, done=0.5)  # a span under one second still has a throughput
        r.update(queue_s=v, decode_wait_s=2 * v, decision_us=10 * v, tbt_p99_s=v, ttft_s=v)
        rows.append(r)
    s = summarize(rows, 10.0, 10.0)
    for key, scale in (("queue_s", 1), ("decode_wait_s", 2), ("decision_us", 10), ("tbt_p99_s", 1), ("ttft_s", 1)):
        a = np.array(vals) * scale
        assert s[key] == {
            "mean": pytest.approx(a.mean()),
            "p50": pytest.approx(np.percentile(a, 50)),
            "p90": pytest.approx(np.percentile(a, 90)),
            "p99": pytest.approx(np.percentile(a, 99)),
        }, key
    assert s["throughput_rps"] == pytest.approx(10.0) and s["output_tokens_per_s"] == pytest.approx(1000.0)
    assert s["gbytes_sent"] == 5.0
    one = summarize([row(0, ttft=0.7)], 1.0, 1.0)
    assert one["ttft_s"]["mean"] == 0.7 and one["ttft_s"]["p99"] == 0.7
    untiered = row(1)
    untiered["tier"] = None
    assert summarize([untiered], 1.0, 1.0)["tier_share"] == {}


def test_rows_of_one_token_requests_and_numpy_values():
    r = RequestRecord(1, 0.0, 10, 1)
    r.t_first_token = r.t_done = 1.0
    r.gaps = np.zeros(0)  # no gap between tokens
    r.bytes_sent = np.float64(2.5)
    r.blocks_sent = np.int64(3)
    x = r.to_row()
    assert (x["tbt_mean_s"], x["tbt_p99_s"], x["tbt_top10_s"]) == (0.0, 0.0, 0.0)
    assert x["bytes_sent"] == 2.5 and type(x["bytes_sent"]) is float and type(x["blocks_sent"]) is int
    pending = RequestRecord(2, 0.0, 10, 1).to_row()
    assert (pending["tbt_mean_s"], pending["tbt_p99_s"], pending["tbt_top10_s"]) == (None, None, None)
    g = RequestRecord(3, 0.0, 10, 101)
    g.t_done = 2.0
    g.gaps = np.linspace(0.01, 1.0, 100)
    assert g.to_row()["tbt_p99_s"] == pytest.approx(np.percentile(g.gaps, 99))


def test_a_decision_is_copied_into_the_record():
    from types import SimpleNamespace

    from netkv.topology import FatTree

    topo = FatTree(2, 2)
    d = SimpleNamespace(
        prefill_host=0,
        decode_host=3,
        tier=3,
        decision_us=4.5,
        prefill_choice_us=1.5,
        est_transfer_s=0.25,
        telemetry_age_s=0.1,
        decode_hit_blocks=2,
        blocks_to_send=5,
        bytes_to_send=1e6,
        fresh_decode_host=1,
        fresh_tier=1,
    )
    r = RequestRecord(0, 0.0, 100, 5)
    r.record_decision(d, topo, "counters")
    x = r.to_row()
    assert (x["prefill"], x["decode"], x["tier"]) == (topo.hosts[0].name, topo.hosts[3].name, 3)
    assert (x["decision_us"], x["prefill_choice_us"], x["est_transfer_s"], x["telemetry_age_s"]) == (
        4.5,
        1.5,
        0.25,
        0.1,
    )
    assert (x["oracle"], x["decode_hit_blocks"], x["blocks_sent"], x["bytes_sent"]) == ("counters", 2, 5, 1e6)
    assert (x["fresh_decode"], x["fresh_tier"]) == (topo.hosts[1].name, 1)


def test_table_alignment_and_missing_counts():
    s = summarize([row(0)], 2.0, 0.2)
    lines = format_table({"cache_load_aware": s, "netkv": {"requests": 4}, "x": {}}).splitlines()
    w = len("cache_load_aware")
    assert lines[3].startswith("netkv" + " " * (w - 5) + "  ")  # names left-aligned
    assert lines[3].split()[1] == "0/4" and lines[4].split()[1] == "0/0"
    done_col = lines[0].index("done") + len("done")
    assert lines[2][:done_col].endswith("1/1")  # numbers right-aligned under their header
    assert format_table({}).splitlines()[0].startswith("policy  done  TTFT mean")


def test_run_files_are_indented_json_and_the_text_table(tmp_path):
    a = RunDir.create(tmp_path, "e", "s", None)
    sums = {"netkv": summarize([row(0)], 2.0, 0.2)}
    a.write_summary(sums, partial=False)
    a.write_policy_summary("netkv", {"requests": 1})
    a.write_meta({"mode": "simulate"})
    assert (a.root / "summary.json").read_text().startswith('{\n "partial": false,\n "policies": {\n  "netkv"')
    assert (a.root / "netkv" / "summary.json").read_text() == '{\n "requests": 1\n}'
    assert (a.root / "meta.json").read_text() == '{\n "mode": "simulate"\n}'
    assert (a.root / "summary.txt").read_text() == format_table(sums) + "\n"  # no faults: no fault table


def test_the_fault_table_pairs_each_failure_with_its_recovery_and_says_how_requests_ended():
    from netkv.results import format_faults, format_summary

    emu = {
        "requests": 4,
        "completed": 3,
        "failed": 1,
        "fail_reasons": {"decode agent h1 died": 1},
        "faults": [
            {"t": 1.0, "fault": "a0_0-c0_0", "link": "a0_0-c0_0", "up": False, "late_s": 0.002},
            {"t": 2.5, "fault": "scheduler", "up": False, "late_s": 0.0},
            {"t": 2.0, "fault": "a0_0-c0_0", "link": "a0_0-c0_0", "up": True, "late_s": 0.004},
            {"t": 3.5, "fault": "scheduler", "up": True, "late_s": 0.001, "recovery_wall_s": 0.35},
            {"t": 5.0, "fault": "agent h1", "up": False, "late_s": 0.0},
        ],
    }
    sim = {"requests": 4, "completed": 4, "failed": 0, "faults": [{"t": 2.5, "fault": "scheduler", "modelled": False}]}
    lines = format_faults({"emu": emu, "sim": sim, "quiet": {"requests": 4, "completed": 4, "failed": 0}}).splitlines()
    assert lines[0].split() == ["policy", "fault", "down", "at", "back", "at", "late", "ms", "back", "after", "s"]
    assert [x.split() for x in lines[1:]] == [
        ["emu", "a0_0-c0_0", "1.00", "2.00", "4", "-"],  # the later of its two changes' lateness
        ["emu", "scheduler", "2.50", "3.50", "1", "0.35"],
        ["emu", "agent", "h1", "5.00", "-", "0", "-"],  # never back within the policy
        ["emu", "requests:", "3", "completed,", "1", "failed", "(1", "decode", "agent", "h1", "died)"],
        ["sim", "scheduler", "2.50", "-", "-", "not", "modelled"],
        ["sim", "requests:", "4", "completed,", "0", "failed"],
    ]
    assert format_faults({"quiet": {"requests": 4}}) == ""
    assert "faults:" in format_summary({"emu": emu}) and "faults:" not in format_summary({"quiet": {}})


def test_the_fast_percentile_is_numpys_to_the_bit():
    from netkv.results import percentile

    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 7, 100, 343, 2000):
        a = rng.random(n) * 0.05
        for q in (0, 50, 90, 99, 100):
            assert percentile(a, q) == float(np.percentile(a, q))

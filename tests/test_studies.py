"""The study scripts run end to end at a tiny size and write what their docs pages show."""

import importlib.util
import json

import pytest

from netkv.results import RunDir
from netkv.scheduler.journal import Journal, journal_path

from conftest import REPO


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_staleness_study_writes_its_numbers_figure_and_table(tmp_path, capsys):
    st = _script("staleness")
    assert st.main(["--seeds", "1", "2", "--polls", "0.1", "5", "--delays", "0", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "staleness.json").read_text())
    assert set(doc["sim"]) == {"0.1/0/1", "0.1/0/2", "5/0/1", "5/0/2"}
    pt = doc["sim"]["5/0/1"]
    assert set(pt) == {"round_robin", "cache_load_aware", "netkv", st.NOCOMMIT}
    # fresh telemetry every 0.1 s: netkv keeps its choices; every 5 s some change
    assert doc["sim"]["0.1/0/1"]["netkv"]["same_decode"] > pt["netkv"]["same_decode"]
    assert pt["netkv"]["age_p50_s"] > doc["sim"]["0.1/0/1"]["netkv"]["age_p50_s"]
    assert (tmp_path / "staleness.png").stat().st_size > 10_000
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["poll", "s", "delay"] and len(out) == 1 + 2 + 1


SCENARIOS = sorted((REPO / "experiments" / "scenarios").glob("*.toml"))


def test_the_congestion_scenarios_are_all_there():
    assert [p.stem for p in SCENARIOS] == ["hot-pod", "incast", "link-failure", "moving-hotspot", "on-off"]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_each_congestion_scenario_simulates_and_congests_what_it_says(path):
    from netkv.scheduler.cluster import load
    from netkv.simulator.engine import Simulation

    cluster = load(path, ["trace.requests=30"])
    sim = Simulation(cluster, "netkv")
    recs = sim.run()
    assert all(r.status == "completed" for r in recs)
    rep = sim.background_report()
    rates = [x["delivered_gbps_on"] for x in rep]
    link = cluster.exp.topology.edge_link_gbps
    if path.stem == "incast":  # 16 senders into 8 GPUs under one edge: 2 per GPU link at most half each
        assert len(rep) == 16 and max(rates) <= link / 2 + 1e-6
    elif path.stem == "hot-pod":  # 3 edges x 8 GPUs into pod 2's 16: its downlinks are shared
        assert len(rep) == 24 and min(rates) < link
    elif path.stem == "moving-hotspot":  # one group of elephants on at a time, 5 s each, in turn
        starts = [b.start_s for b in cluster.exp.background]
        assert starts == [0.0, 5.0, 10.0, 15.0] and all(b.on_s == 5.0 for b in cluster.exp.background)
    elif path.stem == "link-failure":
        assert [(e["t"], e["up"]) for e in sim.fault_log] == [(5.0, False), (15.0, True)]
    else:  # on-off: each elephant alone on its path while on
        assert all(x["on_s"] > 0 for x in rep)


def test_the_oracle_accuracy_study_judges_every_oracle_on_the_same_transfers(tmp_path, capsys):
    oa = _script("oracle_accuracy")
    assert oa.main(["--requests", "40", "--seeds", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "oracles.json").read_text())
    summ = doc["summary"]
    assert set(summ) == {"quiet", "hot-pod", "incast", "link-failure", "moving-hotspot", "on-off"}
    for sc in summ.values():  # round_robin's transfers do not depend on the oracle: same count for each
        assert len({c["all"]["n"] for c in sc.values()}) == 1 and set(sc) == set(oa.ORACLES)
    # a hot pod's elephants take half the links: static misses them, the counters see them
    hot = summ["hot-pod"]
    assert hot["static"]["cross-pod"]["bias"] < -0.2 and abs(hot["counters"]["cross-pod"]["p50_abs"]) < 0.05
    # the probe oracle prices the pairs its trains have measured by what they saw, the rest statically
    assert hot["probe"]["cross-pod"]["p50_abs"] < hot["static"]["cross-pod"]["p50_abs"]
    assert doc["cost"]["probe"]["polls"] is False and doc["cost"]["probe"]["trains_per_s"] == 20.0
    assert set(doc["cost"]) == set(oa.ORACLES) and (tmp_path / "oracles.png").exists()
    # every oracle also steers netkv once per scenario and seed
    assert set(doc["netkv_ttft"]) == set(summ) and all(set(v) == set(oa.ORACLES) for v in doc["netkv_ttft"].values())
    out = capsys.readouterr().out
    assert "cost: static" in out and "netkv TTFT s" in out


def test_the_fidelity_sweep_resumes_from_stored_reports_and_marks_flagged_runs(tmp_path, capsys):
    fs = _script("fidelity_sweep")
    # one model run and one emulated run with three transfers (emulated 1.0x, 1.5x and 3x the model),
    # which ran while the machine was at 30%, 60% and 99% (its guard samples; time dilation 4)
    rows = [
        {"id": i, "status": "completed", "prefill": 0, "decode": 5, "tier": 3, "transfer_s": 0.02} for i in range(3)
    ]
    (tmp_path / "model").mkdir()
    RunDir(tmp_path / "model").write_requests("netkv", rows)
    emu = tmp_path / "emu"
    emu.mkdir()
    RunDir(emu).write_requests(
        "netkv",
        [
            {**r, "transfer_s": 0.02 * k, "t_prefill_end": 1.0 + 2 * i, "t_transfer_end": 1.0 + 2 * i + 0.02 * k}
            for i, (r, k) in enumerate(zip(rows, (1.0, 1.5, 3.0)))
        ],
    )
    j = Journal(journal_path(emu, "netkv"))
    j.write({"k": "start", "t0": 1000.0})
    j.close()
    (emu / "meta.json").write_text(json.dumps({"emulation": {"time_dilation": 4.0}, "fidelity": {"interval_s": 0.5}}))
    (emu / "summary.json").write_text(json.dumps({"policies": {"netkv": {}}}))
    samples = [(1004.5, 30.0), (1006.0, 99.0), (1012.5, 60.0), (1020.5, 99.0)]  # wall s, machine %
    (emu / "logs" / "guard.csv").write_text(
        "wall_s,ovs_total_pct,ovs_busiest_thread_pct,machine_pct\n" + "".join(f"{t},50,10,{m}\n" for t, m in samples)
    )
    rep = {
        "model": str(tmp_path / "model"),
        "emulated": str(tmp_path / "emu"),
        "policies": {
            "netkv": {"transfer": {"n": 40, "rel_p50": 0.04, "rel_p95": 0.2, "bias": 0.03}, "ttft_mean_rel": 0.008}
        },
        "same_ranking": True,
        "guard": {"flagged": True},
    }
    for name, (rate, n, _, _) in fs.CONDITIONS.items():  # every condition already done: nothing is emulated
        d = tmp_path / name.replace(" ", "").replace(",", "-") / "run" / "fidelity"
        d.mkdir(parents=True)
        (d / "fidelity.json").write_text(json.dumps(rep))
        sets = [f"trace.rate_multiplier={rate}", f"trace.requests={n}", "trace.max_output_tokens=256"]
        (d.parent / "meta.json").write_text(json.dumps({"overrides": [*sets, "emulation.time_dilation=4.0"]}))
    assert fs.main(["--out", str(tmp_path), "--docs", str(tmp_path / "docs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:9] == ["load", "x2", "netkv", "40", "4.0", "20.0", "+3.0", "0.8", "yes"]
    assert all("(guard flagged: excluded)" in x for x in out[1 : 1 + len(fs.DEFAULT)])
    # the error by CPU pools the transfers of every condition run (each points at the same emulated run)
    cpu = {tuple(c["machine_pct"]): c for c in json.loads((tmp_path / "by-cpu.json").read_text())}
    n = len(fs.DEFAULT)
    assert cpu[(0.0, 50.0)]["n"] == n and cpu[(0.0, 50.0)]["rel_p50"] == 0.0
    assert cpu[(50.0, 80.0)]["n"] == n and abs(cpu[(50.0, 80.0)]["bias"] - 0.5) < 1e-9
    assert cpu[(80.0, 95.0)]["n"] == 0
    assert cpu[(95.0, 100.0)]["n"] == n and cpu[(95.0, 100.0)]["over_2x"] == n
    assert list(json.loads((tmp_path / "fidelity-sweep.json").read_text())) == fs.DEFAULT
    assert (tmp_path / "docs" / "fidelity-sweep.png").stat().st_size > 10_000
    # a stored run made with other settings, or from another experiment file, is not taken for this condition's
    with pytest.raises(SystemExit, match="was run with"):
        fs.main(["--out", str(tmp_path), "--max-output", "512"])
    (tmp_path / "loadx2" / "run" / "experiment.toml").write_text("# another file\n")
    with pytest.raises(SystemExit, match="was run with another demo.toml"):
        fs.main(["--out", str(tmp_path)])


def test_the_fidelity_sweep_s_loads_pile_requests_up_and_its_other_conditions_vary_one_thing():
    fs = _script("fidelity_sweep")
    loads = {n: c for n, c in fs.CONDITIONS.items() if not c[2] and not c[3]}
    assert len(loads) >= 3  # three loads, each with the background on and no failure
    rates = sorted(c[0] for c in loads.values())
    assert rates[-1] >= 8 * rates[0]
    # a heavier load replays at least as many requests (so that they pile up, not just come sooner)
    by_rate = sorted(loads.values())
    assert all(a[1] <= b[1] for a, b in zip(by_rate, by_rate[1:]))
    assert any(c[2] for c in fs.CONDITIONS.values()) and any(c[3] for c in fs.CONDITIONS.values())


def test_the_reproduction_sweep_covers_each_axis_once_and_pairs_its_gains():
    rep = _script("reproduction")
    pts = rep.points(3, quick=False)
    keys = [p["key"] for p in pts]
    assert len(keys) == len(set(keys))  # the default point is shared by the three axes, run once
    n_points = sum(len(v) for v in rep.AXES.values()) - (len(rep.AXES) - 1)
    assert len(pts) == n_points * 3 * len(rep.POLICIES)
    assert {(p["rate"], p["scale"], p["os"]) for p in pts if p["rate"] != 4.0} == {
        (r, 1.0, 2.0) for r in rep.AXES["rate"] if r != 4.0
    }
    # synthetic runs: netkv 10% faster than round_robin in every replicate, 2 ms more TBT than the best baseline
    runs = []
    for p in pts:
        base = {"ttft_mean_s": 1.0, "tbt_mean_ms": 50.0 + p["rep"]}
        if p["policy"] == "netkv":
            base = {"ttft_mean_s": 0.9, "tbt_mean_ms": 52.0 + p["rep"]}
        runs.append(
            {
                **{k: p[k] for k in ("rate", "scale", "os", "rep", "policy")},
                **base,
                "ttft_p99_s": 2.0,
                "slo_rel": 0.5,
                "slo_abs": 1.0,
                "tbt_p99_ms": 100.0,
                "decision_us_p50": 10.0,
                "xfer_mean_s": 0.01,
                "failed": 0,
                "buckets": {b: {"n": 1, "ttft_mean_s": base["ttft_mean_s"]} for b in rep.BUCKET_NAMES},
            }
        )
    agg = rep.aggregate(runs, 3)
    row = next(r for r in agg["rate"] if r["value"] == 4.0)
    assert row["replicates"] == 3
    assert row["gain"]["netkv"]["round_robin"] == pytest.approx((0.1, 0.0))
    assert row["tbt_overhead_ms"]["netkv"]["tbt_mean_ms"] == pytest.approx((2.0, 0.0))
    assert row["buckets"]["netkv vs round_robin"]["<4k"] == pytest.approx((0.1, 0.0))
    assert rep.ci([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.303 / 3**0.5))
    # a replicate missing a policy is left out of that point
    agg2 = rep.aggregate([r for r in runs if not (r["rep"] == 2 and r["policy"] == "random")], 3)
    assert next(r for r in agg2["rate"] if r["value"] == 4.0)["replicates"] == 2


def test_a_reproduction_run_keeps_its_metrics_where_a_resumed_sweep_finds_them(tmp_path):
    rep = _script("reproduction")
    p = next(p for p in rep.points(1, quick=True) if p["policy"] == "round_robin" and p["rate"] == 2.0)
    res = rep.run_one(p)
    rep.keep(res, tmp_path)
    stored = json.loads((tmp_path / "runs" / f"{p['key']}.json").read_text())
    assert stored == json.loads(json.dumps(res))
    assert stored["requests"] > 2000 and stored["failed"] == 0 and 0 < stored["slo_rel"] < 1
    assert sum(b["n"] for b in stored["buckets"].values()) == stored["requests"]


def test_the_reproduction_sweep_gives_the_same_runs_on_a_local_dask_cluster():
    from netkv.sweep import run_points

    rep = _script("reproduction")
    pts = [p for p in rep.points(1, quick=True) if p["rate"] == 2.0 and p["policy"] in ("random", "netkv")]
    here = {r["policy"]: r for r in run_points(rep.run_one, pts, 1)}
    there = {r["policy"]: r for r in run_points(rep.run_one, pts, 2, dask="local")}
    timing = ("wall_s", "decision_us_p50")  # wall-clock measurements, not results
    for pol in ("random", "netkv"):
        a = {k: v for k, v in here[pol].items() if k not in timing}
        b = {k: v for k, v in there[pol].items() if k not in timing}
        assert a == b


def test_the_staleness_study_groups_emulated_seeds_by_poll_and_delay(tmp_path, monkeypatch):
    st = _script("staleness")
    calls = []

    def fake(path, poll, delay, seed, out):
        calls.append((poll, delay, seed))
        nk = 0.9 - 0.1 * seed - 0.2 * delay
        return {"netkv": {**PT, "ttft_mean_s": nk}, "cache_load_aware": {**PT, "ttft_mean_s": 1.0}}

    PT = {"slo": 1.0, "tbt_mean_ms": 50.0, "completed": 10, "age_p50_s": 0.2, "age_p90_s": 0.3}
    PT.update(same_decode=None, same_tier=None)
    monkeypatch.setattr(st, "_emu_point", fake)
    args = ["--seeds", "1", "--polls", "0.5", "--delays", "0", "--out", str(tmp_path)]
    emu = ["--emulate", "0.5", "2", "--emulate-seeds", "1", "2", "--emulate-delays", "0", "0.5"]
    assert st.main([*args, *emu]) == 0
    assert calls == [(p, d, s) for d in (0.0, 0.5) for p in (0.5, 2.0) for s in (1, 2)]
    doc = json.loads((tmp_path / "staleness.json").read_text())
    assert set(doc["emu"]) == {f"{p}/{d}/{s}" for p in ("0.5", "2") for d in ("0", "0.5") for s in (1, 2)}
    lines = st.table(doc)
    assert any(x.startswith("emulated, poll 0.5 s, delay 0 s, 2 seed(s): gain  25.0 ( 20.0.. 30.0)") for x in lines)
    assert any(x.startswith("emulated, poll 2 s, delay 0.5 s, 2 seed(s): gain  35.0 ( 30.0.. 40.0)") for x in lines)


def test_an_emulated_staleness_point_is_reused_once_finished(tmp_path, monkeypatch):
    st = _script("staleness")
    where = tmp_path / "emu-poll-0.5-delay-1-seed-3"
    where.mkdir()
    (where / "point.json").write_text(json.dumps({"netkv": {"ttft_mean_s": 0.5}}))
    import netkv.emulation.run as er

    def refuse(*a, **k):
        raise AssertionError("a finished point must not be emulated again")

    monkeypatch.setattr(er, "emulate_experiment", refuse)
    assert st._emu_point(REPO / "experiments/staleness.toml", 0.5, 1.0, 3, tmp_path) == {"netkv": {"ttft_mean_s": 0.5}}


def test_the_oracle_study_groups_emulated_decisions_by_their_oracle_and_costs_the_prober(tmp_path):
    oa = _script("oracle_accuracy")
    run = tmp_path / "run"
    (run / "netkv").mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"wall_s": {"netkv": 10.0}}))
    (run / "summary.json").write_text(json.dumps({"partial": False, "policies": {"netkv": {}}}))

    def row(oracle, est, actual, tier=3):
        return {"status": "completed", "bytes_sent": 1e6, "transfer_s": actual, "est_transfer_s": est,
                "tier": tier, "oracle": oracle}  # fmt: skip

    rows = [row("probe", 1.1, 1.0), row("probe", 0.5, 1.0), row("static-fallback", 2.0, 1.0, tier=1)]
    (run / "netkv" / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trains = [{"t": 1.0, "src": "a", "dst": "b", "rate_Bps": 1e9}] * 3
    totals = {"totals": {"trains": 200, "bytes_sent": 2_500_000, "cpu_s": 0.5}}
    (run / "netkv" / "probes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [*trains, totals]))
    emu = oa.emulated([run])
    assert set(emu) == {"probe", "static-fallback", "probe_cost"}
    assert emu["probe"]["cross-pod"]["n"] == 2 and emu["probe"]["all"]["p95_abs"] == pytest.approx(0.5, rel=0.1)
    assert emu["static-fallback"]["same edge"]["n"] == 1
    assert emu["probe_cost"]["emulated_mbps"] == pytest.approx(2.0) and emu["probe_cost"]["cpu_share"] == 0.05
    lines = oa.table({}, {}, emu)
    assert any("probe (scapy trains)" in x and "cross-pod" in x for x in lines)
    assert any(x.startswith("cost: probe (emulated): 200 trains, 2.00 Mbit/s") for x in lines)

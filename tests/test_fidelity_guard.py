"""The fidelity guard's verdict: the whole run, and the samples taken while KV moved."""

import csv
import json

from netkv.emulation.fidelity import FidelityGuard
from netkv.emulation.run import guard_verdict, transfer_windows
from netkv.results import RunDir
from netkv.scheduler.journal import Journal, journal_path


def _guard(machine: dict[int, float], n: int = 100) -> FidelityGuard:
    """n samples 0.5 s apart ending at t = 1000.5 .. ; `machine`: sample index -> machine % (else 20)."""
    g = FidelityGuard()
    g.samples = [(1000.0 + 0.5 * (i + 1), 50.0, 10.0, machine.get(i, 20.0)) for i in range(n)]
    return g


def test_a_saturated_burst_of_transfers_is_flagged_though_the_whole_run_is_not():
    # 8 of 100 samples saturated (under the 10% the whole run may have), all of them while KV moved
    g = _guard({i: 99.0 for i in range(20, 28)})
    assert not g.report()["flagged"]
    g.add_windows([(1009.9, 1012.0), (1011.0, 1013.9)])  # overlapping spans: merged
    rep = g.report()
    assert rep["saturated_share"] == 0.08
    # samples 19..27 measured (t - 0.5, t] overlapping [1009.9, 1013.9]: 9, of which 8 saturated
    assert rep["during_transfers"]["samples"] == 9
    assert abs(rep["during_transfers"]["saturated_share"] - 8 / 9) < 1e-12
    assert rep["flagged"] and "while KV moved" in rep["note"]


def test_saturation_outside_the_transfers_does_not_count_against_them():
    g = _guard({i: 99.0 for i in range(70, 78)})
    g.add_windows([(1010.1, 1013.9), (1030.0, 1030.2)])
    rep = g.report()
    assert rep["during_transfers"]["samples"] == 9  # samples 20..27 for the first span, 60 for the second
    assert rep["during_transfers"]["saturated_share"] == 0.0
    assert not rep["flagged"] and rep["note"] == "ok"


def test_a_whole_run_near_saturation_is_still_flagged():
    g = _guard({i: 95.0 for i in range(50)})
    assert g.report()["flagged"]
    assert "50% of samples" in g.report()["note"]


def test_the_samples_are_written_for_later_analysis(tmp_path):
    g = _guard({3: 97.0}, n=5)
    g.write_samples(tmp_path / "guard.csv")
    rows = list(csv.reader(open(tmp_path / "guard.csv")))
    assert rows[0] == ["wall_s", "ovs_total_pct", "ovs_busiest_thread_pct", "machine_pct"]
    assert len(rows) == 6 and float(rows[4][3]) == 97.0 and float(rows[1][0]) == 1000.5


def test_transfer_windows_are_wall_clock_spans_from_the_records_and_the_journal(tmp_path):
    j = Journal(journal_path(tmp_path, "netkv"))
    j.write({"k": "start", "t0": 5000.0})
    j.close()
    rows = [
        {"id": 0, "t_prefill_end": 1.0, "t_transfer_end": 1.25},
        {"id": 1, "t_prefill_end": 2.0, "t_transfer_end": None},  # failed before its KV arrived
    ]
    RunDir(tmp_path).write_requests("netkv", rows)
    assert transfer_windows(tmp_path, "netkv", 4.0) == {0: (5004.0, 5005.0)}
    assert json.loads((tmp_path / "netkv" / "requests.jsonl").read_text().splitlines()[0])["id"] == 0


def test_a_finished_run_is_judged_again_from_its_samples(tmp_path):
    """A run its guard passed at the time (one sample in 50 at 85%) is flagged under the rule for
    transfers when that sample is the one taken while its KV moved."""
    j = Journal(journal_path(tmp_path, "netkv"))
    j.write({"k": "start", "t0": 1000.0})
    j.close()
    RunDir(tmp_path).write_requests("netkv", [{"id": 0, "t_prefill_end": 1.0, "t_transfer_end": 1.05}])
    (tmp_path / "summary.json").write_text(json.dumps({"policies": {"netkv": {}}}))
    meta = {"emulation": {"time_dilation": 4.0}, "fidelity": {"interval_s": 0.5, "flagged": False}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    g = _guard({7: 85.0}, n=50)  # sample 7 measured (1003.5, 1004.0]; the transfer ran 1004.0-1004.2
    g.add_windows([(1004.0, 1004.2)])
    g.write_samples(tmp_path / "logs" / "guard.csv")
    assert guard_verdict(tmp_path)["during_transfers"]["samples"] == 1
    assert not guard_verdict(tmp_path)["flagged"]  # the sample before the transfer does not count
    g.samples[8] = (g.samples[8][0], 50.0, 10.0, 85.0)  # the one that overlapped it
    g.write_samples(tmp_path / "logs" / "guard.csv")
    rep = guard_verdict(tmp_path)
    assert rep["flagged"] and "80%" in rep["note"] and rep["saturated_share"] == 0.0

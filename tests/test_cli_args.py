"""Command-line arguments checked in process: a wrong one is a one-line error naming it, exit 2."""

import pytest

from netkv.cli import main

from conftest import REPO

SMOKE = str(REPO / "experiments/smoke.toml")


@pytest.mark.parametrize("args,message", [
    (["simulate", SMOKE, "--policy", "magic"],
     "--policy: unknown policy 'magic' (known: cache_load_aware, least_loaded, netkv, random, round_robin)"),
    (["simulate", SMOKE, "--policy", "netkv", "--policy", "netkv"], "--policy: 'netkv' given twice"),
    (["simulate", SMOKE, "--requests", "0"], "--requests: must be >= 1, got 0"),
    (["simulate", SMOKE, "--requests", "-1"], "--requests: must be >= 1, got -1"),
    (["emulate", SMOKE, "--requests", "-1"], "--requests: must be >= 1, got -1"),
    (["emulate", SMOKE, "--policy", "magic"],
     "--policy: unknown policy 'magic' (known: cache_load_aware, least_loaded, netkv, random, round_robin)"),
    (["simulate", SMOKE, "--set", "policies=['netkv','netkv']"], f"{SMOKE}: policies: 'netkv' listed twice"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"netkv: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_report_and_compare_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"netkv: error: {tmp_path}: no summary.json (not a run directory)"
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"netkv: error: {tmp_path}: no summary.json (not a run directory)"


def test_an_interrupted_simulation_says_where_its_partial_results_are(tmp_path, capsys, monkeypatch):
    from netkv.simulator import run as simrun

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(simrun.Simulation, "run", interrupted)
    assert main(["simulate", SMOKE, "--out", str(tmp_path), "--quiet"]) == 130
    (run,) = tmp_path.iterdir()
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"netkv: interrupted; partial results kept in {run}"

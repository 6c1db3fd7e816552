"""Command-line arguments checked in process: a wrong one is a one-line error naming it, exit 2."""

import pytest

from netkv.cli import main

from conftest import REPO

SMOKE = str(REPO / "experiments/smoke.toml")
KNOWN = "round_robin, random, least_loaded, cache_load_aware, netkv, netkv_tbt, netkv_joint"  # the registry's order


@pytest.mark.parametrize(
    "args,message",
    [
        (["simulate", SMOKE, "--policy", "netkv", "--policy", "netkv"], "--policy: 'netkv' given twice"),
        (["simulate", SMOKE, "--requests", "0"], "--requests: must be >= 1, got 0"),
        (["simulate", SMOKE, "--requests", "-1"], "--requests: must be >= 1, got -1"),
        (["emulate", SMOKE, "--requests", "-1"], "--requests: must be >= 1, got -1"),
        (
            ["simulate", SMOKE, "--set", "policies=['netkv','netkv']"],
            "--set policies=['netkv','netkv']: policies: 'netkv' listed twice",
        ),
    ],
)
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


@pytest.mark.parametrize(
    "args,message",
    [
        (["topo", "--k", "3"], "--k: must be an even integer >= 2, got 3"),
        (["topo", "--k", "66", "--gpus", "1"], "--k: must be <= 64 (ID scheme limit), got 66"),
        (["topo", "--gpus", "0"], "--gpus: must be > 0, got 0"),
        (["topo", "--k", "4", "--gpus", "128"], "--k/2 * --gpus must be <= 254 (hosts of one edge share an IP /24)"),
    ],
)
def test_topology_flags_are_checked(capsys, args, message):
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"netkv: error: {message}"]


@pytest.mark.parametrize("cmd", ["simulate", "emulate"])
def test_policy_choices_come_from_the_registry(capsys, cmd):
    with pytest.raises(SystemExit) as e:
        main([cmd, SMOKE, "--policy", "magic"])
    assert e.value.code == 2
    err = capsys.readouterr().err.replace("'", "")  # argparse quotes the choices since Python 3.12.8
    assert f"invalid choice: magic (choose from {KNOWN})" in err


def test_routing_choices_come_from_the_strategies(capsys):
    with pytest.raises(SystemExit) as e:
        main(["topo", "--routing", "zigzag"])
    assert e.value.code == 2
    assert "invalid choice: zigzag (choose from sum-mod, dst-mod, hash)" in capsys.readouterr().err.replace("'", "")


def test_id_scheme_limits_are_config_errors():
    from netkv.config import ConfigError

    from conftest import make_exp

    with pytest.raises(ConfigError) as e:
        make_exp(topology={"k": 66, "gpus_per_server": 1})
    assert str(e.value) == "<experiment>: topology.k: must be <= 64 (ID scheme limit), got 66"
    with pytest.raises(ConfigError) as e:
        make_exp(topology={"k": 4, "gpus_per_server": 128})
    assert str(e.value) == (
        "<experiment>: topology: k/2 * gpus_per_server must be <= 254 (hosts of one edge share an IP /24)"
    )


def test_unusable_paths_and_corrupt_run_files(tmp_path, capsys):
    import shutil

    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(["simulate", SMOKE, "--out", str(a_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"netkv: error: {a_file}") and "Not a directory" in err[0]
    assert main(["topo", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"netkv: error: {tmp_path}: Is a directory"]
    # a real run, then damaged copies of it
    assert main(["simulate", SMOKE, "--out", str(tmp_path / "runs"), "--quiet", "--policy", "netkv"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "summary.json").write_text('{"partial": fal')
    assert main(["report", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"netkv: error: {bad / 'summary.json'}: corrupt (Expecting value at line 1)"
    ]
    shutil.copy(run / "summary.json", bad / "summary.json")
    with open(bad / "netkv" / "requests.jsonl", "a") as fh:
        fh.write("{oops\n")
    assert main(["compare", str(run), str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"netkv: error: {bad / 'netkv' / 'requests.jsonl'}:41: corrupt")


def test_topology_flags_beside_an_experiment_file_are_refused(capsys):
    assert main(["topo", SMOKE, "--k", "8"]) == 2
    assert capsys.readouterr().err.strip() == (
        "netkv: error: --k: the experiment file sets the topology; give one or the other"
    )


def test_an_error_in_a_value_given_by_set_names_the_override(capsys, tmp_path):
    assert main(["simulate", SMOKE, "--set", "topology.k=3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "netkv: error: --set topology.k=3: topology.k: must be an even integer >= 2, got 3"
    )
    assert main(["simulate", SMOKE, "--set", "topology.routing='zigzag'", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "netkv: error: --set topology.routing='zigzag': topology.routing: unknown routing strategy 'zigzag' "
        "(known: sum-mod, dst-mod, hash)"
    )
    assert not any(tmp_path.iterdir())

"""The netkv command: simulate writes a complete run directory; report draws plots; bad input exits non-zero."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

# every test here runs the netkv command as a child process
pytestmark = pytest.mark.spawns

NETKV = [sys.executable, "-m", "netkv.cli"]


def run(*args, cwd=None):
    return subprocess.run([*NETKV, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_simulate_smoke_writes_results_and_plots(tmp_path):
    p = run("simulate", str(REPO / "experiments/smoke.toml"), "--out", str(tmp_path), "--quiet")
    assert p.returncode == 0, p.stderr
    (run_dir,) = list(tmp_path.iterdir())
    doc = json.loads((run_dir / "summary.json").read_text())
    assert doc["partial"] is False
    assert set(doc["policies"]) == {"round_robin", "random", "least_loaded", "cache_load_aware", "netkv"}
    for pol, s in doc["policies"].items():
        assert s["completed"] == s["requests"] == 40
        lines = (run_dir / pol / "requests.jsonl").read_text().splitlines()
        assert len(lines) == 40
        from netkv.results import REQUEST_COLUMNS

        assert list(json.loads(lines[0])) == list(REQUEST_COLUMNS)
    for png in ("ttft_cdf.png", "policy_bars.png", "transfer_by_tier.png"):
        assert (run_dir / "plots" / png).stat().st_size > 1000
    assert "netkv" in p.stdout and "TTFT mean" in p.stdout
    # report re-reads the directory
    r = run("report", str(run_dir))
    assert r.returncode == 0 and "cache_load_aware" in r.stdout


def test_simulate_no_plots_writes_results_only_and_report_draws_them_later(tmp_path):
    p = run("simulate", str(REPO / "experiments/smoke.toml"), "--out", str(tmp_path), "--quiet", "--no-plots",
            "--policy", "netkv", "--requests", "10")  # fmt: skip
    assert p.returncode == 0, p.stderr
    (run_dir,) = list(tmp_path.iterdir())
    assert (run_dir / "netkv" / "requests.jsonl").exists() and not (run_dir / "plots").exists()
    assert "plots:" not in p.stdout and f"results: {run_dir}" in p.stdout
    assert run("report", str(run_dir)).returncode == 0
    assert (run_dir / "plots" / "ttft_cdf.png").stat().st_size > 1000


def test_simulate_skips_the_interpreters_teardown_and_loses_no_output(tmp_path):
    """The installed command ends `simulate` by os._exit once its output is flushed (freeing a whole
    trace's objects one by one took ~0.2 s): an atexit handler, which only a normal exit runs, tells
    which way the process ended; the run directory and the output, to a file, are complete. The
    cyclic collector stays off through such a command (nothing to give back before the exit)."""
    marker, gc_on = tmp_path / "atexit-ran", tmp_path / "gc-enabled-at-exit"
    code = (
        "import atexit, gc, pathlib, sys\n"
        "import netkv.cli as cli\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
        "exit_now = cli._exit_now\n"
        f"cli._exit_now = lambda c: (pathlib.Path({str(gc_on)!r}).write_text(str(gc.isenabled())), exit_now(c))\n"
        "cli.console()\n"
    )
    smoke = str(REPO / "experiments/smoke.toml")
    out = tmp_path / "stdout.txt"
    with out.open("w") as fh:
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "simulate",
                smoke,
                "--out",
                str(tmp_path / "r"),
                "--quiet",
                "--no-plots",
                "--policy",
                "netkv",
                "--requests",
                "10",
            ],  # fmt: skip
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    assert p.returncode == 0, p.stderr
    assert not marker.exists()  # os._exit: no atexit handler, no teardown
    assert gc_on.read_text() == "False"
    (run_dir,) = list((tmp_path / "r").iterdir())
    assert out.read_text().splitlines()[-1] == f"results: {run_dir}"  # flushed before the exit
    assert json.loads((run_dir / "summary.json").read_text())["partial"] is False
    assert len((run_dir / "netkv" / "requests.jsonl").read_text().splitlines()) == 10
    # a command that may hold processes or a fabric exits normally
    p = subprocess.run(
        [sys.executable, "-c", code, "topo", "--k", "4", "--gpus", "4"], capture_output=True, timeout=600
    )
    assert p.returncode == 0 and marker.read_text() == "yes"
    # a failing simulate reports and exits 2 either way
    marker.unlink()
    p = subprocess.run([sys.executable, "-c", code, "simulate", str(tmp_path / "none.toml")], capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert p.returncode == 2 and p.stderr.startswith("netkv: error: ")


def test_topo_json(tmp_path):
    out = tmp_path / "t.json"
    p = run("topo", "--k", "4", "--gpus", "4", "--json", str(out), "--routes")
    assert p.returncode == 0, p.stderr
    assert "36" in p.stdout
    doc = json.loads(out.read_text())
    assert len(doc["hosts"]) == 64 and len(doc["switches"]) == 36
    assert len(doc["routes"]) == 64 * 63


@pytest.mark.parametrize(
    "content,needle",
    [
        ("[topology]\nk = 5\n", "topology.k"),
        ("[trace]\npath = 'nowhere.jsonl'\n", "nowhere.jsonl"),
    ],
)
def test_bad_input_one_line_error(tmp_path, content, needle):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    p = run("simulate", str(f), "--out", str(tmp_path / "out"), "--quiet")
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("netkv: error:")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_report_on_non_run_dir(tmp_path):
    p = run("report", str(tmp_path))
    assert p.returncode == 2 and p.stderr.strip() == f"netkv: error: {tmp_path}: no summary.json (not a run directory)"


def test_compare_a_run_with_itself_and_with_another_seed(tmp_path):
    exp = REPO / "experiments/smoke.toml"
    assert run("simulate", str(exp), "--out", str(tmp_path / "a"), "--quiet").returncode == 0
    (a,) = list((tmp_path / "a").iterdir())
    p = run("compare", str(a), str(a), "--json", str(tmp_path / "c.json"))
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "c.json").read_text())
    for res in doc.values():
        assert res["requests"] == 40 and res["same_decode"] == 1.0
        assert res["ttft_s"]["mae"] == 0.0 and res["ttft_s"]["rel_err_p95"] == 0.0
    # another seed: random picks other instances, so decisions and times differ
    p = run("simulate", str(exp), "--out", str(tmp_path / "b"), "--quiet", "--policy", "random", "--set", "seed=99")
    assert p.returncode == 0, p.stderr
    (b,) = list((tmp_path / "b").iterdir())
    p = run("compare", str(a), str(b), "--json", str(tmp_path / "d.json"))
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "d.json").read_text())
    assert list(doc) == ["random"]  # only the policies both runs hold
    res = doc["random"]
    assert res["requests"] == 40 and res["same_decode"] < 0.5
    assert res["ttft_s"]["mae"] > 0 and res["ttft_s"]["mean_a"] != res["ttft_s"]["mean_b"]
    assert "random" in p.stdout and "ttft_s" in p.stdout
    bad = run("compare", str(a), str(tmp_path))
    assert bad.returncode != 0 and "summary.json" in bad.stderr


def test_bench_vs_splitwise_says_what_is_missing_without_the_peer_simulator(tmp_path):
    (tmp_path / "splitwise-sim").mkdir()
    (tmp_path / "splitwise-sim" / "run.py").write_text("")
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts/bench_vs_splitwise.py"), "--peer", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode != 0
    assert p.stderr.strip() == (
        f"bench_vs_splitwise: {tmp_path / 'venv-sw/bin/python'} is missing; see ../shared/peer/splitwise/README.md"
    )

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


def test_topo_json(tmp_path):
    out = tmp_path / "t.json"
    p = run("topo", "--k", "4", "--gpus", "4", "--json", str(out), "--routes")
    assert p.returncode == 0, p.stderr
    assert "36" in p.stdout
    doc = json.loads(out.read_text())
    assert len(doc["hosts"]) == 64 and len(doc["switches"]) == 36
    assert len(doc["routes"]) == 64 * 63


@pytest.mark.parametrize("content,needle", [
    ("[topology]\nk = 5\n", "topology.k"),
    ("[trace]\npath = 'nowhere.jsonl'\n", "nowhere.jsonl"),
])
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
    for pol, res in doc.items():
        assert res["requests"] == 40 and res["same_decode"] == 1.0
        assert res["ttft_s"]["mae"] == 0.0 and res["ttft_s"]["rel_err_p95"] == 0.0
    # another seed: random picks other instances, so decisions and times differ
    p = run("simulate", str(exp), "--out", str(tmp_path / "b"), "--quiet", "--policy", "random",
            "--set", "seed=99")
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


@pytest.fixture
def state_only(tmp_path, monkeypatch):
    """cleanup sees no bridges, veths or processes, and tmp_path as its state directory."""
    from netkv.emulation import cleanup

    for fn in ("processes", "mininet_shells", "ovs_bridges", "veths"):
        monkeypatch.setattr(cleanup, fn, lambda: [])
    monkeypatch.setattr(cleanup, "STATE_DIR", tmp_path)
    return tmp_path


def test_clean_removes_stale_socket_dirs(tmp_path, state_only):
    """A run killed hard leaves a per-run socket directory; `clean` must remove it, not crash."""
    from netkv.emulation import cleanup

    import os

    dead = 2**22 + 7  # above the largest possible pid_max (2**22): never a live process
    (tmp_path / f"sock-20261126-000000-{dead}").mkdir()
    (tmp_path / f"sock-20261126-000000-{dead}" / "decode-h0.sock").write_text("")
    (tmp_path / "fabric.json").write_text("{}")
    live = tmp_path / f"sock-20261126-000000-{os.getpid()}"  # a run that is still going
    live.mkdir()
    assert cleanup.clean(verbose=False) == []
    assert list(tmp_path.iterdir()) == [live]


def test_netkv_clean_reports_and_removes_stale_state_only(tmp_path, state_only, capsys):
    from netkv.cli import main

    (tmp_path / f"sock-20261126-000000-{2**22 + 1}").mkdir()  # owner pid above the largest pid_max: gone
    assert main(["clean"]) == 0
    out = capsys.readouterr().out
    assert "1 stale state entries" in out and "clean" in out
    assert list(tmp_path.iterdir()) == []
    assert main(["clean"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_state_entries_are_leftovers_only_once_their_owner_is_gone(tmp_path, state_only, capsys):
    """A live run's socket directory is not a leftover; a dead run's (or a dead `net up`'s net.json) is,
    so a new run refuses to start and `netkv net status` says how to clean."""
    import os

    from netkv.emulation import cleanup
    from netkv.cli import main

    dead = 2**22 + 12345  # above the largest possible pid_max (2**22): never a live process
    (tmp_path / f"sock-20261127-000000-{os.getpid()}").mkdir()
    assert cleanup.find_leftovers() == []
    (tmp_path / "net.json").write_text(json.dumps({"pid": dead, "rest": "http://127.0.0.1:1"}))
    left = cleanup.find_leftovers()
    assert left == [f"1 stale state entries in {tmp_path} (net.json)"]
    assert main(["net", "status"]) == 1
    out = capsys.readouterr().out
    assert f"pid {dead}, which is gone" in out and "netkv clean" in out
    (tmp_path / "net.json").unlink()
    (tmp_path / f"sock-20261127-000000-{dead}").mkdir()
    (tmp_path / "stray.txt").write_text("")
    assert "2 stale state entries" in cleanup.find_leftovers()[0]


def test_a_live_run_is_named_not_called_leftovers(tmp_path, state_only, capsys, monkeypatch):
    """While another process's run is live, `net status` names it, `clean` refuses without --force,
    and a new fabric refuses to start on top of it."""
    import os

    from netkv.emulation import cleanup
    from netkv.cli import main

    other = os.getppid()  # alive, and not this process
    live = tmp_path / f"sock-20261127-000000-{other}"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"what": "netkv emulate demo.toml", "run_dir": "/r/demo-emu"}))
    monkeypatch.setattr(cleanup, "ovs_bridges", lambda: ["s0_0_0", "e0_0"])  # its fabric
    desc = f"pid {other} (netkv emulate demo.toml, run directory /r/demo-emu; state {live})"
    assert cleanup.live_runs() == [desc]
    assert main(["net", "status"]) == 0
    assert capsys.readouterr().out.strip() == (f"an emulated run is live: {desc} "
                                               "(its bridges and processes are not leftovers)")
    assert main(["clean"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"netkv: error: a run is live: {desc}") and "--force" in err[0]
    assert live.exists()
    from netkv.emulation.fabric import Fabric, FabricError, FabricSpec

    monkeypatch.setattr("netkv.emulation.fabric.require_root", lambda: None)
    with pytest.raises(FabricError, match=rf"another emulated run is live: pid {other} "):
        Fabric(FabricSpec(k=2, gpus=2), tmp_path / "logs").preflight()
    # the owner's own process does not see itself as another live run
    monkeypatch.setattr(os, "getpid", lambda: other)
    assert cleanup.live_runs() == []

"""What a fabric runs on each server (netkv.emulation.remote), called as over SSH: JSON in, JSON out;
and the node setup scripts that carry their own batches (nothing read from this machine's disk)."""

import json
import socket
import subprocess
import sys

from netkv.emulation import remote
from netkv.emulation.fabric import _batch


def _call(op: str, req: dict):
    r = subprocess.run(remote.command(op), input=json.dumps(req), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sockets_lists_only_agents_listening(tmp_path):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "h0.sock"))
    (tmp_path / "h1.sock").write_text("a file, not a socket")
    try:
        assert _call("sockets", {"dir": str(tmp_path), "names": ["h0", "h1", "h2"]}) == ["h0"]
    finally:
        srv.close()


def test_kill_spares_this_namespace_and_unknown_pids():
    # pids of this process's own namespace (and one that does not exist) must never be touched
    assert _call("kill", {"pids": [1, 999999999]}) == 0


def test_a_bad_request_fails_loudly():
    r = subprocess.run(remote.command("ping"), input="{}", capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "KeyError" in r.stderr
    assert remote.command("kill")[:3] == [sys.executable, "-m", "netkv.emulation.remote"]


def test_batches_travel_inside_the_script(tmp_path):
    ok = _batch("cat", ["line one", "line 'two'"], "FAILED-X").replace("cat -batch -", f"tee {tmp_path / 'out'}")
    bad = _batch("false", ["x"], "FAILED-Y")
    out = subprocess.run(["sh", "-c", ok + bad + "echo end\n"], capture_output=True, text=True, timeout=30).stdout
    assert (tmp_path / "out").read_text() == "line one\nline 'two'\n"
    assert out.split() == ["FAILED-Y", "end"]

"""State directory and cleanup: stale entries are removed, a live run is named and left alone."""

import json
import os

import pytest

from netkv.cli import main
from netkv.emulation import cleanup, statedir


@pytest.fixture
def state_only(tmp_path, monkeypatch):
    """cleanup sees no bridges, veths or processes, and tmp_path as its state directory."""
    for fn in ("processes", "mininet_shells", "ovs_bridges", "veths"):
        monkeypatch.setattr(cleanup, fn, lambda: [])
    monkeypatch.setattr(statedir, "STATE_DIR", tmp_path)
    return tmp_path


def test_clean_removes_stale_socket_dirs(tmp_path, state_only):
    """A run killed hard leaves a per-run socket directory; `clean` must remove it, not crash."""

    dead = 2**22 + 7  # above the largest possible pid_max (2**22): never a live process
    (tmp_path / f"sock-20261126-000000-{dead}").mkdir()
    (tmp_path / f"sock-20261126-000000-{dead}" / "decode-h0.sock").write_text("")
    (tmp_path / "fabric.json").write_text("{}")
    live = tmp_path / f"sock-20261126-000000-{os.getpid()}"  # a run that is still going
    live.mkdir()
    assert cleanup.clean(verbose=False) == []
    assert list(tmp_path.iterdir()) == [live]


def test_netkv_clean_reports_and_removes_stale_state_only(tmp_path, state_only, capsys):

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

    other = os.getppid()  # alive, and not this process
    live = tmp_path / f"sock-20261127-000000-{other}"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"what": "netkv emulate demo.toml", "run_dir": "/r/demo-emu"}))
    monkeypatch.setattr(cleanup, "ovs_bridges", lambda: ["s0_0_0", "e0_0"])  # its fabric
    desc = f"pid {other} (netkv emulate demo.toml, run directory /r/demo-emu; state {live})"
    assert statedir.live_runs() == [desc]
    assert main(["net", "status"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"an emulated run is live: {desc} (its bridges and processes are not leftovers)"
    )
    assert main(["clean"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"netkv: error: a run is live: {desc}") and "--force" in err[0]
    assert live.exists()
    from netkv.emulation.fabric import Fabric, FabricError, FabricSpec

    monkeypatch.setattr("netkv.emulation.fabric.require_root", lambda **_: None)
    with pytest.raises(FabricError, match=rf"another emulated run is live: pid {other} "):
        Fabric(FabricSpec.for_fattree(2, 2), tmp_path / "logs").preflight()
    # the owner's own process does not see itself as another live run
    monkeypatch.setattr(os, "getpid", lambda: other)
    assert statedir.live_runs() == []


def test_a_run_s_socket_directory_is_private_and_names_its_owner(state_only):
    d = statedir.claim_run("20261127-000000", "netkv emulate x.toml", state_only / "results" / "x-emu")
    assert d == state_only / f"sock-20261127-000000-{os.getpid()}"
    assert d.stat().st_mode & 0o777 == 0o700
    assert json.loads((d / "owner.json").read_text()) == {
        "what": "netkv emulate x.toml",
        "run_dir": str(state_only / "results" / "x-emu"),
    }
    assert statedir.owner_pid(d) == os.getpid() and d not in statedir.stale_state_entries()


def test_a_fabric_s_ovs_directory_is_owned_by_its_process(tmp_path, state_only):
    """ovs-<pid>: live while its fabric's process runs (named once, beside the run's other entry),
    stale once it is gone (clean removes it)."""
    import subprocess
    import sys

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"ovs-{other.pid}").mkdir()
        assert statedir.owner_pid(tmp_path / f"ovs-{other.pid}") == other.pid
        runs = statedir.live_runs()
        assert len(runs) == 1 and runs[0].startswith(f"pid {other.pid} (emulated fabric")
        (tmp_path / f"sock-20261127-000000-{other.pid}").mkdir()  # the same process's emulated run
        runs = statedir.live_runs()
        assert len(runs) == 1 and "netkv emulate" in runs[0]  # named once, by the run
    finally:
        other.kill()
        other.wait()
    assert {e.name for e in statedir.stale_state_entries()} == {f"ovs-{other.pid}", f"sock-20261127-000000-{other.pid}"}
    assert cleanup.clean(verbose=False) == []
    assert list(tmp_path.iterdir()) == []


def test_stray_per_switch_daemons_are_leftovers_by_their_state_path():
    """A per-switch ovs-vswitchd names its state directory on its command line: that is how
    cleanup tells it from the system's daemon."""
    from netkv.topology.ovs_daemon import SwitchDaemon

    d = SwitchDaemon("e0_0", statedir.STATE_DIR / "ovs-123" / "e0_0")
    marker = next(m for m in cleanup.PROC_MARKERS if "ovs-" in m)
    assert marker in " ".join(d.vswitchd_cmd(1)) and marker in " ".join(d.ovsdb_cmd())
    assert marker not in "ovs-vswitchd unix:/var/run/openvswitch/db.sock --pidfile --detach"


def test_switch_daemons_keep_freed_memory_unless_told_not_to():
    """ovs-vswitchd starts with malloc tunables that glibc accepts (bench_fabric.py --ovs-malloc
    measures the difference); keep_memory=False leaves glibc's defaults."""
    import subprocess

    from netkv.topology.ovs_daemon import MALLOC_TUNABLES, SwitchDaemon

    d = SwitchDaemon("e0_0", statedir.STATE_DIR / "ovs-123" / "e0_0")
    assert f"GLIBC_TUNABLES={MALLOC_TUNABLES}" in d.vswitchd_cmd(1)
    plain = SwitchDaemon("e0_0", d.root, keep_memory=False).vswitchd_cmd(1)
    assert not any(a.startswith("GLIBC_TUNABLES") for a in plain)
    got = subprocess.run(
        ["/lib64/ld-linux-x86-64.so.2", "--list-tunables"],
        env={"GLIBC_TUNABLES": MALLOC_TUNABLES},
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "glibc.malloc.trim_threshold: 0x10000000" in got and "glibc.malloc.mmap_threshold: 0x400000" in got


def test_proc_net_counters_parse_header_and_value_pairs():
    from netkv.emulation.fabric import parse_proc_net

    text = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm OutSegs RetransSegs MaxConn\nTcp: 1 1200 7 -1\n"
        "TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\nTcpExt: 0 3 5\n"
        "IpExt: InNoRoutes\nIpExt: 0\n"
    )
    got = parse_proc_net(text)
    assert got["Tcp.OutSegs"] == 1200 and got["Tcp.RetransSegs"] == 7 and got["Tcp.MaxConn"] == -1
    assert got["TcpExt.TCPTimeouts"] == 3 and got["TcpExt.TCPLossProbes"] == 5
    assert got["Ip.DefaultTTL"] == 64 and got["IpExt.InNoRoutes"] == 0
    assert "Tcp.Tcp" not in got and len(got) == 10


def test_tc_statistics_give_each_device_its_root_qdisc_drops():
    from netkv.emulation.fabric import parse_tc_root_drops

    text = (
        "qdisc tbf 1: dev s0_0_0-eth5 root refcnt 2 rate 25Mbit burst 9100b lat 4.0ms\n"
        " Sent 1234 bytes 10 pkt (dropped 7, overlimits 3 requeues 0)\n"
        " backlog 0b 0p requeues 0\n"
        "qdisc htb 10: dev s0_0_0-eth5 parent 1:1 r2q 10 default 0 direct_packets_stat 0\n"
        " Sent 1234 bytes 10 pkt (dropped 7, overlimits 0 requeues 0)\n"  # a child: counted at the root
        "qdisc htb 1: dev h0_0_0_0-eth0 root refcnt 2 r2q 10 default 0x1\n"
        " Sent 99 bytes 1 pkt (dropped 12, overlimits 0 requeues 0)\n"
    )
    assert parse_tc_root_drops(text) == {"s0_0_0-eth5": 7, "h0_0_0_0-eth0": 12}


def test_a_crashed_fabric_s_raised_send_buffer_default_is_restored_by_clean(tmp_path, state_only, monkeypatch):
    """A fabric raises net.core.wmem_default and keeps the old value in the state directory under
    its pid; once that pid is gone, `clean` writes the old value back and removes the entry."""
    from pathlib import Path

    written = {}
    real = Path.write_text

    def fake_write(self, text, *a, **k):
        if str(self) == "/proc/sys/net/core/wmem_default":
            written["value"] = text
            return len(text)
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", fake_write)
    live = tmp_path / f"{statedir.WMEM_PREFIX}{os.getpid()}"
    live.write_text("212992")
    assert statedir.owner_pid(live) == os.getpid() and cleanup.find_leftovers() == []
    live.unlink()
    (tmp_path / f"{statedir.WMEM_PREFIX}{2**22 + 3}").write_text("212992")
    assert cleanup.clean(verbose=False) == []
    assert written == {"value": "212992"} and list(tmp_path.iterdir()) == []


def test_the_ovs_send_buffer_holds_the_busiest_switch_s_full_queues():
    from netkv.emulation.fabric import WMEM_CAP, FabricSpec, ovs_send_buffer_bytes

    spec = FabricSpec.for_fattree(2, 2, bandwidth_scale=16000, mtu=9000, queue_ms=20.0, fair_buckets=64)
    topo = spec.fattree()
    # a server switch: 2 GPU ports at 900/16000 Gbit/s, one uplink at 400/16000 (per port: 2 x 64
    # buckets x 20 ms at the port's rate, plus 1,000 ACKs of 2 KB)
    per_port = lambda gbps: 2 * 64 * (gbps * 1e9 / 16000 / 8 * 0.020) + 1000 * 2048  # noqa: E731
    want = 2 * per_port(900) + per_port(400)
    assert abs(ovs_send_buffer_bytes(spec, topo) - want) < 8
    deeper = FabricSpec.for_fattree(2, 2, bandwidth_scale=16000, mtu=9000, queue_ms=40.0, fair_buckets=64)
    assert ovs_send_buffer_bytes(deeper, topo) > ovs_send_buffer_bytes(spec, topo)
    huge = FabricSpec.for_fattree(2, 2, bandwidth_scale=100, queue_ms=1000.0)
    assert ovs_send_buffer_bytes(huge, topo) == WMEM_CAP

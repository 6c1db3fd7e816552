"""Emulated-run lifecycle (root): leftovers refused with a hint, Ctrl-C/SIGTERM/crash cleanup,
`netkv clean`, and `mn --custom` building the same fabric."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from netkv.emulation import cleanup
from netkv.emulation.fabric import Fabric, FabricError, FabricSpec

from conftest import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("clean_machine")]
NETKV = [sys.executable, "-m", "netkv.cli"]


def wait_line(proc, needle, timeout=120):
    t0 = time.monotonic()
    lines = []
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"'{needle}' not seen; output: {''.join(lines)}")


def net_up(tmp_path, *extra):
    return subprocess.Popen(
        [*NETKV, "net", "up", "--k", "2", "--gpus", "2", "--poll", "0.5", "--log-dir", str(tmp_path / "net"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_nothing(tmp_path, sig):
    p = net_up(tmp_path)
    wait_line(p, "fabric running")
    assert cleanup.find_leftovers() != []
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "fabric down" in out
    assert cleanup.find_leftovers() == []


def test_ctrl_c_pressed_again_during_teardown_leaves_nothing(tmp_path):
    # a user who keeps pressing Ctrl-C: SIGINTs to the whole process group while the fabric comes
    # down (one that landed mid-teardown once left the controller running)
    p = subprocess.Popen(
        [*NETKV, "net", "up", "--k", "2", "--gpus", "2", "--poll", "0.5", "--log-dir", str(tmp_path / "net")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_line(p, "fabric running")
    for _ in range(15):
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    out, _ = p.communicate(timeout=120)
    assert "fabric down" in out, out
    assert cleanup.find_leftovers() == [], out


def test_net_status_and_down(tmp_path):
    p = net_up(tmp_path)
    wait_line(p, "fabric running")
    st = subprocess.run([*NETKV, "net", "status"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "switches 7/7 connected" in st.stdout, st.stdout
    dn = subprocess.run([*NETKV, "net", "down"], capture_output=True, text=True, timeout=180)
    assert dn.returncode == 0, dn.stdout
    p.wait(timeout=60)
    assert cleanup.find_leftovers() == []


def test_crash_leftovers_are_refused_then_cleaned(tmp_path):
    p = net_up(tmp_path)
    wait_line(p, "fabric running")
    p.kill()  # a crash: no teardown
    p.wait()
    assert cleanup.find_leftovers()
    q = net_up(tmp_path / "again")
    out, _ = q.communicate(timeout=120)
    assert q.returncode == 2
    assert "leftovers" in out and "netkv clean" in out
    c = subprocess.run([*NETKV, "clean"], capture_output=True, text=True, timeout=180)
    assert c.returncode == 0, c.stdout + c.stderr
    assert cleanup.find_leftovers() == []


def test_exception_inside_run_tears_down(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Fabric(FabricSpec.for_fattree(2, 2), tmp_path):
            raise RuntimeError("boom")
    assert cleanup.find_leftovers() == []


def test_processes_started_in_hosts_end_with_the_fabric(tmp_path):
    # a process a script starts in a host (no NETKV_RUN tag) would outlive Mininet's stop and keep
    # the host's namespace alive; the fabric kills whatever still runs in its hosts' namespaces
    with Fabric(FabricSpec.for_fattree(2, 2), tmp_path) as fab:
        host = fab.host(fab.topo.hosts[0].name)
        stray = host.popen(["sleep", "600"])
        space = os.stat(f"/proc/{host.pid}/ns/net").st_ino
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{stray.pid}/ns/net").st_ino != space:  # mnexec enters it, then execs
            assert time.monotonic() < deadline, "the process never entered the host's namespace"
            time.sleep(0.05)
    try:
        assert stray.wait(timeout=5) is not None
    finally:
        stray.kill()


def test_stray_bridge_is_reported(tmp_path):
    subprocess.run(["ovs-vsctl", "add-br", "e0_0", "--", "set", "bridge", "e0_0", "datapath_type=netdev"], check=True)
    with pytest.raises(FabricError, match="netkv clean"):
        with Fabric(FabricSpec.for_fattree(2, 2), tmp_path):
            pass
    assert any("OVS bridges" in x for x in cleanup.find_leftovers())
    cleanup.clean(verbose=False)
    assert cleanup.find_leftovers() == []


def test_mn_custom_builds_the_same_fabric(tmp_path):
    """`mn --custom` builds the project's fat-tree: the same nodes, every link between the same ports,
    the same host addresses, and full reachability under the controller."""
    import re

    from netkv.topology import FatTree

    spec = FabricSpec.for_fattree(2, 2, poll_interval=0.5, rest_port=8090, of_port=6690)
    fab = Fabric(spec, tmp_path)
    fab.start_controller()
    pre = tmp_path / "pre.cli"
    pre.write_text("net\ndump\n")
    try:
        p = subprocess.run(
            [
                sys.executable,
                shutil.which("mn"),
                "--custom",
                str(REPO / "topology/mn_custom.py"),
                "--topo",
                "netkv-fattree,k=2,gpus=2",
                "--controller",
                "remote,ip=127.0.0.1,port=6690",
                "--switch",
                "ovs,datapath=user,protocols=OpenFlow13",
                "--pre",
                str(pre),
                "--test",
                "pingall",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = p.stdout + p.stderr
        assert "Results: 0% dropped" in out, out[-2000:]
    finally:
        fab.stop_controller()
        cleanup.clean(verbose=False)
    topo = FatTree(2, 2)
    # `net` prints every interface as NODE-ethPORT:PEER-ethPORT, once from each end
    got = set(re.findall(r"(\w+)-eth(\d+):(\w+)-eth(\d+)", out))
    want = {(lk.src, str(lk.src_port), lk.dst, str(lk.dst_port)) for lk in topo.links}
    assert got == want, (sorted(got ^ want)[:10], out[-3000:])
    ips = dict(re.findall(r"<Host (\S+): \S+-eth0:([\d.]+)", out))
    assert ips == {h.name: h.ip for h in topo.hosts}
    switches = set(re.findall(r"<\w*Switch(?:\{[^}]*\})? (\w+): ", out))
    assert switches == {sw.name for sw in topo.switches}, out[-3000:]


def test_emulate_refuses_links_mininet_cannot_shape(tmp_path):
    exp = tmp_path / "fast.toml"
    exp.write_text("[topology]\nk = 2\n[emulation]\nbandwidth_scale = 100\n")
    p = subprocess.run(
        [*NETKV, "emulate", str(exp), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "emulation.bandwidth_scale" in err[0] and "9000 Mbit/s" in err[0], p.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_fabric_raises_the_socket_send_buffer_default_for_its_life_only(tmp_path):
    """ovs-vswitchd's one AF_PACKET send socket must hold the queues' bytes (else sends fail with
    EAGAIN and packets vanish uncounted): the fabric raises net.core.wmem_default before the daemons
    start and puts the old value back at teardown."""
    from pathlib import Path

    from netkv.emulation.fabric import ovs_send_buffer_bytes

    knob = Path("/proc/sys/net/core/wmem_default")
    before = int(knob.read_text())
    spec = FabricSpec.for_fattree(2, 2)
    need = ovs_send_buffer_bytes(spec, spec.fattree())
    assert need > before  # the test means something only if the fabric has to raise it
    with Fabric(spec, tmp_path) as fab:
        assert int(knob.read_text()) == need
        sw = fab.net.switches[0]
        out = sw.cmd("ss -0 -a -m")  # the daemon's sockets, in the switch's namespace
        assert f"tb{need}" in out, out
    assert int(knob.read_text()) == before


def test_the_fabric_holds_the_cpus_in_polling_idle_for_its_life_only(tmp_path):
    """Shaped ports release frames from kernel timers that halted CPUs serve late (emulation/pollidle.py):
    while a fabric lives, the CPU latency QoS limit reads 0 us (cpuidle keeps only its polling state);
    after teardown, or with emulation.poll_idle off, it is what it was."""
    from netkv.emulation.pollidle import current_limit_us

    before = current_limit_us()
    assert before is not None and before > 0  # else nothing below could show the fabric's request
    spec = FabricSpec.for_fattree(2, 2)
    with Fabric(spec, tmp_path / "on") as fab:
        assert fab.poll_idle.held and current_limit_us() == 0
    assert current_limit_us() == before
    spec.poll_idle = False
    with Fabric(spec, tmp_path / "off") as fab:
        assert not fab.poll_idle.held and current_limit_us() == before
    assert current_limit_us() == before


def test_a_killed_holder_leaves_no_polling_idle_request_behind():
    """The request lives in an open file: SIGKILL the process that holds it, and the limit is back."""
    from netkv.emulation.pollidle import current_limit_us

    before = current_limit_us()
    code = "from netkv.emulation.pollidle import PollIdle; p = PollIdle(); assert p.acquire(), p.error; print('held', flush=True); import time; time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert current_limit_us() == 0
    finally:
        p.kill()
        p.wait(10)
    assert current_limit_us() == before

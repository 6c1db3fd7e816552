"""OVS layouts (root): a daemon per switch, each in its own network namespace, reached over the
controller's Unix socket; the whole fabric in the system's daemon; nothing left after either."""

import os
import shutil
import subprocess

import pytest

from netkv.emulation import cleanup, statedir
from netkv.emulation.fabric import Fabric, FabricSpec, restore_wmem_default
from netkv.topology import ovs_daemon

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("clean_machine")]


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _system_bridges() -> set[str]:
    p = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True)
    return set(p.stdout.split())


def test_a_daemon_per_switch_in_its_own_namespace(tmp_path):
    spec = FabricSpec.for_fattree(2, 2, poll_interval=0.5, ovs_daemons="switch")
    with Fabric(spec, tmp_path) as fab:
        root = str(fab.ovs_root)
        assert fab.ovs_root.parent == statedir.STATE_DIR
        names = {sw.name for sw in fab.topo.switches}
        pids = ovs_daemon.running_daemons(root)
        vswitchd = [p for p in pids if open(f"/proc/{p}/comm").read().strip() == "ovs-vswitchd"]
        assert len(vswitchd) == len(names) == 7
        spaces = {_netns(p) for p in vswitchd}
        assert len(spaces) == 7 and _netns(os.getpid()) not in spaces
        # each keeps the memory it frees (no brk/page-fault churn per received batch; bench_fabric.py);
        # glibc cuts its copy of the variable at the first ':' while parsing it, so that is what shows
        for p in vswitchd:
            env = open(f"/proc/{p}/environ", "rb").read().split(b"\0")
            assert f"GLIBC_TUNABLES={ovs_daemon.MALLOC_TUNABLES.split(':')[0]}".encode() in env
        assert not (names & _system_bridges())  # none of the fabric is in the system's daemon
        # the switch's own daemon holds exactly its bridge, with the ID scheme's dpid and ports
        d = ovs_daemon.SwitchDaemon("e0_0", fab.ovs_root / "e0_0")
        assert subprocess.run(d.vsctl("list-br"), capture_output=True, text=True).stdout.split() == ["e0_0"]
        dpid = subprocess.run(d.vsctl("get", "bridge", "e0_0", "datapath_id"), capture_output=True, text=True)
        e0 = next(sw for sw in fab.topo.switches if sw.name == "e0_0")
        assert dpid.stdout.strip().strip('"') == e0.dpid_str
        assert fab.reachability() == []
        # the controller talks OpenFlow over the Unix socket, and every switch is connected to it
        assert fab.of_socket.is_socket()
        assert fab.health()["switches_connected"] == 7
        flows = fab.dump_flows()
        assert all("priority" in flows[n] for n in names)
    assert ovs_daemon.running_daemons(root) == []
    assert not os.path.exists(root)
    assert cleanup.find_leftovers() == []


def test_shared_layout_puts_the_fabric_in_the_system_daemon(tmp_path):
    spec = FabricSpec.for_fattree(2, 2, poll_interval=0.5, ovs_daemons="shared")
    with Fabric(spec, tmp_path) as fab:
        names = {sw.name for sw in fab.topo.switches}
        assert names <= _system_bridges()
        assert fab.ovs_root is None
        assert fab.reachability() == []
    assert not (names & _system_bridges())


def test_a_stray_switch_daemon_is_a_leftover_and_clean_removes_it(tmp_path):
    spec = FabricSpec.for_fattree(2, 2, poll_interval=0.5, ovs_daemons="switch")
    fab = Fabric(spec, tmp_path)
    fab.__enter__()
    root = str(fab.ovs_root)
    # a runner killed hard: its Mininet and controller are gone, the switch daemons are not
    fab.net.stop = lambda: None
    fab.stop_controller()
    fab.ovs_root = None
    fab._owns_state = False
    left = cleanup.find_leftovers()
    assert any("processes" in item for item in left), left
    assert cleanup.clean(verbose=False) == []
    assert ovs_daemon.running_daemons(root) == []
    shutil.rmtree(root)  # (its owner, this test process, is alive: a real runner's would be gone)
    if fab._wmem_orig is not None:  # likewise the send-buffer default it raised (`clean` restores a dead one's)
        restore_wmem_default(fab._wmem_orig)
    fab.poll_idle.release()  # and its CPU latency request (the kernel drops a dead runner's)
    assert not list(statedir.STATE_DIR.glob(f"{statedir.WMEM_PREFIX}*"))


def test_a_crashed_switch_daemon_restarts_and_its_rules_come_back(tmp_path):
    spec = FabricSpec.for_fattree(2, 2, poll_interval=0.5, ovs_daemons="switch")
    with Fabric(spec, tmp_path) as fab:
        before = fab.dump_flows()["c0_0"]
        took = fab.restart_switch("c0_0")  # the only core: every cross-pod pair crosses it
        assert 0 < took < 30
        assert fab.health()["ready"]
        after = fab.dump_flows()["c0_0"]
        rules = lambda dump: sorted(  # noqa: E731
            " ".join(w for w in line.split() if not w.startswith(("duration=", "n_packets=", "n_bytes=", "idle_age=")))
            for line in dump.splitlines()
            if "priority" in line
        )
        assert rules(after) == rules(before) != []
        assert fab.reachability() == []

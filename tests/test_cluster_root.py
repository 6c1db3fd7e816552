"""The fat-tree across two stand-in servers (network namespaces reached over SSH on link-local
addresses) with Mininet's cluster edition: pods on their servers, VXLAN tunnels on the
aggregation-core links, one Ryu controller for every switch, every pair reachable, nothing left."""

import json
import os
import subprocess
import time
import urllib.error

import pytest

from netkv.controller.client import http_json
from netkv.emulation import cleanup, cluster
from netkv.emulation.fabric import FabricSpec, controller_command

pytestmark = [pytest.mark.root, pytest.mark.slow]

REST = 8093
OF = 6693


def _wait_ready(ctrl, timeout=90):
    deadline, h = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        assert ctrl.poll() is None, "the controller died"
        try:
            h = http_json(f"http://127.0.0.1:{REST}/netkv/health", timeout=2)
            if h.get("ready"):
                return h
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready: {h}")


def test_fat_tree_across_two_namespace_servers(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")  # the conftest hook turns this into a failure in CI
    assert cleanup.find_leftovers() == [], "leftovers before the test: run `netkv clean`"
    spec = FabricSpec.for_fattree(2, 2)
    topo = spec.fattree()
    root = cluster.default_root()
    with cluster.NamespaceServers(2, root) as srv:
        cfg = root / "controller.json"
        cfg.write_text(json.dumps(spec.controller_config()))
        with open(tmp_path / "controller.log", "wb") as log:
            ctrl = subprocess.Popen(
                controller_command(cfg, REST, OF, f"{cluster.SUBNET}.1"),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        net = None
        try:  # the network stops while its servers still answer
            net = cluster.build_net(topo, srv.addresses, srv.ssh_config, f"{cluster.SUBNET}.1", OF)
            net.start()
            health = _wait_ready(ctrl)
            assert health["switches_connected"] == len(topo.switches)
            # each server's own Open vSwitch holds its pod's switches, this machine's the core
            place = cluster.placement(topo, srv.addresses)
            for addr in srv.addresses:
                got = subprocess.run(
                    [*srv.ssh(addr), "ovs-vsctl", "list-br"], capture_output=True, text=True, timeout=30
                )
                assert sorted(got.stdout.split()) == sorted(s.name for s in topo.switches if place[s.name] == addr)
            # aggregation-core links are VXLAN tunnels, links inside a server are veths
            agg = net["a0_0"]
            kinds = {i.name: agg.cmd(f"ip -d link show {i.name}") for i in agg.intfList() if i.name != "lo"}
            assert any("vxlan id" in v for v in kinds.values()) and any("veth" in v for v in kinds.values())
            assert net.pingAll(timeout=2) == 0.0  # through the controller's routes (fail mode secure)
            assert net["h0_0_0_0"].cmd(f"ping -c 2 -M do -s 8900 {net['h1_0_0_1'].IP()}").count("bytes from") == 2
        finally:
            if net is not None:
                net.stop()
            ctrl.terminate()
            ctrl.wait(10)
    assert cluster.leftovers() == []
    assert cleanup.find_leftovers() == []

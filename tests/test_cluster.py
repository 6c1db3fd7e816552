"""Cluster placement of the fat-tree (no Mininet): whole pods per server, the core local, so only
aggregation-core links cross servers."""

import pytest

from netkv.config import parse_section
from netkv.emulation.cluster import LOCAL, ClusterError, placement
from netkv.topology import FatTree


def _topo(k, gpus=2):
    return FatTree.from_config(parse_section("topology", {"k": k, "gpus_per_server": gpus}))


@pytest.mark.parametrize(
    "k, servers", [(2, ["A", "B"]), (4, ["A", "B"]), (4, ["A", "B", "C", "D"]), (8, ["A", "B", "C"])]
)
def test_pods_stay_whole_and_only_agg_core_links_cross_servers(k, servers):
    t = _topo(k)
    place = placement(t, servers)
    assert set(place) == {n.name for n in [*t.hosts, *t.switches]}
    for n in [*t.hosts, *t.switches]:
        if n.kind == "core":
            assert place[n.name] == LOCAL
        else:
            assert place[n.name] == servers[n.pod * len(servers) // k]
    kinds = {n.name: n.kind for n in t.switches}
    crossing = {(lk.src, lk.dst) for lk in t.links if place[lk.src] != place[lk.dst]}
    assert crossing and all({kinds.get(a), kinds.get(b)} == {"agg", "core"} for a, b in crossing)
    # every server holds pods, and the pods are spread as evenly as blocks allow
    per = [sum(1 for p in range(k) if servers[p * len(servers) // k] == s) for s in servers]
    assert max(per) - min(per) <= 1 and min(per) >= 1


def test_placement_needs_a_server():
    with pytest.raises(ClusterError, match="no servers"):
        placement(_topo(2), [])


class _FakeSwitch:
    """What Mininet's OVSSwitch.batchStartup reads of a switch, with a recording shell."""

    def __init__(self, name, server, lines):
        self.name, self.server, self.intfs, self.lines, self.pid = name, server, {}, lines, 1
        self.commands = [f"-- add-br {name} -- set bridge {name} other_config:datapath-id={'0' * 16} " + "x" * 300]

    def isOldOVS(self):  # noqa: N802 (Mininet's)
        return False

    def cmd(self, line, **_kw):
        self.lines.append((self.server, line))

    rcmd = cmd

    def terminate(self):
        pass

    def __str__(self):
        return self.name


def test_remote_switch_batches_fit_a_terminal_line(tmp_path):
    """A remote command goes through ssh's pty, which keeps 4095 bytes of a line: every batched
    ovs-vsctl line must fit, on its own server, and every bridge's commands must be sent."""
    pytest.importorskip("mininet.examples.cluster")  # Debian's python3-mininet; setup installs it
    from netkv.emulation.cluster import mininet_classes

    _, _, switch_cls, _ = mininet_classes(tmp_path / "ssh_config")
    lines = []
    sws = [_FakeSwitch(f"s{i}", "A" if i % 2 else "B", lines) for i in range(40)]  # ~14 KB a server
    switch_cls.batchStartup(sws)
    assert lines and all(len(line) < 4095 for _, line in lines)
    for sw in sws:
        sent = [line for server, line in lines if f"add-br {sw.name} " in line]
        assert len(sent) == 1 and (sw.server, sent[0]) in lines
    lines.clear()
    switch_cls.batchShutdown(sws)
    dels = " ".join(line for _, line in lines if "del-br" in line)
    assert all(len(line) < 4095 for _, line in lines)
    assert all(f"del-br {sw.name} " in dels + " " for sw in sws)


def test_more_servers_than_pods_is_refused():
    from netkv.config import ConfigError, from_dict
    from netkv.scheduler.cluster import Cluster

    exp = from_dict({"topology": {"k": 2}, "emulation": {"servers": 4, "ovs_daemons": "shared"}}, None)
    with pytest.raises(ConfigError, match=r"emulation.servers: 4 servers for 2 pods: a server holds whole pods"):
        Cluster.build(exp)


def test_more_machines_than_pods_and_the_probe_oracle_are_refused():
    from netkv.config import ConfigError, from_dict
    from netkv.scheduler.cluster import Cluster

    em = {"server_hosts": ["a", "b", "c"], "cluster_address": "10.0.0.1", "ovs_daemons": "shared"}
    with pytest.raises(ConfigError, match=r"emulation.server_hosts: 3 servers for 2 pods"):
        Cluster.build(from_dict({"topology": {"k": 2}, "emulation": em}, None))
    exp = from_dict(
        {"topology": {"k": 2}, "emulation": {"servers": 2, "ovs_daemons": "shared"}, "telemetry": {"oracle": "probe"}},
        None,
    )
    with pytest.raises(ConfigError, match=r"emulation.servers: the probe oracle's prober runs on this machine only"):
        Cluster.build(exp)


def test_a_machine_without_login_is_named():
    from netkv.emulation.cluster import RemoteServers

    with pytest.raises(ClusterError, match=r"server netkv-no-such-host.invalid: no SSH login as root without a prompt"):
        RemoteServers(["netkv-no-such-host.invalid"]).start()


def test_stand_in_servers_get_their_own_processes_and_files(tmp_path):
    """A stand-in server's command: its own PID and mount namespaces, the run directories and the
    state directory empty there, the servers' own directory kept (what makes it a separate machine;
    tests/test_cluster_root.py checks it on running servers)."""
    from netkv.emulation import cluster, statedir

    root = statedir.STATE_DIR / "cluster-1"
    srv = cluster.NamespaceServers(2, root, private_dirs=[tmp_path / "run dir"])
    argv = srv.server_argv("nkc1", root / "srv1")
    assert argv[:5] == ["ip", "netns", "exec", "nkc1", "unshare"]
    assert {"--pid", "--fork", "--mount-proc", "--mount"} <= set(argv)
    script = argv[-1]
    assert f"mount -t tmpfs netkv-server '{tmp_path / 'run dir'}'" in script
    assert f"mount --bind {root} {root}/.state/cluster-1 && mount --move {root}/.state {statedir.STATE_DIR}" in script
    assert script.index("mount --move") < script.index("sshd")

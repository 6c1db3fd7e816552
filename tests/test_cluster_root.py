"""The fat-tree across stand-in servers (network namespaces reached over SSH on link-local
addresses) with Mininet's cluster edition: pods on their servers, VXLAN tunnels on the
aggregation-core links, one Ryu controller for every switch, agents started over SSH; an experiment
across two servers agrees request by request with the same experiment on one machine."""

import subprocess
import time

import psutil
import pytest

from netkv.compare import compare_runs
from netkv.config import load
from netkv.emulation import cleanup, cluster, statedir
from netkv.emulation.cluster_fabric import ClusterFabric
from netkv.emulation.fabric import FabricError, FabricSpec
from netkv.emulation.run import emulate_experiment

from conftest import TINY_EXPERIMENT

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("clean_machine")]


def test_fat_tree_k4_across_two_namespace_servers(tmp_path):
    """k = 4: a pod's batched ovs-vsctl is ~9 KB, more than ssh's terminal takes on one line."""
    spec = FabricSpec.for_fattree(4, 2, ovs_daemons="shared", servers=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "here-only").write_text("x")
    fab = ClusterFabric(spec, tmp_path, log=print)
    fab.run_dirs = [tmp_path / "run"]
    with fab:
        topo, srv = fab.topo, fab.servers
        # a stand-in server shares neither processes nor this run's files with this machine: its
        # own PID namespace, the run directory and the state directory empty there
        for addr in srv.addresses:
            got = subprocess.run(
                [*srv.ssh(addr), f"ls -A {tmp_path / 'run'} {statedir.STATE_DIR}; ps -e -o pid=,comm="],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            assert "here-only" not in got and "sock-" not in got
            assert {"1 sshd"} <= {" ".join(x.split()) for x in got.splitlines()}, got  # sshd is its first process
        assert fab.health()["switches_connected"] == len(topo.switches) == 36
        # each server's own Open vSwitch holds its pods' switches, this machine's the core
        place = cluster.placement(topo, srv.addresses)
        for addr in srv.addresses:
            got = subprocess.run([*srv.ssh(addr), "ovs-vsctl", "list-br"], capture_output=True, text=True, timeout=30)
            assert sorted(got.stdout.split()) == sorted(s.name for s in topo.switches if place[s.name] == addr)
        # aggregation-core links are VXLAN tunnels, links inside a server are veths
        agg = fab.net["a0_0"]
        kinds = {i.name: agg.cmd(f"ip -d link show {i.name}") for i in agg.intfList() if i.name != "lo"}
        assert any("vxlan id" in v for v in kinds.values()) and any("veth" in v for v in kinds.values())
        assert fab.reachability() == []  # every ordered pair, through the controller's routes
        h0, h1 = fab.host("h0_0_0_0"), fab.host("h3_1_1_1")
        assert h0.cmd(f"ping -c 2 -M do -s 8900 {h1.IP()}").count("bytes from") == 2  # jumbo frames cross
        # a process started in a remote host: arguments reach it as given (quoted for the remote
        # shell), and ending the local ssh (terminate) ends it too
        out = h0.popen(["printf", "%s|", "a b", "c;d", "$HOME"], stdout=subprocess.PIPE).communicate(timeout=30)[0]
        assert "a b|c;d|$HOME|" in out.decode()
        p = h0.popen(["sleep", "612"])
        remote = []
        for _ in range(100):
            remote = [q for q in psutil.process_iter(["cmdline"]) if q.info["cmdline"] == ["sleep", "612"]]
            if remote:
                break
            time.sleep(0.1)
        assert len(remote) == 1
        p.terminate()
        p.wait(10)
        gone, alive = psutil.wait_procs(remote, timeout=5)
        assert not alive, "the remote process outlived its ssh"
    assert cluster.leftovers() == []
    assert cleanup.find_leftovers() == []


EXPERIMENT = (
    TINY_EXPERIMENT.format(policies='["round_robin"]', requests=32, rate=1.0)
    + """\
# deep queues (as the lossless P/D fabric): at the default 20 ms the bursts of this window overflow
# server->edge queues, and the retransmissions make two runs, even on one machine, differ by a few
# transfers several times over (measured: p95 of the per-request error 22-124%, p50 3-5%)
queue_ms = 100.0
ovs_daemons = "shared"
servers = 2
"""
)


def _agent_ancestors() -> dict[str, list[str]]:
    """Each running agent's host name -> the command names of its ancestors. Only the agents'
    interpreters count: the local ssh client that started one carries the same arguments (seen once
    to win the race for its host when its PID came after the agent's)."""
    out = {}
    for p in psutil.process_iter(["cmdline", "name"]):
        cmd = p.info["cmdline"] or []
        if (p.info["name"] or "").startswith("python") and "netkv.agents.agent" in cmd and "--host" in cmd:
            out[cmd[cmd.index("--host") + 1]] = [a.name() for a in p.parents()]
    return out


def _left_on_server(srv, addr: str) -> list[str]:
    """What a fabric left on a server: bridges, Mininet interfaces or tunnels, processes beyond
    the server's own (sshd, Open vSwitch) and this check's shell."""
    got = subprocess.run(
        [*srv.ssh(addr), "ovs-vsctl list-br; echo ==; ip -o link show; echo ==; ps -e -o comm="],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    brs, links, procs = got.split("==\n")
    out = [f"bridge {b}" for b in brs.split()]
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if cleanup.INTF_RE.match(name) or "vxlan" in line:
            out.append(f"link {name}")
    own = {"sshd", "ovsdb-server", "ovs-vswitchd", "sh", "bash", "ps"}
    return out + [f"process {p}" for p in procs.split() if p not in own]


def test_experiment_across_two_machines_agrees_with_one_machine(tmp_path):
    """The path for real machines (emulation.server_hosts): two stand-in servers play them, each
    with its own processes and without this run's files, so the run works only if its files are
    copied over SSH and the agents' sockets are forwarded by SSH, as between separate machines."""
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT.replace("servers = 2", ""))
    seen = {}

    def where_agents_run(fab, agents, pol):
        seen.update(_agent_ancestors())

    with cluster.NamespaceServers(2, cluster.default_root(), private_dirs=[tmp_path]) as srv:
        machines = [
            f"emulation.server_hosts={srv.addresses}".replace("'", '"'),
            f"emulation.cluster_address={cluster.SUBNET}.1",
            f"emulation.ssh_config={srv.ssh_config}",
        ]
        # a machine holding a bridge of an earlier fabric is refused, named, with what to do
        add = [*srv.ssh(srv.addresses[1]), "ovs-vsctl add-br s0_0_0 -- set bridge s0_0_0 datapath_type=netdev"]
        subprocess.run(add, check=True, timeout=30)
        with pytest.raises(
            FabricError,
            match=rf"server {srv.addresses[1]}: 1 bridges of an earlier fabric \(s0_0_0\): run `netkv clean` there",
        ):
            emulate_experiment(load(path, machines), out=tmp_path / "refused", log=print)
        subprocess.run([*srv.ssh(srv.addresses[1]), "ovs-vsctl del-br s0_0_0"], check=True, timeout=30)
        run2, summ2 = emulate_experiment(
            load(path, machines), out=tmp_path / "two", log=print, on_running=where_agents_run
        )
        assert cleanup.find_leftovers() == []
        assert [x for addr in srv.addresses for x in _left_on_server(srv, addr)] == []
    assert cluster.leftovers() == [] and cleanup.find_leftovers() == []
    # every agent was started over SSH on its server (sshd is its ancestor), not from this process
    assert len(seen) == 8 and all("sshd" in anc for anc in seen.values()), seen
    run1, summ1 = emulate_experiment(load(path), out=tmp_path / "one", log=print)
    assert cleanup.find_leftovers() == []
    for run in (run1, run2):
        assert all(r["status"] == "completed" for r in run.read_requests("round_robin"))
    cmp = compare_runs(run1.root, run2.root)["round_robin"]
    assert cmp["requests"] == 32 and cmp["same_decode"] == 1.0
    assert sum(r["tier"] == 3 for r in run2.read_requests("round_robin")) >= 8  # cross-pod: through the tunnels
    # one machine against two servers, request by request: the median within the fidelity target
    # (10%), the mean within 10%, TTFT within 5%. The p95 is not asserted: two runs on one machine
    # already differ by 28-38% there (measured, docs/scaling.md), one machine vs two servers 17-66%
    tr = cmp["transfer_s_same_pair"]
    assert tr["rel_err_p50"] <= 0.10, tr
    assert abs(tr["rel_err_of_means"]) <= 0.10, tr
    assert abs(cmp["ttft_s"]["rel_err_of_means"]) <= 0.05, cmp["ttft_s"]

"""The emulated fabric across stand-in servers: Fabric's lifecycle on Mininet's cluster edition."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from netkv.emulation.cluster import SUBNET, ClusterError, NamespaceServers, build_net, default_root
from netkv.emulation.fabric import Fabric, FabricError, FabricSpec


class ClusterFabric(Fabric):
    """The fabric across `spec.servers` stand-in servers (NamespaceServers): the servers, one
    controller here (OpenFlow on the servers' bridge, REST on 127.0.0.1), the MininetCluster, then
    the same shaping, tuning and static ARP as on one machine; stops the servers with the nodes."""

    of_host = f"{SUBNET}.1"

    def __init__(self, spec: FabricSpec, log_dir: Path, log=print):
        super().__init__(spec, log_dir, log=log)
        self.servers: NamespaceServers | None = None

    @property
    def per_switch(self) -> bool:
        return False  # each server's one Open vSwitch holds its pods' bridges

    def preflight(self) -> None:
        if self.spec.ovs_daemons != "shared" or self.spec.fair_buckets <= 0:
            raise FabricError("emulation.servers needs ovs_daemons = 'shared' and fair_queue_buckets > 0")
        if not 2 <= self.spec.servers <= self.topo.k:
            raise FabricError(
                f"emulation.servers: {self.spec.servers} servers for {self.topo.k} pods (2 to {self.topo.k})"
            )
        super().preflight()  # root, the system's Open vSwitch (the core runs here), no leftovers
        if not Path("/usr/sbin/sshd").exists() or shutil.which("sudo") is None:
            raise FabricError("emulation.servers needs openssh-server and sudo (scripts/setup.sh installs them)")

    def _before_controller(self) -> None:
        """The servers first: the controller listens on their bridge's address."""
        t0 = time.monotonic()
        self.servers = NamespaceServers(self.spec.servers, default_root())
        try:
            self.servers.start()
        except ClusterError as e:
            raise FabricError(str(e)) from None
        self.log(f"  {self.spec.servers} stand-in servers up in {time.monotonic() - t0:.1f} s")

    def _build_mininet(self) -> None:
        from mininet.log import setLogLevel

        setLogLevel("error")
        t0 = time.monotonic()
        t, addrs = self.topo, self.servers.addresses
        self.log(
            f"  building the fabric across {len(addrs)} servers: {len(t.switches)} switches, {t.n_hosts} hosts, {len(t.links) // 2} links"
        )
        self.net = build_net(t, addrs, self.servers.ssh_config, self.of_host, self.spec.of_port, self.spec.mtu)
        self.log(f"  nodes and links built at {time.monotonic() - t0:.1f} s; starting the switches")
        self.net.start()
        self._tune_interfaces()
        self._static_arp()
        self.log(f"  interfaces tuned at {time.monotonic() - t0:.1f} s; waiting for the controller's routes")

    def _after_nodes_stopped(self) -> None:
        if self.servers is not None:
            self.servers.stop()
            self.servers = None

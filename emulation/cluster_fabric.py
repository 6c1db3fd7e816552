"""The emulated fabric across servers: Fabric's lifecycle on Mininet's cluster edition."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from netkv.emulation import remote
from netkv.emulation.cluster import (
    LOCAL,
    SUBNET,
    ClusterError,
    NamespaceServers,
    RemoteServers,
    build_net,
    default_root,
)
from netkv.emulation.fabric import Fabric, FabricError, FabricSpec


class ClusterFabric(Fabric):
    """The fabric across servers: `spec.servers` stand-in servers (NamespaceServers) or the machines
    `spec.server_hosts` (RemoteServers); one controller here (OpenFlow on the servers' network, REST
    on 127.0.0.1), the MininetCluster, then the same shaping, tuning and static ARP as on one
    machine. Nothing is assumed shared with a server but its network: files reach it over SSH, the
    agents' control sockets are forwarded by SSH, pings and process clean-up run there."""

    socket_poll_s = 0.5  # each poll is one SSH round trip per server

    def __init__(self, spec: FabricSpec, log_dir: Path, log=print):
        super().__init__(spec, log_dir, log=log)
        self.servers: NamespaceServers | RemoteServers | None = None
        self._forwards: list[subprocess.Popen] = []
        self._forwarded: set[str] = set()

    @property
    def of_host(self) -> str:
        return self.spec.cluster_address or f"{SUBNET}.1"

    @property
    def per_switch(self) -> bool:
        return False  # each server's one Open vSwitch holds its pods' bridges

    @property
    def n_servers(self) -> int:
        return len(self.spec.server_hosts) or self.spec.servers

    def preflight(self) -> None:
        if self.spec.ovs_daemons != "shared" or self.spec.fair_buckets <= 0:
            raise FabricError("emulation.servers needs ovs_daemons = 'shared' and fair_queue_buckets > 0")
        if not (1 if self.spec.server_hosts else 2) <= self.n_servers <= self.topo.k:
            raise FabricError(
                f"emulation.servers: {self.n_servers} servers for {self.topo.k} pods (2 to {self.topo.k})"
            )
        super().preflight()  # root, the system's Open vSwitch (the core runs here), no leftovers
        if self.spec.server_hosts:
            return
        if not Path("/usr/sbin/sshd").exists() or shutil.which("sudo") is None:
            raise FabricError("emulation.servers needs openssh-server and sudo (scripts/setup.sh installs them)")

    def _before_controller(self) -> None:
        """The servers first: the controller listens on their network."""
        t0 = time.monotonic()
        if self.spec.server_hosts:
            cfg = Path(self.spec.ssh_config) if self.spec.ssh_config else None
            self.servers = RemoteServers(list(self.spec.server_hosts), cfg)
        else:
            self.servers = NamespaceServers(self.spec.servers, default_root(), private_dirs=list(self.run_dirs))
        try:
            self.servers.start()
        except ClusterError as e:
            raise FabricError(str(e)) from None
        kind = "machines" if self.spec.server_hosts else "stand-in servers"
        self.log(f"  {self.n_servers} {kind} ready in {time.monotonic() - t0:.1f} s")

    def _ssh_config(self) -> Path | None:
        return getattr(self.servers, "ssh_config", None)

    def _build_mininet(self) -> None:
        from mininet.log import setLogLevel

        setLogLevel("error")
        t0 = time.monotonic()
        t, addrs = self.topo, self.servers.addresses
        self.log(
            f"  building the fabric across {len(addrs)} servers: {len(t.switches)} switches, {t.n_hosts} hosts, {len(t.links) // 2} links"
        )
        self.net = build_net(t, addrs, self._ssh_config(), self.of_host, self.spec.of_port, self.spec.mtu)
        self.log(f"  nodes and links built at {time.monotonic() - t0:.1f} s; starting the switches")
        self.net.start()
        self._tune_interfaces()
        self._static_arp()
        self.log(f"  interfaces tuned at {time.monotonic() - t0:.1f} s; waiting for the controller's routes")

    # ---- talking to the servers --------------------------------------------------------------
    def _server_of(self, name: str) -> str:
        return getattr(self.net.get(name), "server", LOCAL)

    def _by_server(self, names) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(self._server_of(n), []).append(n)
        return out

    def _remote(self, server: str, op: str, req: dict, timeout: float = 120.0):
        """`netkv.emulation.remote OP` on a server (here for LOCAL), request and answer as JSON."""
        argv = remote.command(op)
        if server != LOCAL:
            argv = [*self.servers.ssh(server), *map(shlex.quote, argv)]
        r = subprocess.run(argv, input=json.dumps(req), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise FabricError(f"server {server}: {op} failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
        return json.loads(r.stdout)

    def _on_servers(self, fn, servers) -> list:
        """fn(server) for each server, side by side; results in order."""
        servers = list(servers)
        with ThreadPoolExecutor(max_workers=max(1, len(servers))) as ex:
            return list(ex.map(fn, servers))

    def _put(self, server: str, files: dict[Path, bytes], dirs=()) -> None:
        """Write files (absolute paths) and create directories on a server: one tar stream over SSH."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in dirs:
                info = tarfile.TarInfo(str(d).lstrip("/"))
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            for path, data in files.items():
                info = tarfile.TarInfo(str(path).lstrip("/"))
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        r = subprocess.run(
            [*self.servers.ssh(server), "tar", "-x", "-C", "/", "-f", "-"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise FabricError(f"server {server}: copying {len(files)} files failed: {r.stderr.decode()[-300:]}")

    def _write_node_files(self, files: dict) -> None:
        by: dict[str, dict[Path, bytes]] = {}
        for node, (path, text) in files.items():
            server = getattr(node, "server", LOCAL)
            if server == LOCAL:
                path.write_text(text)
            else:
                by.setdefault(server, {})[path] = text.encode()
        self._on_servers(lambda s: self._put(s, by[s]), by)

    def share(self, files=(), dirs=()) -> None:
        data = {Path(f): Path(f).read_bytes() for f in files}
        self._on_servers(lambda s: self._put(s, data, dirs), self.servers.addresses)

    def _ping(self, idx, timeout_s):
        t = self.topo
        by: dict[str, list] = {}
        for s, d in idx:
            by.setdefault(self._server_of(t.hosts[s].name), []).append((s, d))

        def run(server):
            pairs = by[server]
            srcs = {s: self.host(t.hosts[s].name).pid for s in {s for s, _ in pairs}}
            ips = {h: t.hosts[h].ip for pair in pairs for h in pair}
            req = {"sources": srcs, "pairs": pairs, "ips": ips, "timeout_s": timeout_s}
            return [tuple(x) for x in self._remote(server, "ping", req, timeout=60 + 10 * timeout_s)]

        return [pair for got in self._on_servers(run, by) for pair in got]

    def _kill_host_processes(self) -> None:
        by = self._by_server(h.name for h in self.net.hosts if h.pid)
        self._on_servers(lambda s: self._remote(s, "kill", {"pids": [self.net.get(n).pid for n in by[s]]}), by)

    # ---- agents' control sockets: forwarded from each server -----------------------------------
    def forget_socket(self, sock_dir: Path, name: str) -> None:
        server = self._server_of(name)
        if server == LOCAL:
            return super().forget_socket(sock_dir, name)
        path = shlex.quote(str(sock_dir / f"{name}.sock"))
        subprocess.run([*self.servers.ssh(server), f"rm -f {path}"], capture_output=True, timeout=60)

    def sockets_ready(self, sock_dir: Path, names: list[str]) -> list[str]:
        """Agents whose socket exists on their server; each is forwarded here (ssh -L, the same path)
        once it does, and counts as ready when the forwarded socket is there."""
        dead = [p for p in self._forwards if p.poll() is not None]
        if dead:
            raise FabricError(
                f"an SSH socket forwarding ended (exit {dead[0].returncode}); see {self.log_dir / 'ssh-forward.log'}"
            )
        by = self._by_server(names)
        answers = self._on_servers(lambda s: self._remote(s, "sockets", {"dir": str(sock_dir), "names": by[s]}), by)
        for server, up in zip(by, answers, strict=True):
            new = [n for n in up if n not in self._forwarded and server != LOCAL]
            if new:
                self._forward(server, sock_dir, new)
        ready = []
        for server, up in zip(by, answers, strict=True):
            ready += up if server == LOCAL else [n for n in up if (sock_dir / f"{n}.sock").is_socket()]
        return ready

    def _forward(self, server: str, sock_dir: Path, names: list[str]) -> None:
        fwd = []
        for n in names:
            path = sock_dir / f"{n}.sock"
            fwd += ["-L", f"{path}:{path}"]
        opts = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes"]
        with open(self.log_dir / "ssh-forward.log", "ab") as err:
            self._forwards.append(
                subprocess.Popen(
                    [*self.servers.ssh(server), *opts, *fwd],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
        self._forwarded.update(names)

    def _stop_forwards(self) -> None:
        for p in self._forwards:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self._forwards.clear()
        self._forwarded.clear()

    def _after_nodes_stopped(self) -> None:
        self._stop_forwards()
        if self.servers is not None:
            self.servers.stop()
            self.servers = None

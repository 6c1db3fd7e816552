"""The modelled cluster, built once from a loaded experiment: fat-tree, compute, placement, background.

`Cluster.build(exp)` is also where the checks that need the models happen — names looked up in the
registries (routing strategies, layouts, oracles, policies and their parameters), the ID scheme's
limits, host names and selectors — so that every entry point (CLI, simulator, emulation) reports a
bad experiment as one line naming the file and key before anything runs. `load()` = read the file
(netkv.config) + build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from netkv.compute import ComputeModel, compute_from_config
from netkv.config import ConfigError, Experiment
from netkv.config import load as load_experiment
from netkv.scheduler.oracle import ORACLES
from netkv.scheduler.policies.registry import POLICIES
from netkv.topology import STRATEGIES, FatTree
from netkv.topology.placement import LAYOUTS, background_pairs, expand_hosts, placement


@dataclass
class Cluster:
    """What every run of an experiment shares: the fat-tree, the compute model and the roles."""

    exp: Experiment
    topo: FatTree
    prefill_hosts: list[int]
    decode_hosts: list[int]
    background: list[list[tuple[int, int]]]  # per [[background]] entry: its (src, dst) host pairs
    _compute: ComputeModel | None = None
    # per [[fault]] entry: the ids of its link's two directions
    faults: list[tuple[int, int] | None] = field(default_factory=list)  # per [[fault]]: a link fault's links

    @property
    def compute(self) -> ComputeModel:
        """The compute model, read from the profile on first use (ProfileError names the file)."""
        if self._compute is None:
            self._compute = compute_from_config(self.exp)
        return self._compute

    @classmethod
    def build(cls, exp: Experiment, compute: ComputeModel | None = None) -> Cluster:
        """Check the experiment against the models and assemble its cluster (ConfigError naming the
        key on any problem). Fills in the default policy list (every registered policy)."""
        _check_names(exp)
        try:
            topo = FatTree.from_config(exp.topology)
        except ValueError as e:  # limits of the ID scheme (k <= 64, hosts of an edge in one /24)
            raise ConfigError(f"{exp.where}: {e}") from None
        try:
            pre, dec = placement(exp.placement, topo, exp.seed)
        except ValueError as e:
            raise exp.error("placement", str(e)) from None
        bg = []
        for i, b in enumerate(exp.background):
            for side in ("src", "dst"):
                try:
                    expand_hosts(topo, getattr(b, side))
                except ValueError as e:
                    raise exp.error(f"background[{i}].{side}", str(e)) from None
            try:
                bg.append(background_pairs(topo, b))
            except ValueError as e:
                raise exp.error(f"background[{i}]", str(e)) from None
        faults = [_fault_target(exp, topo, pre + dec, i, f) for i, f in enumerate(exp.faults)]
        em = exp.emulation
        n_servers, key = (
            (len(em.server_hosts), "emulation.server_hosts") if em.server_hosts else (em.servers, "emulation.servers")
        )
        if n_servers > topo.k:
            raise exp.error(key, f"{n_servers} servers for {topo.k} pods: a server holds whole pods")
        if n_servers and exp.telemetry.oracle == "probe":
            raise exp.error(key, "the probe oracle's prober runs on this machine only (telemetry.oracle = 'probe')")
        return cls(exp, topo, pre, dec, bg, compute, faults)


def _fault_target(exp: Experiment, topo: FatTree, agents: list[int], i: int, f) -> tuple[int, int] | None:
    """A link fault's two directed links; None for a process fault, once its target is checked."""
    if f.kind == "link":
        return _fault_links(exp, topo, i, f.link)
    if f.kind == "switch":
        if f.target not in topo.nodes or topo.nodes[f.target].kind == "host":
            raise exp.error(f"fault[{i}].target", f"no switch '{f.target}' in this fat-tree")
        if exp.emulation.ovs_daemons != "switch":
            raise exp.error(
                f"fault[{i}].kind", "a switch fault needs a daemon per switch (emulation.ovs_daemons = 'switch')"
            )
    if f.kind == "agent" and f.target not in {topo.hosts[h].name for h in agents}:
        raise exp.error(f"fault[{i}].target", f"'{f.target}' runs no prefill or decode agent in this placement")
    return None


def _fault_links(exp: Experiment, topo: FatTree, i: int, ends: list[str]) -> tuple[int, int]:
    """The two directed links a [[fault]] takes down; refuses a link that is not a switch-to-switch
    link of the fat-tree, or whose loss would leave some pair of hosts without a path."""
    a, b = ends
    fwd, rev = topo.link_by_ends.get((a, b)), topo.link_by_ends.get((b, a))
    if fwd is None or rev is None:
        raise exp.error(f"fault[{i}].link", f"no link between '{a}' and '{b}' in this fat-tree")
    if fwd.level == "gpu":
        raise exp.error(f"fault[{i}].link", f"'{a}'-'{b}' is a GPU's own link: its GPU would be cut off")
    # a fat-tree keeps every pair connected without this link iff the lower switch has another
    # uplink (each edge reaches every aggregation switch of its pod, each aggregation switch its
    # group of cores)
    rank = {"server": 0, "edge": 1, "agg": 2, "core": 3}
    lower = min((a, b), key=lambda n: rank[topo.nodes[n].kind])
    ups = [
        lk
        for lk in topo.links
        if lk.src == lower and rank.get(topo.nodes[lk.dst].kind, -1) > rank[topo.nodes[lower].kind]
    ]
    if len(ups) < 2:
        raise exp.error(
            f"fault[{i}].link",
            f"'{lower}' has no other uplink: with '{a}'-'{b}' down, the hosts below it would be cut off "
            "(pick a link with a redundant path)",
        )
    return fwd.id, rev.id


def _check_names(exp: Experiment) -> None:
    for key, reg, name in (
        ("topology.routing", STRATEGIES, exp.topology.routing),
        ("placement.layout", LAYOUTS, exp.placement.layout),
        ("telemetry.oracle", ORACLES, exp.telemetry.oracle),
    ):
        if name not in reg:
            raise exp.error(key, f"unknown {reg.kind} '{name}' (known: {', '.join(reg.names())})")
    for pol in exp.policies:
        if pol not in POLICIES:
            raise exp.error("policies", f"unknown policy '{pol}' (known: {', '.join(POLICIES.names())})")
    for pol, params in exp.policy_params.items():
        if pol not in POLICIES:
            raise exp.error(f"policy.{pol}", f"unknown policy (known: {', '.join(POLICIES.names())})")
        try:
            POLICIES.get(pol).validate_params(params)
        except ValueError as e:
            raise exp.error(f"policy.{pol}", str(e)) from None
    if not exp.policies:
        exp.policies = POLICIES.names()


def load(path: str | Path, overrides: list[str] | None = None) -> Cluster:
    """Read an experiment file and build its cluster: every check, one line per problem."""
    return Cluster.build(load_experiment(path, overrides))

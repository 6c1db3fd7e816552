"""Role placement on the fat-tree (a registry of layouts) and host selectors.

Placement layouts (fraction f = placement.prefill_fraction of instances are prefill):
  mixed-server       in every server the first round(G*f) GPUs are prefill, the rest decode
                     (P/D pairs can share a server: tier 0 transfers exist)
  alternate-servers  whole servers are prefill or decode, interleaved (f of the servers prefill)
  split-pods         the first round(k*f) pods are prefill, the others decode (all KV crosses the core)
  random             a seeded random f of the hosts are prefill
  explicit           the host names in placement.prefill and placement.decode (others stay idle)

Host selectors (background traffic, explicit lists): a host name such as h0_1_0_2, or `pod:P`,
`edge:P_E`, `server:P_E_S`, `all`.
"""

from __future__ import annotations

import random

from netkv.registry import Registry
from netkv.topology.fattree import FatTree


def expand_hosts(topo: FatTree, selectors: list[str]) -> list[int]:
    """Host indices named by a list of selectors, in order, without duplicates."""
    out: list[int] = []
    for sel in selectors:
        if sel == "all":
            got = list(range(topo.n_hosts))
        elif ":" in sel:
            kind, _, arg = sel.partition(":")
            try:
                parts = [int(x) for x in arg.split("_")]
            except ValueError:
                raise ValueError(f"bad selector '{sel}'") from None
            fields = {"pod": 1, "edge": 2, "server": 3}
            if kind not in fields or len(parts) != fields[kind]:
                raise ValueError(f"bad selector '{sel}' (use pod:P, edge:P_E, server:P_E_S, all or a host name)")
            got = [n.index for n in topo.hosts if [n.pod, n.a, n.b][: len(parts)] == parts]
            if not got:
                raise ValueError(f"selector '{sel}' matches no host of this topology")
        else:
            if sel not in topo.host_index:
                raise ValueError(f"unknown host '{sel}' (hosts are named h<pod>_<edge>_<server>_<gpu>)")
            got = [topo.host_index[sel]]
        for h in got:
            if h not in out:
                out.append(h)
    return out


LAYOUTS: Registry = Registry("layout")


@LAYOUTS.register("mixed-server", order=0)
def _mixed_server(pl, topo: FatTree, seed: int):
    G = topo.gpus_per_server
    n_pre = round(G * pl.prefill_fraction)
    if not 0 < n_pre < G:
        raise ValueError(f"layout 'mixed-server' needs 0 < round(gpus_per_server * prefill_fraction) < {G}")
    return [n.index for n in topo.hosts if n.c < n_pre], [n.index for n in topo.hosts if n.c >= n_pre]


@LAYOUTS.register("alternate-servers", order=1)
def _alternate_servers(pl, topo: FatTree, seed: int):
    f, G = pl.prefill_fraction, topo.gpus_per_server
    is_pre = [int((i + 1) * f) > int(i * f) for i in range(topo.n_servers)]
    return (
        [n.index for n in topo.hosts if is_pre[n.index // G]],
        [n.index for n in topo.hosts if not is_pre[n.index // G]],
    )


@LAYOUTS.register("split-pods", order=2)
def _split_pods(pl, topo: FatTree, seed: int):
    n_pods = round(topo.k * pl.prefill_fraction)
    if not 0 < n_pods < topo.k:
        raise ValueError("layout 'split-pods' needs 0 < round(k * prefill_fraction) < k")
    return [n.index for n in topo.hosts if n.pod < n_pods], [n.index for n in topo.hosts if n.pod >= n_pods]


@LAYOUTS.register("random", order=3)
def _random(pl, topo: FatTree, seed: int):
    idx = list(range(topo.n_hosts))
    random.Random(seed).shuffle(idx)
    n_pre = max(1, min(topo.n_hosts - 1, round(topo.n_hosts * pl.prefill_fraction)))
    return sorted(idx[:n_pre]), sorted(idx[n_pre:])


@LAYOUTS.register("explicit", order=4)
def _explicit(pl, topo: FatTree, seed: int):
    pre, dec = expand_hosts(topo, pl.prefill), expand_hosts(topo, pl.decode)
    both = set(pre) & set(dec)
    if both:
        raise ValueError(f"hosts in both prefill and decode: {', '.join(topo.hosts[h].name for h in sorted(both))}")
    return pre, dec


def placement(pl, topo: FatTree, seed: int) -> tuple[list[int], list[int]]:
    """(prefill hosts, decode hosts) for a placement section (`seed`: the experiment's, for 'random')."""
    pre, dec = LAYOUTS.get(pl.layout)(pl, topo, seed)
    if not pre or not dec:
        raise ValueError("placement leaves no prefill or no decode instance")
    return pre, dec


def background_pairs(topo: FatTree, bg) -> list[tuple[int, int]]:
    """The (src, dst) host pairs of one background entry: src[i] -> dst[i mod len(dst)]."""
    srcs, dsts = expand_hosts(topo, bg.src), expand_hosts(topo, bg.dst)
    pairs = []
    for i, s in enumerate(srcs):
        d = dsts[i % len(dsts)]
        if d != s:
            pairs.append((s, d))
    if not pairs:
        raise ValueError("background entry yields no (src, dst) pair with distinct hosts")
    return pairs

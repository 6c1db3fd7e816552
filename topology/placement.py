"""Cluster assembly from an experiment: topology, role placement and host selectors.

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

from netkv.topology import FatTree, LinkRates


def build_topology(exp) -> FatTree:
    t = exp.topology
    rates = LinkRates(t.gpu_link_gbps, t.server_link_gbps, t.edge_link_gbps, t.core_link_gbps,
                      t.oversubscription)
    return FatTree(t.k, t.gpus_per_server, rates)


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


def placement(exp, topo: FatTree) -> tuple[list[int], list[int]]:
    """(prefill hosts, decode hosts) for the experiment's layout."""
    pl = exp.placement
    f = pl.prefill_fraction
    G = topo.gpus_per_server
    hosts = topo.hosts
    if pl.layout == "explicit":
        pre = expand_hosts(topo, pl.prefill)
        dec = expand_hosts(topo, pl.decode)
        both = set(pre) & set(dec)
        if both:
            raise ValueError(f"hosts in both prefill and decode: {', '.join(hosts[h].name for h in sorted(both))}")
    elif pl.layout == "mixed-server":
        n_pre = round(G * f)
        if not 0 < n_pre < G:
            raise ValueError(f"layout 'mixed-server' needs 0 < round(gpus_per_server * prefill_fraction) < {G}")
        pre = [n.index for n in hosts if n.c < n_pre]
        dec = [n.index for n in hosts if n.c >= n_pre]
    elif pl.layout == "alternate-servers":
        is_pre = [int((i + 1) * f) > int(i * f) for i in range(topo.n_servers)]
        pre = [n.index for n in hosts if is_pre[n.index // G]]
        dec = [n.index for n in hosts if not is_pre[n.index // G]]
    elif pl.layout == "split-pods":
        n_pods = round(topo.k * f)
        if not 0 < n_pods < topo.k:
            raise ValueError("layout 'split-pods' needs 0 < round(k * prefill_fraction) < k")
        pre = [n.index for n in hosts if n.pod < n_pods]
        dec = [n.index for n in hosts if n.pod >= n_pods]
    elif pl.layout == "random":
        idx = list(range(topo.n_hosts))
        random.Random(exp.seed).shuffle(idx)
        n_pre = max(1, min(topo.n_hosts - 1, round(topo.n_hosts * f)))
        pre, dec = sorted(idx[:n_pre]), sorted(idx[n_pre:])
    else:  # validated earlier
        raise ValueError(f"unknown layout {pl.layout}")
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

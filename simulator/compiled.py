"""Which flow network and prefix caches a simulation runs: the compiled ones when built, else Python.

simulator/_fastnet.pyx and netkv/_fastcache.pyx repeat simulator/network.py and netkv/kvcache.py
operation for operation over C++ containers (about 1.3x for a whole `netkv simulate`), so either
pair gives identical results (tests/test_compiled_core.py). scripts/setup.sh builds them
(scripts/build_ext.py). The Python modules stay the reference: the emulated testbed's scheduler and
agents use them, and so does a simulation when the compiled ones are not built, when the cluster
has more than 64 prefill or decode instances, when a block id does not fit 64 signed bits, or when
NETKV_PURE_PYTHON=1 is set.
"""

from __future__ import annotations

import os

from netkv.kvcache import BlockIndex, PrefixCache, SlotMasks
from netkv.simulator.network import FlowNetwork, FlowOps

try:
    from netkv import _fastcache
    from netkv.simulator import _fastnet
except ImportError:  # not built (an install without scripts/setup.sh): the reference runs
    _fastcache = _fastnet = None  # type: ignore[assignment]

if _fastcache is not None and _fastnet is not None:

    class CompiledFlowNetwork(_fastnet.FlowNetworkCore, FlowOps):
        """The compiled flow network, with the methods it shares with the reference."""

    class CompiledBlockIndex(_fastcache.BlockIndexCore, SlotMasks):
        """The compiled slot index, with the per-slot arrays it shares with the reference."""

        def __init__(self, n_slots: int):
            _fastcache.BlockIndexCore.__init__(self, n_slots)
            self._init_masks(n_slots)

    CompiledPrefixCache = _fastcache.PrefixCache

INT64 = (-(2**63), 2**63 - 1)


def built() -> bool:
    """The compiled modules are importable."""
    return _fastnet is not None and _fastcache is not None


def wanted() -> bool:
    """Built, and not turned off by NETKV_PURE_PYTHON=1."""
    return built() and os.environ.get("NETKV_PURE_PYTHON", "") in ("", "0")


def flow_network() -> type:
    """The FlowNetwork class to simulate with."""
    return CompiledFlowNetwork if wanted() else FlowNetwork


def kv_caches(n_slots: int, requests) -> tuple[type, type]:
    """(PrefixCache, BlockIndex) classes for a cluster of at most `n_slots` instances per role
    serving `requests` (their block ids decide whether the compiled ones can key them)."""
    if not wanted() or n_slots > _fastcache.MAX_SLOTS:
        return PrefixCache, BlockIndex
    ids = [r.hash_ids for r in requests if r.hash_ids]
    if ids and (min(map(min, ids)) < INT64[0] or max(map(max, ids)) > INT64[1]):
        return PrefixCache, BlockIndex
    return CompiledPrefixCache, CompiledBlockIndex


def label(net_cls: type, cache_cls: type) -> str:
    """What ran, for a run's records and its log line."""
    net = "compiled" if net_cls is not FlowNetwork else "python"
    caches = "compiled" if cache_cls is not PrefixCache else "python"
    return f"{net} flow network and caches" if net == caches else f"{net} flow network, {caches} caches"

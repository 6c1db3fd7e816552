"""Shared fixtures and builders: small experiments from dicts, a k=4 fat-tree with its compute model,
requests, views and snapshots, paths to shipped and shared data."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from netkv import DATA_DIR
from netkv.compute import MODEL_PRESETS, ComputeModel, load_profile
from netkv.config import from_dict
from netkv.scheduler.cluster import Cluster
from netkv.scheduler.oracle import Snapshot
from netkv.scheduler.view import ClusterView
from netkv.topology import FatTree, Routing
from netkv.trace import Request

REPO = Path(__file__).resolve().parent.parent
# ../shared (the workspace's shared data) if this checkout sits beside it; NETKV_SHARED overrides
SHARED = next(
    (
        p
        for p in (Path(os.environ.get("NETKV_SHARED", REPO.parent / "shared")), Path("/work/shared"))
        if (p / "data").exists()
    ),
    REPO.parent / "shared",
)

SMALL = {
    "name": "t",
    "seed": 3,
    "topology": {"k": 2, "gpus_per_server": 4, "server_link_gbps": 100, "edge_link_gbps": 100, "core_link_gbps": 100},
    "placement": {"layout": "mixed-server"},
    "trace": {"requests": 30, "rate_multiplier": 4.0},
    "telemetry": {"poll_interval_s": 0.1},
}


# ---- a k=4 x 4 fat-tree, the Llama-3-8B H200 compute model and small builders (policies, oracles, view)
TOPO = FatTree(4, 4, hop_latency_s=0.0, mtu_bytes=0)  # bandwidth arithmetic only: no hop latency
ROUTING = Routing(TOPO)
MODEL = MODEL_PRESETS["llama3-8b"]
COMPUTE = ComputeModel(load_profile(DATA_DIR / "h200-llama3-hf-eager.csv", MODEL.name), MODEL)

P = TOPO.host_index["h0_0_0_0"]
FAR = TOPO.host_index["h2_1_1_3"]  # other pod
NEAR = TOPO.host_index["h0_1_0_3"]  # same pod, other edge


def req(n_tokens=16384, ids=None):
    ids = ids if ids is not None else tuple(range(1000, 1000 + math.ceil(n_tokens / 512)))
    return Request(0, 0.0, n_tokens, 100, tuple(ids))


def view(decode, prefill=(P,)):
    return ClusterView(list(prefill), list(decode), COMPUTE)


def congested_snapshot(src, dst, util=1.0, spare=None):
    """Links of src->dst's path loaded to `util` (except those on the path src->spare)."""
    rates = np.zeros(TOPO.n_links)
    keep = set(ROUTING.path(src, spare)) if spare is not None else set()
    for lk in ROUTING.path(src, dst):
        if lk not in keep:
            rates[lk] = util * TOPO.capacity_bps[lk]
    return Snapshot(10.0, rates, version=1)


# a k = 2 x 4 experiment small enough for root tests that emulate it end to end
TINY_EXPERIMENT = """
name = "tiny"
seed = 5
policies = {policies}
[topology]
k = 2
gpus_per_server = 4
server_link_gbps = 200
edge_link_gbps = 200
core_link_gbps = 200
[trace]
requests = {requests}
rate_multiplier = {rate}
[telemetry]
poll_interval_s = 0.5
[emulation]
bandwidth_scale = 4000
time_dilation = 1.0
drain_timeout_s = 120
"""

# a request's timeline, in the order its events must happen (simulated and emulated alike)
TIMELINE = ("arrival_s", "t_prefill_start", "t_prefill_end", "t_transfer_end", "t_first_token", "t_done")


def make_exp(**overrides):
    """An Experiment from SMALL with top-level tables merged (one level deep), checked as every
    entry point checks it (its cluster is built: names, hosts, ID-scheme limits)."""
    raw = copy.deepcopy(SMALL)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    exp = from_dict(raw, None)
    Cluster.build(exp)
    return exp


@pytest.fixture
def small_exp():
    return make_exp()


@pytest.fixture
def data_dir():
    return DATA_DIR


def _root_missing() -> list[str]:
    import shutil

    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root")
    for tool in ("mn", "ovs-vsctl", "mnexec", "iperf3", "tcpdump"):
        if shutil.which(tool) is None:
            reasons.append(f"{tool} missing")
    return reasons


def pytest_runtest_setup(item):
    """Tests marked `root` need root, Mininet and Open vSwitch. Without them they are skipped with a
    reason locally, but fail when NETKV_REQUIRE_ROOT_TESTS=1 (scripts/test.sh sets it as root), so
    CI never passes them silently."""
    import shutil

    if "iperf3" in item.keywords and "root" not in item.keywords:
        reasons = [] if shutil.which("iperf3") else ["iperf3 missing (scripts/setup.sh installs it)"]
    elif "root" in item.keywords:
        reasons = _root_missing()
    else:
        return
    if not reasons:
        return
    msg = ("needs root, Mininet and Open vSwitch: " if "root" in item.keywords else "needs: ") + ", ".join(reasons)
    if os.environ.get("NETKV_REQUIRE_ROOT_TESTS") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def write_trace(path: Path, arrivals_s, input_tokens: int = 8192, output_tokens: int = 16) -> Path:
    """A Mooncake-format JSONL trace with the given arrivals and no shared prefixes (unique hash_ids)."""
    import json
    import math

    nb = math.ceil(input_tokens / 512)
    lines = [
        json.dumps(
            {
                "timestamp": round(t * 1000),
                "input_length": input_tokens,
                "output_length": output_tokens,
                "hash_ids": list(range(i * nb, (i + 1) * nb)),
            }
        )
        for i, t in enumerate(arrivals_s)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# Two decode candidates of equal static cost from one prefill instance (both across pods, same link
# rates): D1 = h1_0_0_0 and D2 = h1_0_0_1. Background entries can congest D1's downlink alone.
STEER_P, STEER_D1, STEER_D2 = "h0_0_0_0", "h1_0_0_0", "h1_0_0_1"
ELEPHANT_TO_D1 = {"src": ["h1_0_0_2"], "dst": [STEER_D1]}


def steer_exp(tmp_path: Path, background=(), oracle: str = "counters", n: int = 14, **extra):
    """k=2 x 4 GPUs, every link 200 Gbit/s, one prefill and the two candidates above, a request a
    second from t = 3 s (8,192 tokens each, nothing shared)."""
    trace = write_trace(tmp_path / "steer.jsonl", [3.0 + i for i in range(n)])
    raw = {
        "name": "steer",
        "seed": 1,
        "policies": ["netkv"],
        "topology": {
            "k": 2,
            "gpus_per_server": 4,
            "gpu_link_gbps": 200,
            "server_link_gbps": 200,
            "edge_link_gbps": 200,
            "core_link_gbps": 200,
        },
        "placement": {"layout": "explicit", "prefill": [STEER_P], "decode": [STEER_D1, STEER_D2]},
        "trace": {"path": str(trace)},
        "telemetry": {"oracle": oracle, "poll_interval_s": 0.5},
        "background": [dict(b) for b in background],
    }
    for k, v in extra.items():
        raw.setdefault(k, {}).update(v) if isinstance(v, dict) else raw.__setitem__(k, v)
    return raw


def to_toml(raw: dict) -> str:
    """TOML for the flat experiment dicts the tests build (scalars, lists, tables, arrays of tables)."""
    import json

    val = lambda v: ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)  # noqa: E731
    top = [
        f"{k} = {val(v)}"
        for k, v in raw.items()
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict)))
    ]
    out = ["\n".join(top)]
    for k, v in raw.items():
        if isinstance(v, dict):
            out.append(f"[{k}]\n" + "\n".join(f"{a} = {val(b)}" for a, b in v.items()))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out += [f"[[{k}]]\n" + "\n".join(f"{a} = {val(b)}" for a, b in e.items()) for e in v]
    return "\n\n".join(out) + "\n"


@pytest.fixture
def clean_machine():
    """For tests that build fabrics: start from a clean machine, and fail if the test left anything
    (bridges, veths, namespaces, processes, state) — removed in any case, so the next test starts clean."""
    from netkv.emulation import cleanup, pollidle

    cleanup.clean(verbose=False)
    yield
    left = cleanup.find_leftovers()
    # a fabric never stopped also leaves its CPU latency request held by this process
    left += [f"CPU latency request held ({p.device})" for p in pollidle.held_here()]
    for p in pollidle.held_here():
        p.release()
    cleanup.clean(verbose=False)
    assert left == [], f"the test left state behind: {left}"


class FakeWriter:
    """Stands for an agent's Unix socket: keeps what the service sends."""

    def __init__(self):
        self.sent = []

    def write(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    async def drain(self) -> None:
        pass

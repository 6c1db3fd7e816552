"""Shared fixtures: small experiments built from dicts, paths to shipped and shared data."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from netkv import DATA_DIR
from netkv.config import from_dict

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NETKV_SHARED", REPO.parent / "shared"))

SMALL = {
    "name": "t",
    "seed": 3,
    "topology": {"k": 2, "gpus_per_server": 4, "server_link_gbps": 100, "edge_link_gbps": 100,
                 "core_link_gbps": 100},
    "placement": {"layout": "mixed-server"},
    "trace": {"requests": 30, "rate_multiplier": 4.0},
    "telemetry": {"poll_interval_s": 0.1},
}


def make_exp(**overrides):
    """An Experiment from SMALL with top-level tables merged (one level deep)."""
    raw = copy.deepcopy(SMALL)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    return from_dict(raw, None)


@pytest.fixture
def small_exp():
    return make_exp()


@pytest.fixture
def data_dir():
    return DATA_DIR

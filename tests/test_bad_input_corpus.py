"""A generated corpus of bad inputs (hypothesis): experiment tables, `--set` overrides and trace lines.
Whatever they hold, loading either succeeds or fails with the project's own one-line error naming
the input — never another exception, never a hang."""

import copy
import dataclasses
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netkv.config import _SECTIONS, ConfigError, apply_overrides, from_dict
from netkv.scheduler.cluster import Cluster
from netkv.trace import TraceError, load_trace

from conftest import SMALL

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# any TOML-like value, the nasty ones included
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 3, 64, 66, 255, 1e-300, 1e300, 9000, 65536]),
    st.text(max_size=12),
    st.sampled_from(["", "h0_0_0_0", "h9_9_9_9", "pod:0", "pod:x", "all", "explicit", "netkv", "zigzag"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
# keys the experiment knows, and some it does not
SECTION_KEYS = [(name, f.name) for name, (cls, _) in _SECTIONS.items() for f in dataclasses.fields(cls)]
KEYS = st.one_of(st.sampled_from(SECTION_KEYS), st.tuples(st.sampled_from(list(_SECTIONS)), st.text(max_size=8)))
TOP = st.sampled_from(["name", "seed", "policies", "policy", "background", "bogus"])


def _one_line_config_error(e: ConfigError) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.startswith("<experiment>: ") and len(msg) < 600, msg


@SETTINGS
@given(st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=4), st.lists(st.tuples(TOP, VALUES), max_size=2))
def test_any_experiment_table_loads_or_fails_with_one_line_naming_the_key(changes, top):
    raw = copy.deepcopy(SMALL)
    for (section, key), value in changes:
        raw.setdefault(section, {})[key] = value
    for key, value in top:
        raw[key] = value
    try:
        exp = from_dict(raw, None)
        cluster = Cluster.build(exp)
    except ConfigError as e:
        _one_line_config_error(e)
        return
    # accepted: the values are what the types say, finite where numbers
    assert cluster.topo.n_hosts == exp.topology.k**3 // 4 * exp.topology.gpus_per_server
    for name in _SECTIONS:
        for f in dataclasses.fields(getattr(exp, name)):
            v = getattr(getattr(exp, name), f.name)
            assert not (isinstance(v, float) and not math.isfinite(v)), (name, f.name, v)


# a valid fault of each kind (k = 4), then up to two keys set to anything (known keys and others)
VALID_FAULTS = [
    {"kind": "link", "link": ["a0_0", "c0_0"], "at_s": 1.0, "down_s": 2.0, "times": 2, "every_s": 5.0},
    {"link": ["e0_0", "a0_0"], "at_s": 0.5},
    {"kind": "switch", "target": "c0_0", "at_s": 1.0, "down_s": 0.5},
    {"kind": "controller", "at_s": 2.0, "down_s": 1.0},
    {"kind": "scheduler", "at_s": 2.0, "down_s": 1.0, "times": 3, "every_s": 4.0},
    {"kind": "agent", "target": "h0_0_0_0", "at_s": 3.0},
]
FAULT_KEYS = ["kind", "link", "target", "at_s", "down_s", "times", "every_s", "bogus"]
FAULT = st.builds(
    lambda base, changes: {**base, **dict(changes)},
    st.sampled_from(VALID_FAULTS),
    st.lists(
        st.tuples(
            st.sampled_from(FAULT_KEYS),
            st.one_of(VALUES, st.sampled_from(["link", "switch", "agent", "c0_0", "h9_9_9_9", ["a0_0", "e1_0"]])),
        ),
        max_size=2,
    ),
)


@SETTINGS
@given(st.lists(FAULT, min_size=1, max_size=3))
def test_any_fault_table_loads_or_fails_with_one_line_naming_it(faults):
    raw = copy.deepcopy(SMALL)
    raw["topology"] = {**raw.get("topology", {}), "k": 4}  # aggregation switches with two uplinks
    raw["fault"] = faults
    try:
        cluster = Cluster.build(from_dict(raw, None))
    except ConfigError as e:
        _one_line_config_error(e)
        assert str(e).startswith("<experiment>: fault["), str(e)
        return
    for f, links in zip(cluster.exp.faults, cluster.faults, strict=True):
        assert (links is not None) == (f.kind == "link")  # a link fault knows its links
        assert f.kind != "agent" or f.down_s == math.inf  # an agent is never restarted
        assert f.kind not in ("switch", "controller", "scheduler") or math.isfinite(f.down_s)
        assert all(math.isfinite(t) and t >= 0 for t, _ in f.schedule())


@SETTINGS
@given(st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_any_set_override_applies_or_fails_naming_it(overrides):
    raw = copy.deepcopy(SMALL)
    try:
        doc = apply_overrides(raw, overrides, "f.toml")
        Cluster.build(from_dict(doc, None))
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and (msg.startswith("--set ") or msg.startswith("<experiment>: ")), msg


LINE = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": VALUES,
        "input_length": VALUES,
        "output_length": VALUES,
        "hash_ids": st.one_of(VALUES, st.lists(st.integers(), max_size=5)),
        "extra": VALUES,
    },
)


@SETTINGS
@given(st.lists(st.one_of(LINE, SCALARS), min_size=1, max_size=4))
def test_any_trace_line_loads_or_fails_naming_the_file_and_line(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("trace") / "t.jsonl"
    good = {"timestamp": 0, "input_length": 600, "output_length": 10, "hash_ids": [1, 2]}
    p.write_text(json.dumps(good) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    try:
        reqs = load_trace(p)
    except TraceError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{p}:"), msg
        return
    for r in reqs:
        assert 1 <= r.input_tokens <= 10_000_000 and 1 <= r.output_tokens <= 1_000_000
        assert 0 <= r.arrival_s <= 365 * 24 * 3600 and len(r.hash_ids) == math.ceil(r.input_tokens / 512)

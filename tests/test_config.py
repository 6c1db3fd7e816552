"""Experiment files: shipped files load; errors name the key."""

from pathlib import Path

import pytest

from netkv.config import ConfigError, load

from conftest import REPO, make_exp


@pytest.mark.parametrize("f", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_experiments_load(f):
    exp = load(f)
    assert exp.policies


@pytest.mark.parametrize("override,key", [
    ({"topology": {"k": 3}}, "topology.k"),
    ({"topology": {"kk": 3}}, "topology.kk"),
    ({"topology": {"edge_link_gbps": -1}}, "topology.edge_link_gbps"),
    ({"topology": {"routing": "zigzag"}}, "topology.routing"),
    ({"trace": {"rate_multiplier": 0}}, "trace.rate_multiplier"),
    ({"trace": {"requests": "ten"}}, "trace.requests"),
    ({"placement": {"layout": "zigzag"}}, "placement.layout"),
    ({"model": {"preset": "gpt5"}}, "model.preset"),
    ({"policies": ["netkv", "magic"]}, "policies"),
    ({"policy": {"cache_load_aware": {"overlap_wait": 2}}}, "policy.cache_load_aware"),
    ({"telemetry": {"oracle": "psychic"}}, "telemetry.oracle"),
    ({"background": [{"src": ["h9_0_0_0"], "dst": ["h0_0_0_0"]}]}, "background[0].src"),
    ({"emulation": {"mtu": 100000}}, "emulation.mtu"),
    ({"bogus": 1}, "bogus"),
])
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        make_exp(**override)
    assert f": {key}:" in str(e.value) or f": {key} " in str(e.value) or str(e.value).split(": ")[1].startswith(key)


def test_bad_toml_names_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("name = \n")
    with pytest.raises(ConfigError, match=str(p)):
        load(p)


def test_custom_model_needs_all_fields():
    with pytest.raises(ConfigError, match="model.head_dim"):
        make_exp(model={"layers": 4, "kv_heads": 2, "dtype_bytes": 2, "params_b": 1.0})


def test_builtin_paths_resolve(small_exp):
    assert small_exp.resolve("builtin:h200-llama3-hf-eager.csv").exists()


def test_set_overrides_apply_and_are_validated(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[topology]\nk = 4\n")
    exp = load(p, ["emulation.bandwidth_scale=16000", "trace.requests=5", "placement.layout=split-pods"])
    assert exp.emulation.bandwidth_scale == 16000.0 and exp.trace.requests == 5
    assert exp.placement.layout == "split-pods" and exp.overrides[0].startswith("emulation.")
    with pytest.raises(ConfigError, match="topology.k"):
        load(p, ["topology.k=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(p, ["nonsense"])

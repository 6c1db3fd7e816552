"""Experiment files: shipped files load; errors name the key."""

from pathlib import Path

import pytest

from netkv.config import ConfigError, load
from netkv.scheduler.cluster import load as load_cluster

from conftest import REPO, make_exp


@pytest.mark.parametrize("f", sorted((REPO / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_experiments_load(f):
    cluster = load_cluster(f)
    assert cluster.exp.policies and cluster.prefill_hosts and cluster.decode_hosts


@pytest.mark.parametrize(
    "override,key",
    [
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
    ],
)
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


def test_the_documented_defaults_are_the_defaults():
    """docs/experiment-files.md shows every default; the code must agree with it, key by key."""
    import re
    import tomllib

    from netkv.config import _SECTIONS, from_dict
    from netkv.scheduler.cluster import Cluster
    from netkv.scheduler.policies import registry

    doc = (REPO / "docs/experiment-files.md").read_text()
    shown = tomllib.loads(re.search(r"```toml\n(.*?)```", doc, re.S).group(1))
    exp = from_dict({}, None)
    assert exp.policies == []  # the default: every registered policy, filled in when the cluster is built
    Cluster.build(exp)
    assert exp.seed == shown["seed"] and exp.policies == shown["policies"] == registry.names()
    assert exp.name == "experiment" and exp.background == []
    checked = 0
    for section in _SECTIONS:
        for key, value in shown[section].items():
            assert getattr(getattr(exp, section), key) == value, f"{section}.{key}"
            checked += 1
    assert checked >= 30
    for pol, params in shown["policy"].items():
        assert registry.get(pol).defaults == params, pol
    # keys the page leaves commented out have no default
    assert exp.trace.duration_s is None and exp.trace.requests is None
    assert exp.compute.decode_kv_blocks is None and exp.compute.prefill_cache_blocks is None
    assert exp.compute.profile_model is None and exp.placement.prefill == exp.placement.decode == []


BAD = [
    # (override, the whole message after "<experiment>: ")
    ({"name": ""}, "name: must be a non-empty string without '/'"),
    ({"name": "a/b"}, "name: must be a non-empty string without '/'"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"seed": True}, "seed: expected an integer, got True"),
    ({"policies": []}, "policies: expected a non-empty list of policy names"),
    ({"policies": "netkv"}, "policies: expected a non-empty list of policy names"),
    ({"policies": ["netkv", "random", "netkv"]}, "policies: 'netkv' listed twice"),
    ({"policy": []}, "policy: expected a table of per-policy tables"),
    (
        {"policy": {"magic": {}}},
        "policy.magic: unknown policy (known: round_robin, random, least_loaded, cache_load_aware, netkv, netkv_tbt, netkv_joint)",
    ),
    (
        {"policy": {"netkv": {"transfer_weight": "x"}}},
        "policy.netkv: parameter 'transfer_weight' must be a number, got 'x'",
    ),
    ({"topology": []}, "topology: expected a table"),
    ({"topology": {"k": 2.0}}, "topology.k: expected an integer, got 2.0"),
    ({"topology": {"k": 0}}, "topology.k: must be an even integer >= 2, got 0"),
    ({"topology": {"k": 5}}, "topology.k: must be an even integer >= 2, got 5"),
    ({"topology": {"gpus_per_server": 0}}, "topology.gpus_per_server: must be > 0, got 0"),
    ({"topology": {"gpu_link_gbps": 0}}, "topology.gpu_link_gbps: must be > 0, got 0.0"),
    ({"topology": {"server_link_gbps": -5}}, "topology.server_link_gbps: must be > 0, got -5.0"),
    ({"topology": {"core_link_gbps": "fast"}}, "topology.core_link_gbps: expected a number, got 'fast'"),
    ({"topology": {"core_link_gbps": float("nan")}}, "topology.core_link_gbps: expected a number, got nan"),
    ({"topology": {"oversubscription": 0.5}}, "topology.oversubscription: must be >= 1, got 0.5"),
    (
        {"topology": {"routing": "zigzag"}},
        "topology.routing: unknown routing strategy 'zigzag' (known: sum-mod, dst-mod, hash)",
    ),
    ({"topology": {"routing": 3}}, "topology.routing: expected a string, got 3"),
    ({"placement": {"prefill_fraction": 1.0}}, "placement.prefill_fraction: must be in (0, 1), got 1.0"),
    ({"placement": {"prefill_fraction": 0}}, "placement.prefill_fraction: must be in (0, 1), got 0.0"),
    (
        {"placement": {"layout": "explicit", "prefill": ["h0_0_0_0"]}},
        "placement: layout 'explicit' needs non-empty 'prefill' and 'decode' host lists",
    ),
    (
        {"placement": {"prefill": ["h0_0_0_0"]}},
        "placement: 'prefill'/'decode' host lists are only used with layout = 'explicit'",
    ),
    (
        {"placement": {"layout": "explicit", "prefill": "h0_0_0_0", "decode": ["h0_0_0_1"]}},
        "placement.prefill: expected a list of strings, got 'h0_0_0_0'",
    ),
    (
        {"model": {"preset": "llama3-8b", "layers": 4}},
        "model: give either 'preset' or layers/kv_heads/head_dim/dtype_bytes, not both",
    ),
    (
        {"model": {"layers": 4, "kv_heads": 2, "head_dim": 64, "dtype_bytes": 2}},
        "model.params_b: required when no preset is given",
    ),
    (
        {"model": {"layers": 4, "kv_heads": 0, "head_dim": 64, "dtype_bytes": 2, "params_b": 1.0}},
        "model.kv_heads: must be > 0, got 0",
    ),
    ({"model": {"preset": "gpt5"}}, "model.preset: unknown preset 'gpt5' (known: llama3-8b, llama3-70b)"),
    ({"compute": {"tensor_parallel": 0}}, "compute.tensor_parallel: must be > 0, got 0"),
    ({"compute": {"gpu_memory_gb": 0}}, "compute.gpu_memory_gb: must be > 0, got 0.0"),
    ({"compute": {"max_batch": 0}}, "compute.max_batch: must be > 0, got 0"),
    ({"compute": {"decode_kv_blocks": 0}}, "compute.decode_kv_blocks: must be > 0, got 0"),
    ({"compute": {"prefill_cache_blocks": -1}}, "compute.prefill_cache_blocks: must be >= 0, got -1"),
    ({"compute": {"memory_utilization": 0}}, "compute.memory_utilization: must be in (0, 1], got 0.0"),
    ({"compute": {"memory_utilization": 1.01}}, "compute.memory_utilization: must be in (0, 1], got 1.01"),
    ({"trace": {"start_s": -1}}, "trace.start_s: must be >= 0, got -1.0"),
    ({"trace": {"duration_s": 0}}, "trace.duration_s: must be > 0, got 0.0"),
    ({"trace": {"requests": 0}}, "trace.requests: must be > 0, got 0"),
    ({"trace": {"rate_multiplier": -2}}, "trace.rate_multiplier: must be > 0, got -2.0"),
    ({"slo": {"ttft_s": 0}}, "slo.ttft_s: must be > 0, got 0.0"),
    ({"slo": {"tbt_s": -0.1}}, "slo.tbt_s: must be > 0, got -0.1"),
    (
        {"telemetry": {"oracle": "psychic"}},
        "telemetry.oracle: unknown oracle 'psychic' (known: counters, static, fair_share, probe)",
    ),
    ({"telemetry": {"poll_interval_s": 0}}, "telemetry.poll_interval_s: must be >= 0.001 s, got 0"),
    ({"telemetry": {"poll_interval_s": 1e-9}}, "telemetry.poll_interval_s: must be >= 0.001 s, got 1e-09"),
    ({"telemetry": {"publish_delay_s": -0.5}}, "telemetry.publish_delay_s: must be >= 0, got -0.5"),
    ({"telemetry": {"floor_fraction": 0}}, "telemetry.floor_fraction: must be in (0, 1), got 0.0"),
    ({"telemetry": {"floor_fraction": 1}}, "telemetry.floor_fraction: must be in (0, 1), got 1.0"),
    ({"telemetry": {"probe_packets": 1}}, "telemetry.probe_packets: must be an integer in [2, 1000] (a train), got 1"),
    (
        {"telemetry": {"probe_packet_bytes": 50}},
        "telemetry.probe_packet_bytes: must be 0 (the MTU) or in [100, 9000] (an IPv4 packet), got 50",
    ),
    ({"telemetry": {"probe_interval_s": 0.0001}}, "telemetry.probe_interval_s: must be >= 0.001 s, got 0.0001"),
    ({"telemetry": {"count_committed": 1}}, "telemetry.count_committed: expected true/false, got 1"),
    ({"emulation": {"poll_idle": "yes"}}, "emulation.poll_idle: expected true/false, got 'yes'"),
    ({"emulation": {"bandwidth_scale": 0}}, "emulation.bandwidth_scale: must be > 0, got 0.0"),
    ({"emulation": {"time_dilation": 0}}, "emulation.time_dilation: must be > 0, got 0.0"),
    ({"emulation": {"queue_ms": 0}}, "emulation.queue_ms: must be > 0, got 0.0"),
    ({"emulation": {"max_link_mbps": -1}}, "emulation.max_link_mbps: must be > 0, got -1.0"),
    (
        {"emulation": {"qdisc": "sfq"}},
        "emulation.qdisc: must be 'bfifo' or 'pfifo' (this kernel has no sfq/fq_codel), got 'sfq'",
    ),
    ({"emulation": {"fair_queue_buckets": 3}}, "emulation.fair_queue_buckets: must be 0 or a power of two up to 256"),
    ({"emulation": {"fair_queue_buckets": 512}}, "emulation.fair_queue_buckets: must be 0 or a power of two up to 256"),
    ({"emulation": {"ovs_daemons": "pod"}}, "emulation.ovs_daemons: must be 'switch' or 'shared', got 'pod'"),
    (
        {"emulation": {"servers": 1, "ovs_daemons": "shared"}},
        "emulation.servers: must be 0 (this machine) or at least 2, got 1",
    ),
    (
        {"emulation": {"servers": 2}},
        "emulation.servers: needs emulation.ovs_daemons = 'shared' (one Open vSwitch per server)",
    ),
    (
        {"emulation": {"servers": 2, "ovs_daemons": "shared", "fair_queue_buckets": 0}},
        "emulation.servers: needs emulation.fair_queue_buckets > 0 (they shape the cluster's links)",
    ),
    (
        {"emulation": {"server_hosts": ["10.0.0.2"], "cluster_address": "10.0.0.1"}},
        "emulation.server_hosts: needs emulation.ovs_daemons = 'shared' (one Open vSwitch per server)",
    ),
    (
        {"emulation": {"server_hosts": ["-oProxyCommand=x"], "cluster_address": "10.0.0.1", "ovs_daemons": "shared"}},
        "emulation.server_hosts[0]: expected an address or a host name, got '-oProxyCommand=x'",
    ),
    (
        {"emulation": {"server_hosts": ["a", "a"], "cluster_address": "10.0.0.1", "ovs_daemons": "shared"}},
        "emulation.server_hosts: a machine is listed twice",
    ),
    (
        {"emulation": {"server_hosts": ["vm1", "vm2"], "ovs_daemons": "shared"}},
        "emulation.cluster_address: expected this machine's IP address on the servers' network, got ''",
    ),
    (
        {"emulation": {"server_hosts": ["vm1"], "servers": 2, "cluster_address": "10.0.0.1", "ovs_daemons": "shared"}},
        "emulation.server_hosts: give emulation.servers (stand-ins) or server_hosts (machines), not both",
    ),
    (
        {"emulation": {"server_hosts": ["vm1"], "cluster_address": "10.0.0.1", "ssh_config": "/nonexistent/cfg"}},
        "emulation.ssh_config: no such file: /nonexistent/cfg",
    ),
    (
        {"emulation": {"cluster_address": "10.0.0.1"}},
        "emulation.cluster_address: only means something with emulation.server_hosts",
    ),
    (
        {"emulation": {"tcp_congestion_control": "vegas"}},
        "emulation.tcp_congestion_control: must be cubic, reno or bbr",
    ),
    ({"emulation": {"drain_timeout_s": 0}}, "emulation.drain_timeout_s: must be > 0, got 0.0"),
    ({"emulation": {"mtu": 575}}, "emulation.mtu: must be within 576..9000, got 575"),
    ({"emulation": {"mtu": 9001}}, "emulation.mtu: must be within 576..9000, got 9001"),
    ({"background": {"src": "h0_0_0_0"}}, "background: expected an array of tables ([[background]])"),
    ({"background": ["x"]}, "background[0]: expected a table"),
    ({"background": [{"src": ["h0_0_0_0"]}]}, "background[0].dst: required"),
    (
        {"background": [{"src": [], "dst": ["h0_0_0_1"]}]},
        "background[0].src: expected a host name, a selector or a list of them",
    ),
    (
        {"background": [{"src": ["h0_0_0_0"], "dst": [3]}]},
        "background[0].dst: expected a host name, a selector or a list of them",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "speed": 1}]},
        "background[0].speed: unknown key (known: src, dst, start_s, on_s, off_s, rate_gbps)",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "on_s": "1"}]},
        "background[0].on_s: expected a number, got '1'",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "on_s": True}]},
        "background[0].on_s: expected a number, got True",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "start_s": -1}]},
        "background[0].start_s: must be >= 0, got -1.0",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "on_s": 0}]},
        "background[0].on_s: must be >= 0.001 s, got 0",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "on_s": 1e-9}]},
        "background[0].on_s: must be >= 0.001 s, got 1e-09",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "off_s": 1e-4}]},
        "background[0].off_s: must be >= 0.001 s, got 0.0001",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "off_s": -1}]},
        "background[0].off_s: must be >= 0, got -1.0",
    ),
    (
        {"background": [{"src": "h0_0_0_0", "dst": "h0_0_0_1", "rate_gbps": 0}]},
        "background[0].rate_gbps: must be > 0, got 0.0",
    ),
]


@pytest.mark.parametrize("override,message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_o, m) in enumerate(BAD)])
def test_each_rule_rejects_with_its_message(override, message):
    with pytest.raises(ConfigError) as e:
        make_exp(**override)
    assert str(e.value) == f"<experiment>: {message}"


def test_values_on_the_edge_of_each_rule_are_accepted():
    exp = make_exp(
        topology={"k": 2, "oversubscription": 1.0},
        compute={"memory_utilization": 1.0, "prefill_cache_blocks": 0},
        trace={"start_s": 0.0},
        telemetry={"publish_delay_s": 0.0, "floor_fraction": 0.999},
        emulation={
            "mtu": 576,
            "fair_queue_buckets": 0,
            "qdisc": "pfifo",
            "tcp_congestion_control": "bbr",
            "ovs_daemons": "shared",
        },
        background=[{"src": "h0_0_0_0", "dst": "h0_0_0_1", "off_s": 0, "start_s": 0, "on_s": 2, "rate_gbps": 5}],
    )
    assert exp.emulation.mtu == 576 and exp.telemetry.floor_fraction == 0.999
    bg = exp.background[0]
    assert (bg.src, bg.dst, bg.on_s, bg.off_s, bg.rate_gbps) == (["h0_0_0_0"], ["h0_0_0_1"], 2.0, 0.0, 5.0)
    assert isinstance(bg.on_s, float) and isinstance(exp.topology.core_link_gbps, float)
    assert make_exp(emulation={"mtu": 9000, "fair_queue_buckets": 256}).emulation.fair_queue_buckets == 256
    custom = make_exp(model={"layers": 4, "kv_heads": 2, "head_dim": 64, "dtype_bytes": 2, "params_b": 1.0})
    assert custom.model.preset is None and custom.model.layers == 4
    assert make_exp(name="x", seed=0).name == "x"


def test_emulation_scales_bytes_by_dilation_over_bandwidth():
    exp = make_exp(emulation={"bandwidth_scale": 4000, "time_dilation": 10})
    assert exp.emulation.byte_scale == pytest.approx(10 / 4000)


def test_paths_resolve_relative_to_the_file(tmp_path):
    p = tmp_path / "sub" / "x.toml"
    p.parent.mkdir()
    p.write_text("[trace]\nrequests = 3\n")
    exp = load(p)
    assert exp.name == "x" and exp.path == p
    assert exp.resolve("t.jsonl") == tmp_path / "sub" / "t.jsonl"
    assert exp.resolve("/abs/t.jsonl") == Path("/abs/t.jsonl")
    assert exp.resolve("builtin:x.csv").parent.name == "data"
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_set_overrides_reach_into_tables_and_take_bare_words(tmp_path):
    from netkv.config import apply_overrides

    raw = apply_overrides(
        {"trace": {"requests": 3}},
        ["telemetry.oracle=static", "trace.rate_multiplier=2", "seed=5", "emulation.layerwise=true"],
        "f",
    )
    assert raw == {
        "trace": {"requests": 3, "rate_multiplier": 2},
        "telemetry": {"oracle": "static"},
        "seed": 5,
        "emulation": {"layerwise": True},
    }
    with pytest.raises(ConfigError, match=r"--set trace.requests.x=1: 'requests' is not a table in f"):
        apply_overrides({"trace": {"requests": 3}}, ["trace.requests.x=1"], "f")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["=5"], "f")


def test_messages_that_list_what_is_known(tmp_path):
    from netkv.config import _SECTIONS  # noqa: F401

    cases = [
        (
            {"topology": {"kk": 3}},
            "topology.kk: unknown key (known: k, gpus_per_server, gpu_link_gbps, "
            "server_link_gbps, edge_link_gbps, core_link_gbps, oversubscription, routing, hop_latency_us, mtu_bytes)",
        ),
        (
            {"bogus": 1},
            "bogus: unknown top-level key (known: background, compute, emulation, fault, model, name, placement, "
            "policies, policy, seed, slo, telemetry, topology, trace)",
        ),
        (
            {"policies": ["netkv", "magic"]},
            "policies: unknown policy 'magic' (known: round_robin, random, least_loaded, cache_load_aware, netkv, netkv_tbt, netkv_joint)",
        ),
        (
            {"placement": {"layout": "zigzag"}},
            "placement.layout: unknown layout 'zigzag' (known: mixed-server, "
            "alternate-servers, split-pods, random, explicit)",
        ),
        (
            {"placement": {"layout": "explicit", "prefill": ["h9_0_0_0"], "decode": ["h0_0_0_1"]}},
            "placement: unknown host 'h9_0_0_0' (hosts are named h<pod>_<edge>_<server>_<gpu>)",
        ),
        (
            {"background": [{"src": "h0_0_0_0", "dst": "h7_0_0_0"}]},
            "background[0].dst: unknown host 'h7_0_0_0' (hosts are named h<pod>_<edge>_<server>_<gpu>)",
        ),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError) as e:
            make_exp(**override)
        assert str(e.value) == f"<experiment>: {message}"
    p = tmp_path / "bad.toml"
    p.write_text("[topology]\nk = 3\n")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == f"{p}: topology.k: must be an even integer >= 2, got 3"
    with pytest.raises(ConfigError) as e:  # a name the models define: checked when the cluster is built
        load_cluster(p, ["topology.k=4", "placement.layout=zigzag"])
    # the value came from an override: the error names it, not the file
    assert str(e.value).startswith("--set placement.layout=zigzag: placement.layout: unknown layout 'zigzag'")


@pytest.mark.parametrize("buckets", [0, 2, 4, 8, 16, 32, 64, 128, 256])
def test_every_power_of_two_bucket_count_is_accepted(buckets):
    assert make_exp(emulation={"fair_queue_buckets": buckets}).emulation.fair_queue_buckets == buckets


@pytest.mark.parametrize("cc", ["cubic", "reno", "bbr"])
def test_every_congestion_control_is_accepted(cc):
    assert make_exp(emulation={"tcp_congestion_control": cc}).emulation.tcp_congestion_control == cc


def test_the_raw_document_and_values_with_equals_signs_are_kept(tmp_path):
    from netkv.config import apply_overrides

    exp = make_exp(trace={"requests": 7})
    assert exp.raw["trace"]["requests"] == 7 and exp.raw["topology"]["k"] == 2
    assert apply_overrides({}, ["name=a=b"], "f") == {"name": "a=b"}
    # a relative path without a file stays relative
    assert make_exp().resolve("x/t.jsonl") == Path("x/t.jsonl")


def test_a_toml_file_that_is_not_utf8(tmp_path):
    p = tmp_path / "latin.toml"
    p.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == f"{p}: not UTF-8 text (byte 11); TOML files are UTF-8"

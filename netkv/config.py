"""Experiment files (TOML): parsing, defaults and validation with errors that name the key.

The full schema, with every default, is documented in docs/experiment-files.md and exercised by
experiments/*.toml. Units: link rates in Gbit/s, times in seconds, all in real-cluster units; the
`[emulation]` table says how they map onto the emulated fabric.
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netkv import DATA_DIR

POLICY_NAMES = ("round_robin", "random", "least_loaded", "cache_load_aware", "netkv")
LAYOUTS = ("mixed-server", "alternate-servers", "split-pods", "random", "explicit")


class ConfigError(ValueError):
    """An experiment file is malformed; the message names the file and the key."""


# ------------------------------------------------------------------------------------------------
# sections


@dataclass
class TopologyCfg:
    k: int = 4
    gpus_per_server: int = 4
    gpu_link_gbps: float = 900.0
    server_link_gbps: float = 400.0
    edge_link_gbps: float = 400.0
    core_link_gbps: float = 400.0
    oversubscription: float = 1.0
    routing: str = "sum-mod"


@dataclass
class PlacementCfg:
    layout: str = "mixed-server"
    prefill_fraction: float = 0.5
    prefill: list[str] = field(default_factory=list)
    decode: list[str] = field(default_factory=list)


@dataclass
class ModelCfg:
    preset: str | None = "llama3-8b"
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    dtype_bytes: int | None = None
    params_b: float | None = None  # billions of parameters (weights memory)


@dataclass
class ComputeCfg:
    profile: str = "builtin:h200-llama3-hf-eager.csv"
    profile_model: str | None = None  # model name in the profile; default: the model preset
    tensor_parallel: int = 1
    gpu_memory_gb: float = 141.0
    memory_utilization: float = 0.9
    max_batch: int = 128
    decode_kv_blocks: int | None = None  # override the derived per-instance KV capacity
    prefill_cache_blocks: int | None = None  # override the prefill prefix-cache capacity


@dataclass
class TraceCfg:
    path: str = "builtin:mooncake-conversation.jsonl.gz"
    start_s: float = 0.0
    duration_s: float | None = None
    requests: int | None = None
    rate_multiplier: float = 1.0


@dataclass
class SloCfg:
    ttft_s: float = 30.0
    tbt_s: float = 0.2  # bound on the mean of a request's largest 10% inter-token gaps (Mooncake)


@dataclass
class TelemetryCfg:
    oracle: str = "counters"  # "counters" or "static"
    poll_interval_s: float = 1.0
    publish_delay_s: float = 0.0
    count_committed: bool = True
    floor_fraction: float = 0.25  # residual never below this share of capacity (see docs/oracle.md)


@dataclass
class BackgroundCfg:
    src: list[str]
    dst: list[str]
    start_s: float = 0.0
    on_s: float = math.inf
    off_s: float = 0.0
    rate_gbps: float | None = None  # None: elastic (TCP-like, takes its max-min share)


@dataclass
class EmulationCfg:
    bandwidth_scale: float = 4000.0  # emulated link rate = real rate / bandwidth_scale
    time_dilation: float = 10.0  # one real-cluster second lasts this many emulated seconds
    mtu: int = 9000
    queue_ms: float = 5.0  # per-link queue, as time at the emulated link rate
    max_link_mbps: float = 1000.0
    qdisc: str = "bfifo"  # leaf queue of the shaped links
    fair_queue_buckets: int = 64  # per-flow fair queueing at switch ports (0 = plain drop-tail)
    tcp_congestion_control: str = "cubic"
    layerwise: bool = False  # stream KV blocks during the prefill (overlap transfer and compute)
    drain_timeout_s: float = 300.0  # wall seconds to wait for in-flight requests after the last arrival

    @property
    def byte_scale(self) -> float:
        """Emulated bytes per real byte, so that transfers take time_dilation x real time."""
        return self.time_dilation / self.bandwidth_scale


@dataclass
class Experiment:
    name: str
    path: Path | None
    seed: int
    policies: list[str]
    topology: TopologyCfg
    placement: PlacementCfg
    model: ModelCfg
    compute: ComputeCfg
    trace: TraceCfg
    slo: SloCfg
    telemetry: TelemetryCfg
    background: list[BackgroundCfg]
    emulation: EmulationCfg
    policy_params: dict[str, dict[str, Any]]
    raw: dict
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE applied on top of the file

    def resolve(self, ref: str) -> Path:
        """A path from the file: 'builtin:NAME' is shipped data; relative paths are relative to the file."""
        if ref.startswith("builtin:"):
            return DATA_DIR / ref.removeprefix("builtin:")
        p = Path(ref).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p


# ------------------------------------------------------------------------------------------------
# validation helpers

_SECTIONS = {
    "topology": TopologyCfg,
    "placement": PlacementCfg,
    "model": ModelCfg,
    "compute": ComputeCfg,
    "trace": TraceCfg,
    "slo": SloCfg,
    "telemetry": TelemetryCfg,
    "emulation": EmulationCfg,
}

def _fail(where: str, key: str, msg: str):
    raise ConfigError(f"{where}: {key}: {msg}")


def _coerce(where: str, key: str, value, tp):
    """Check `value` against the annotated type `tp` (Optional allowed); ints widen to floats."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            _fail(where, key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            _fail(where, key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, key, f"expected a string, got {value!r}")
        return value
    if typing.get_origin(tp) is list:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            _fail(where, key, f"expected a list of strings, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")


def _section(where: str, name: str, cls, table):
    if not isinstance(table, dict):
        _fail(where, name, "expected a table")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in hints:
            _fail(where, f"{name}.{key}", f"unknown key (known: {', '.join(hints)})")
        kwargs[key] = _coerce(where, f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def _positive(where, key, v, allow_zero=False):
    if v is None:
        return
    if (v < 0) if allow_zero else (v <= 0):
        _fail(where, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {v}")


# ------------------------------------------------------------------------------------------------
# loading


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Apply `section.key=value` overrides (value in TOML syntax) to a parsed document."""
    for ov in overrides or []:
        key, sep, value = ov.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {ov}: expected KEY=VALUE, e.g. emulation.bandwidth_scale=16000")
        try:
            val = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            val = value  # a bare word: take it as a string
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {ov}: '{part}' is not a table in {where}")
        node[parts[-1]] = val
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read and validate an experiment file (with optional `section.key=value` overrides)."""
    p = Path(path)
    where = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}") from None
    exp = from_dict(apply_overrides(raw, overrides, where), p)
    exp.overrides = list(overrides or [])
    return exp


def from_dict(raw: dict, path: Path | None = None) -> Experiment:
    """Build a validated Experiment from an already-parsed TOML document."""
    where = str(path) if path else "<experiment>"
    known = {"name", "seed", "policies", "policy", "background", *_SECTIONS}
    for key in raw:
        if key not in known:
            _fail(where, key, f"unknown top-level key (known: {', '.join(sorted(known))})")
    name = raw.get("name", path.stem if path else "experiment")
    if not isinstance(name, str) or not name or "/" in name:
        _fail(where, "name", "must be a non-empty string without '/'")
    seed = raw.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail(where, "seed", f"expected an integer, got {seed!r}")
    policies = raw.get("policies", list(POLICY_NAMES))
    if not isinstance(policies, list) or not policies:
        _fail(where, "policies", "expected a non-empty list of policy names")
    for i, pol in enumerate(policies):
        if pol in policies[:i]:
            _fail(where, "policies", f"'{pol}' listed twice")
    from netkv.scheduler.policies import registry  # noqa: F401  (lazy: avoid an import cycle)

    secs = {name_: _section(where, name_, cls, raw.get(name_, {})) for name_, cls in _SECTIONS.items()}
    for pol in policies:
        if pol not in registry.names():
            _fail(where, "policies", f"unknown policy '{pol}' (known: {', '.join(registry.names())})")
    policy_params = raw.get("policy", {})
    if not isinstance(policy_params, dict):
        _fail(where, "policy", "expected a table of per-policy tables")
    for pol, params in policy_params.items():
        if pol not in registry.names():
            _fail(where, f"policy.{pol}", f"unknown policy (known: {', '.join(registry.names())})")
        try:
            registry.get(pol).validate_params(params)
        except ValueError as e:
            _fail(where, f"policy.{pol}", str(e))

    t: TopologyCfg = secs["topology"]
    for key in ("gpu_link_gbps", "server_link_gbps", "edge_link_gbps", "core_link_gbps"):
        _positive(where, f"topology.{key}", getattr(t, key))
    if t.k < 2 or t.k % 2:
        _fail(where, "topology.k", f"must be an even integer >= 2, got {t.k}")
    _positive(where, "topology.gpus_per_server", t.gpus_per_server)
    if t.oversubscription < 1:
        _fail(where, "topology.oversubscription", f"must be >= 1, got {t.oversubscription}")
    from netkv.topology.routing import STRATEGIES

    if t.routing not in STRATEGIES:
        _fail(where, "topology.routing", f"unknown strategy '{t.routing}' (known: {', '.join(STRATEGIES)})")

    pl: PlacementCfg = secs["placement"]
    if pl.layout not in LAYOUTS:
        _fail(where, "placement.layout", f"unknown layout '{pl.layout}' (known: {', '.join(LAYOUTS)})")
    if not 0 < pl.prefill_fraction < 1:
        _fail(where, "placement.prefill_fraction", f"must be in (0, 1), got {pl.prefill_fraction}")
    if pl.layout == "explicit" and (not pl.prefill or not pl.decode):
        _fail(where, "placement", "layout 'explicit' needs non-empty 'prefill' and 'decode' host lists")
    if pl.layout != "explicit" and (pl.prefill or pl.decode):
        _fail(where, "placement", "'prefill'/'decode' host lists are only used with layout = 'explicit'")

    m: ModelCfg = secs["model"]
    from netkv.compute import MODEL_PRESETS

    custom = [m.layers, m.kv_heads, m.head_dim, m.dtype_bytes]
    if "preset" not in raw.get("model", {}) and any(v is not None for v in custom):
        m.preset = None
    if m.preset is not None:
        if m.preset not in MODEL_PRESETS:
            _fail(where, "model.preset", f"unknown preset '{m.preset}' (known: {', '.join(MODEL_PRESETS)})")
        if any(v is not None for v in custom):
            _fail(where, "model", "give either 'preset' or layers/kv_heads/head_dim/dtype_bytes, not both")
    else:
        for key in ("layers", "kv_heads", "head_dim", "dtype_bytes", "params_b"):
            if getattr(m, key) is None:
                _fail(where, f"model.{key}", "required when no preset is given")
            _positive(where, f"model.{key}", getattr(m, key))

    c: ComputeCfg = secs["compute"]
    _positive(where, "compute.tensor_parallel", c.tensor_parallel)
    _positive(where, "compute.gpu_memory_gb", c.gpu_memory_gb)
    _positive(where, "compute.max_batch", c.max_batch)
    _positive(where, "compute.decode_kv_blocks", c.decode_kv_blocks)
    _positive(where, "compute.prefill_cache_blocks", c.prefill_cache_blocks, allow_zero=True)
    if not 0 < c.memory_utilization <= 1:
        _fail(where, "compute.memory_utilization", f"must be in (0, 1], got {c.memory_utilization}")

    tr: TraceCfg = secs["trace"]
    _positive(where, "trace.start_s", tr.start_s, allow_zero=True)
    _positive(where, "trace.duration_s", tr.duration_s)
    _positive(where, "trace.requests", tr.requests)
    _positive(where, "trace.rate_multiplier", tr.rate_multiplier)

    s: SloCfg = secs["slo"]
    _positive(where, "slo.ttft_s", s.ttft_s)
    _positive(where, "slo.tbt_s", s.tbt_s)

    te: TelemetryCfg = secs["telemetry"]
    if te.oracle not in ("counters", "static"):
        _fail(where, "telemetry.oracle", f"must be 'counters' or 'static', got '{te.oracle}'")
    _positive(where, "telemetry.poll_interval_s", te.poll_interval_s)
    _positive(where, "telemetry.publish_delay_s", te.publish_delay_s, allow_zero=True)
    if not 0 < te.floor_fraction < 1:
        _fail(where, "telemetry.floor_fraction", f"must be in (0, 1), got {te.floor_fraction}")

    em: EmulationCfg = secs["emulation"]
    _positive(where, "emulation.bandwidth_scale", em.bandwidth_scale)
    _positive(where, "emulation.time_dilation", em.time_dilation)
    _positive(where, "emulation.queue_ms", em.queue_ms)
    _positive(where, "emulation.max_link_mbps", em.max_link_mbps)
    if em.qdisc not in ("bfifo", "pfifo"):
        _fail(where, "emulation.qdisc", f"must be 'bfifo' or 'pfifo' (this kernel has no sfq/fq_codel), got '{em.qdisc}'")
    if em.fair_queue_buckets not in (0, 2, 4, 8, 16, 32, 64, 128, 256):
        _fail(where, "emulation.fair_queue_buckets", "must be 0 or a power of two up to 256")
    if em.tcp_congestion_control not in ("cubic", "reno", "bbr"):
        _fail(where, "emulation.tcp_congestion_control", "must be cubic, reno or bbr")
    _positive(where, "emulation.drain_timeout_s", em.drain_timeout_s)
    if not 576 <= em.mtu <= 9000:
        _fail(where, "emulation.mtu", f"must be within 576..9000, got {em.mtu}")

    bgs = []
    raw_bg = raw.get("background", [])
    if not isinstance(raw_bg, list):
        _fail(where, "background", "expected an array of tables ([[background]])")
    for i, b in enumerate(raw_bg):
        key = f"background[{i}]"
        if not isinstance(b, dict):
            _fail(where, key, "expected a table")
        for k_ in b:
            if k_ not in BackgroundCfg.__dataclass_fields__:
                _fail(where, f"{key}.{k_}", f"unknown key (known: {', '.join(BackgroundCfg.__dataclass_fields__)})")
        for req in ("src", "dst"):
            if req not in b:
                _fail(where, f"{key}.{req}", "required")
            if isinstance(b[req], str):
                b = {**b, req: [b[req]]}
            if not isinstance(b[req], list) or not all(isinstance(x, str) for x in b[req]) or not b[req]:
                _fail(where, f"{key}.{req}", "expected a host name, a selector or a list of them")
        bg = BackgroundCfg(src=b["src"], dst=b["dst"])
        for k_ in ("start_s", "on_s", "off_s", "rate_gbps"):
            if k_ in b:
                v = b[k_]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    _fail(where, f"{key}.{k_}", f"expected a number, got {v!r}")
                setattr(bg, k_, float(v))
        _positive(where, f"{key}.start_s", bg.start_s, allow_zero=True)
        _positive(where, f"{key}.on_s", bg.on_s)
        _positive(where, f"{key}.off_s", bg.off_s, allow_zero=True)
        _positive(where, f"{key}.rate_gbps", bg.rate_gbps)
        bgs.append(bg)

    exp = Experiment(
        name=name, path=path, seed=seed, policies=list(policies), background=bgs,
        policy_params=policy_params, raw=raw, **secs,
    )
    # Checks that need the built topology (host names) happen here so errors surface at load time.
    from netkv.topology.placement import build_topology, expand_hosts, placement

    try:
        topo = build_topology(exp)
    except ValueError as e:  # limits of the ID scheme (k <= 64, hosts of an edge in one /24)
        raise ConfigError(f"{where}: {e}") from None
    for i, bg in enumerate(exp.background):
        for side in ("src", "dst"):
            try:
                expand_hosts(topo, getattr(bg, side))
            except ValueError as e:
                _fail(where, f"background[{i}].{side}", str(e))
    try:
        placement(exp, topo)
    except ValueError as e:
        _fail(where, "placement", str(e))
    return exp

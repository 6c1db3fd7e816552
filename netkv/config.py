"""Experiment files (TOML): parsing, defaults and validation with errors that name the key.

The full schema, with every default, is documented in docs/experiment-files.md and exercised by
experiments/*.toml. Units: link rates in Gbit/s, times in seconds, all in real-cluster units; the
`[emulation]` table says how they map onto the emulated fabric.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netkv import DATA_DIR
from netkv.compute import MODEL_PRESETS
from netkv.messages import show


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
    oversubscription: float = 1.0  # divides edge->agg and agg->core rates: down:up at the edge (leaf) layer
    routing: str = "sum-mod"
    # per directed link, on top of the bytes' time: propagation + the next node's forwarding, and the
    # store-and-forward of one packet (mtu_bytes at the link's rate); docs/reproduction.md
    hop_latency_us: float = 1.0
    mtu_bytes: int = 4096


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
    input_scale: float = 1.0  # every input this many times as long (context-length sweeps; prefixes kept)
    max_output_tokens: int | None = None  # cap every output (a shorter decode for smoke runs)


@dataclass
class SloCfg:
    """Absolute thresholds (Mooncake's: TTFT 30 s, TBT 0.1-0.3 s), and relative ones: a request meets
    the SLO at scale s when its TTFT <= s x its unloaded TTFT and its TBT <= s x its unloaded TBT
    (alone on the idle cluster, on the best-placed pair; see docs/policies.md), swept over `scales`
    as DistServe sweeps its SLO scale; `scale` is the one the table shows."""

    ttft_s: float = 30.0
    tbt_s: float = 0.2  # bound on the mean of a request's largest 10% inter-token gaps (Mooncake)
    scales: list[float] = field(default_factory=lambda: [1.5, 2.0, 3.0, 5.0, 10.0])
    scale: float = 3.0


@dataclass
class TelemetryCfg:
    oracle: str = "counters"  # a name in netkv.scheduler.oracle.ORACLES: "counters", "static", "fair_share", "probe"
    poll_interval_s: float = 1.0
    publish_delay_s: float = 0.0
    count_committed: bool = True
    floor_fraction: float = 0.25  # residual never below this share of capacity (see docs/oracle.md)
    # when the simulated controller samples the counters: "run" (every switch together, at a random
    # offset from trace time 0, drawn per run from the seed: as the emulated controller polls),
    # "switch" (each switch at its own random offset: independent per-switch collectors), "zero"
    # (every switch at multiples of the interval from trace time 0)
    poll_phase: str = "run"
    # simulator only: also ask the policy what it would choose on fresh telemetry (the flow model's
    # link rates at the decision instant) and record it (fresh_decode, fresh_tier): what staleness changed
    compare_fresh: bool = False
    # the "probe" oracle (docs/oracle.md): one packet train every probe_interval_s (real-cluster
    # seconds), from a prefill host to a decode host, the pairs in turn; a train is probe_packets
    # packets of probe_packet_bytes (IP bytes on the emulated wire; 0 = emulation.mtu: a frame that
    # fills the shaper's one-frame token bucket, so that the train is spaced at the link's rate)
    probe_interval_s: float = 0.05
    probe_packets: int = 6
    probe_packet_bytes: int = 0


@dataclass
class BackgroundCfg:
    src: list[str]
    dst: list[str]
    start_s: float = 0.0
    on_s: float = math.inf
    off_s: float = 0.0
    rate_gbps: float | None = None  # None: elastic (TCP-like, takes its max-min share)


@dataclass
class FaultCfg:
    """A fault on the trace clock: at `at_s` (real-cluster seconds) the `kind` of component fails, and
    comes back `down_s` seconds later (for ever if omitted, links and agents only); `times` > 1
    repeats it every `every_s` seconds (a flapping link, a switch that keeps crashing).

    kind "link": the link between two adjacent switches (`link`) goes down (emulation and
    simulation). The others are processes of the emulated testbed (the flow model has no processes:
    the simulator runs without them and says so): "switch" (`target`'s ovs-vswitchd is SIGKILLed,
    then restarted on its database), "controller" (SIGKILLed, then restarted), "scheduler" (the
    scheduler service SIGKILLed, then restarted: it resumes from its journal), "agent" (`target`'s
    agent SIGKILLed for good: its requests fail and it is no longer chosen)."""

    kind: str = "link"
    link: list[str] | None = None
    target: str | None = None
    at_s: float = 0.0
    down_s: float = math.inf
    times: int = 1
    every_s: float | None = None

    @property
    def label(self) -> str:
        """How logs and summaries name it: "a0_0-c0_0", "switch e0_0_0", "scheduler"."""
        if self.kind == "link":
            return "-".join(self.link or [])
        return f"{self.kind} {self.target}" if self.target else self.kind

    def schedule(self) -> list[tuple[float, bool]]:
        """(time, up?) changes in time order: down at at_s, up at at_s + down_s, per repetition."""
        out = []
        for k in range(self.times):
            t = self.at_s + k * (self.every_s or 0.0)
            out.append((t, False))
            if math.isfinite(self.down_s):
                out.append((t + self.down_s, True))
        return out


@dataclass
class EmulationCfg:
    bandwidth_scale: float = 4000.0  # emulated link rate = real rate / bandwidth_scale
    time_dilation: float = 10.0  # one real-cluster second lasts this many emulated seconds
    mtu: int = 9000
    # per-link (per-bucket) queue, as time at the emulated link rate: deep enough that a KV transfer
    # is not lost at a contended port (a P/D fabric is lossless: RDMA over PFC or InfiniBand)
    queue_ms: float = 20.0
    max_link_mbps: float = 1000.0
    qdisc: str = "bfifo"  # leaf queue of the shaped links
    fair_queue_buckets: int = 64  # per-flow fair queueing at switch ports (0 = plain drop-tail)
    tcp_congestion_control: str = "cubic"
    # "switch": every switch has its own ovs-vswitchd in its own network namespace (as a real switch
    # has its own forwarding plane); "shared": the whole fabric in the system's ovs-vswitchd
    ovs_daemons: str = "switch"
    # hold every CPU in polling idle while the fabric runs (/dev/cpu_dma_latency = 0): the shapers'
    # timers then fire on time (emulation/pollidle.py says why)
    poll_idle: bool = True
    # 0: the fabric on this machine; N >= 2: across N stand-in servers (network namespaces reached
    # over SSH, Mininet's cluster edition), whole pods per server, the core here; each server runs
    # one Open vSwitch, so it needs ovs_daemons = "shared" (docs/scaling.md, "Across machines")
    servers: int = 0
    # or across these machines (SSH as root; each runs Open vSwitch and has this repository and its
    # virtual environment at the same path), with this machine's address on their network
    server_hosts: list[str] = field(default_factory=list)
    cluster_address: str = ""
    ssh_config: str = ""  # ssh -F for reaching them ("": ssh's own configuration)
    kv_checksum: bool = False  # pattern payloads with a CRC-32 per block, checked on arrival
    layerwise: bool = False  # stream KV blocks during the prefill (overlap transfer and compute)
    drain_timeout_s: float = 300.0  # real-cluster seconds (x time_dilation on the wall) to wait after the last arrival

    @property
    def byte_scale(self) -> float:
        """Emulated bytes per real byte, so that transfers take time_dilation x real time."""
        return self.time_dilation / self.bandwidth_scale


@dataclass
class Experiment:
    name: str
    path: Path | None
    seed: int
    policies: list[str]  # empty: every registered policy (filled in when the cluster is built)
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
    faults: list[FaultCfg] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE applied on top of the file

    @property
    def where(self) -> str:
        """How errors name this experiment: its file, or <experiment>."""
        return str(self.path) if self.path else "<experiment>"

    def error(self, key: str, msg: str) -> ConfigError:
        """A ConfigError naming this experiment's file and `key` (for checks made after loading), or
        the `--set` override that gave the key its value."""
        return _blame_override(ConfigError(f"{self.where}: {key}: {msg}"), self.where, self.overrides)

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


def _fail(where: str, key: str, msg: str):
    if not key.isprintable() or len(key) > 80:  # a key from the file: keep the message one line
        key = show(key)
    raise ConfigError(f"{where}: {key}: {msg}")


def _coerce(where: str, key: str, value, tp):
    """Check `value` against the annotated type `tp` (Optional allowed); ints widen to floats."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, key, f"expected true/false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, key, f"expected an integer, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, key, f"expected a number, got {show(value)}")
        if isinstance(value, int) and abs(value) > 1e300:  # float() of 10**400 overflows
            _fail(where, key, "expected a finite number, got an integer too large for a float")
        if math.isnan(value):
            _fail(where, key, f"expected a number, got {show(value)}")
        if not math.isfinite(value):
            _fail(where, key, f"expected a finite number, got {show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, key, f"expected a string, got {show(value)}")
        return value
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if item is float:
            if not isinstance(value, list) or not value:
                _fail(where, key, f"expected a non-empty list of numbers, got {show(value)}")
            return [_coerce(where, f"{key}[{i}]", x, float) for i, x in enumerate(value)]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            _fail(where, key, f"expected a list of strings, got {show(value)}")
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


def _flag(ov: str) -> str:
    """An override as an error message shows it: as typed, or quoted and cut when it is not one
    short printable line."""
    return ov if ov.isprintable() and len(ov) <= 80 else show(ov)


def apply_overrides(raw: dict, overrides: list[str] | None, where: str) -> dict:
    """Apply `section.key=value` overrides (value in TOML syntax) to a parsed document."""
    for ov in overrides or []:
        key, sep, value = ov.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {_flag(ov)}: expected KEY=VALUE, e.g. emulation.bandwidth_scale=16000")
        try:
            val = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            val = value  # a bare word: take it as a string
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {_flag(ov)}: {show(part)} is not a table in {where}")
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
    try:
        exp = from_dict(apply_overrides(raw, overrides, where), p)
    except ConfigError as e:
        raise _blame_override(e, where, overrides or []) from None
    exp.overrides = list(overrides or [])
    return exp


def _blame_override(e: ConfigError, where: str, overrides: list[str]) -> ConfigError:
    """An error about a key a `--set` override gave its value names the override, not the file."""
    msg = str(e)
    for ov in reversed(overrides):
        key = ov.partition("=")[0].strip()
        if msg.startswith(f"{where}: {key}:") or msg.startswith(f"{where}: {key} "):
            return ConfigError(f"--set {_flag(ov)}: {msg[len(where) + 2 :]}")
    return e


def _check_topology(where: str, t: TopologyCfg) -> None:
    for key in ("gpu_link_gbps", "server_link_gbps", "edge_link_gbps", "core_link_gbps"):
        _positive(where, f"topology.{key}", getattr(t, key))
    if t.k < 2 or t.k % 2:
        _fail(where, "topology.k", f"must be an even integer >= 2, got {t.k}")
    _positive(where, "topology.gpus_per_server", t.gpus_per_server)
    if t.oversubscription < 1:
        _fail(where, "topology.oversubscription", f"must be >= 1, got {t.oversubscription}")
    _positive(where, "topology.hop_latency_us", t.hop_latency_us, allow_zero=True)
    _positive(where, "topology.mtu_bytes", t.mtu_bytes, allow_zero=True)  # 0: cut-through switching


def _check_placement(where: str, pl: PlacementCfg) -> None:
    if not 0 < pl.prefill_fraction < 1:
        _fail(where, "placement.prefill_fraction", f"must be in (0, 1), got {pl.prefill_fraction}")
    if pl.layout == "explicit" and (not pl.prefill or not pl.decode):
        _fail(where, "placement", "layout 'explicit' needs non-empty 'prefill' and 'decode' host lists")
    if pl.layout != "explicit" and (pl.prefill or pl.decode):
        _fail(where, "placement", "'prefill'/'decode' host lists are only used with layout = 'explicit'")


def _check_model(where: str, m: ModelCfg, given: dict) -> None:
    custom = [m.layers, m.kv_heads, m.head_dim, m.dtype_bytes]
    if "preset" not in given and any(v is not None for v in custom):
        m.preset = None
    if m.preset is not None:
        if m.preset not in MODEL_PRESETS:
            _fail(where, "model.preset", f"unknown preset '{m.preset}' (known: {', '.join(MODEL_PRESETS)})")
        if any(v is not None for v in custom):
            _fail(where, "model", "give either 'preset' or layers/kv_heads/head_dim/dtype_bytes, not both")
        return
    for key in ("layers", "kv_heads", "head_dim", "dtype_bytes", "params_b"):
        if getattr(m, key) is None:
            _fail(where, f"model.{key}", "required when no preset is given")
        _positive(where, f"model.{key}", getattr(m, key))


def _check_compute(where: str, c: ComputeCfg) -> None:
    _positive(where, "compute.tensor_parallel", c.tensor_parallel)
    _positive(where, "compute.gpu_memory_gb", c.gpu_memory_gb)
    _positive(where, "compute.max_batch", c.max_batch)
    _positive(where, "compute.decode_kv_blocks", c.decode_kv_blocks)
    _positive(where, "compute.prefill_cache_blocks", c.prefill_cache_blocks, allow_zero=True)
    if not 0 < c.memory_utilization <= 1:
        _fail(where, "compute.memory_utilization", f"must be in (0, 1], got {c.memory_utilization}")


def _check_trace(where: str, tr: TraceCfg) -> None:
    _positive(where, "trace.start_s", tr.start_s, allow_zero=True)
    _positive(where, "trace.duration_s", tr.duration_s)
    _positive(where, "trace.requests", tr.requests)
    _positive(where, "trace.rate_multiplier", tr.rate_multiplier)
    _positive(where, "trace.max_output_tokens", tr.max_output_tokens)
    if not 0 < tr.input_scale <= 64:
        _fail(where, "trace.input_scale", f"must be in (0, 64], got {tr.input_scale}")


def _check_slo(where: str, s: SloCfg) -> None:
    _positive(where, "slo.ttft_s", s.ttft_s)
    _positive(where, "slo.tbt_s", s.tbt_s)
    _positive(where, "slo.scale", s.scale)
    for i, x in enumerate(s.scales):
        _positive(where, f"slo.scales[{i}]", x)


MIN_PERIOD_S = 0.001  # port counters are not read, nor elephants switched, faster than once a millisecond


def _at_least(where: str, key: str, v: float, low: float) -> None:
    if v < low:
        _fail(where, key, f"must be >= {low:g} s, got {v:g}")


POLL_PHASES = ("run", "switch", "zero")


def _check_telemetry(where: str, te: TelemetryCfg) -> None:
    _at_least(where, "telemetry.poll_interval_s", te.poll_interval_s, MIN_PERIOD_S)
    _positive(where, "telemetry.publish_delay_s", te.publish_delay_s, allow_zero=True)
    if not 0 < te.floor_fraction < 1:
        _fail(where, "telemetry.floor_fraction", f"must be in (0, 1), got {te.floor_fraction}")
    _at_least(where, "telemetry.probe_interval_s", te.probe_interval_s, MIN_PERIOD_S)
    if not 2 <= te.probe_packets <= 1000:
        _fail(where, "telemetry.probe_packets", f"must be an integer in [2, 1000] (a train), got {te.probe_packets}")
    if te.probe_packet_bytes != 0 and not 100 <= te.probe_packet_bytes <= 9000:
        _fail(
            where,
            "telemetry.probe_packet_bytes",
            f"must be 0 (the MTU) or in [100, 9000] (an IPv4 packet), got {te.probe_packet_bytes}",
        )
    if te.poll_phase not in POLL_PHASES:
        _fail(where, "telemetry.poll_phase", f"unknown phase {show(te.poll_phase)} (known: {', '.join(POLL_PHASES)})")


def _check_emulation(where: str, em: EmulationCfg) -> None:
    _positive(where, "emulation.bandwidth_scale", em.bandwidth_scale)
    _positive(where, "emulation.time_dilation", em.time_dilation)
    _positive(where, "emulation.queue_ms", em.queue_ms)
    _positive(where, "emulation.max_link_mbps", em.max_link_mbps)
    if em.qdisc not in ("bfifo", "pfifo"):
        _fail(
            where, "emulation.qdisc", f"must be 'bfifo' or 'pfifo' (this kernel has no sfq/fq_codel), got '{em.qdisc}'"
        )
    if em.fair_queue_buckets not in (0, 2, 4, 8, 16, 32, 64, 128, 256):
        _fail(where, "emulation.fair_queue_buckets", "must be 0 or a power of two up to 256")
    if em.tcp_congestion_control not in ("cubic", "reno", "bbr"):
        _fail(where, "emulation.tcp_congestion_control", "must be cubic, reno or bbr")
    if em.ovs_daemons not in ("switch", "shared"):
        _fail(where, "emulation.ovs_daemons", f"must be 'switch' or 'shared', got '{em.ovs_daemons}'")
    if em.servers != 0 and em.servers < 2:
        _fail(where, "emulation.servers", f"must be 0 (this machine) or at least 2, got {em.servers}")
    _check_server_hosts(where, em)
    key = "emulation.server_hosts" if em.server_hosts else "emulation.servers"
    if em.servers or em.server_hosts:
        if em.ovs_daemons != "shared":
            _fail(where, key, "needs emulation.ovs_daemons = 'shared' (one Open vSwitch per server)")
        if em.fair_queue_buckets == 0:
            _fail(where, key, "needs emulation.fair_queue_buckets > 0 (they shape the cluster's links)")
    _positive(where, "emulation.drain_timeout_s", em.drain_timeout_s)
    if not 576 <= em.mtu <= 9000:
        _fail(where, "emulation.mtu", f"must be within 576..9000, got {em.mtu}")


_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")  # an address or a host name, never an ssh option


def _check_server_hosts(where: str, em: EmulationCfg) -> None:
    if not em.server_hosts:
        for k in ("cluster_address", "ssh_config"):
            if getattr(em, k):
                _fail(where, f"emulation.{k}", "only means something with emulation.server_hosts")
        return
    if em.servers:
        _fail(
            where, "emulation.server_hosts", "give emulation.servers (stand-ins) or server_hosts (machines), not both"
        )
    for i, h in enumerate(em.server_hosts):
        if not _HOST_RE.match(h):
            _fail(where, f"emulation.server_hosts[{i}]", f"expected an address or a host name, got {show(h)}")
    if len(set(em.server_hosts)) != len(em.server_hosts):
        _fail(where, "emulation.server_hosts", "a machine is listed twice")
    try:
        ipaddress.ip_address(em.cluster_address)
    except ValueError:
        _fail(
            where,
            "emulation.cluster_address",
            f"expected this machine's IP address on the servers' network, got {show(em.cluster_address)}",
        )
    if em.ssh_config and not Path(em.ssh_config).is_file():
        _fail(where, "emulation.ssh_config", f"no such file: {em.ssh_config}")


# name -> (section class, its checks); checks that need the built topology or a registry of the
# models (layouts, routing strategies, oracles, policies, host names) run when the cluster is built
# (netkv.scheduler.cluster), beside the code that knows those names
_SECTIONS: dict[str, tuple[type, Any]] = {
    "topology": (TopologyCfg, _check_topology),
    "placement": (PlacementCfg, _check_placement),
    "model": (ModelCfg, None),
    "compute": (ComputeCfg, _check_compute),
    "trace": (TraceCfg, _check_trace),
    "slo": (SloCfg, _check_slo),
    "telemetry": (TelemetryCfg, _check_telemetry),
    "emulation": (EmulationCfg, _check_emulation),
}


def parse_section(name: str, table, where: str = "<experiment>"):
    """One validated section (e.g. the controller's [topology]) from its table."""
    cls, check = _SECTIONS[name]
    sec = _section(where, name, cls, table)
    if name == "model":
        _check_model(where, sec, table)
    elif check is not None:
        check(where, sec)
    return sec


def _entry(where: str, name: str, i: int, table, cls) -> str:
    """Check entry i of the array of tables [[name]]: a table whose keys are fields of `cls`;
    returns how errors name it (name[i])."""
    key = f"{name}[{i}]"
    if not isinstance(table, dict):
        _fail(where, key, "expected a table")
    for k_ in table:
        if k_ not in cls.__dataclass_fields__:
            _fail(where, f"{key}.{k_}", f"unknown key (known: {', '.join(cls.__dataclass_fields__)})")
    return key


def _entries(where: str, raw: dict, name: str, parse) -> list:
    """The parsed entries of the array of tables [[name]] (none when absent)."""
    tables = raw.get(name, [])
    if not isinstance(tables, list):
        _fail(where, name, f"expected an array of tables ([[{name}]])")
    return [parse(where, i, t) for i, t in enumerate(tables)]


def _background(where: str, i: int, b) -> BackgroundCfg:
    key = _entry(where, "background", i, b, BackgroundCfg)
    for req in ("src", "dst"):
        if req not in b:
            _fail(where, f"{key}.{req}", "required")
        if isinstance(b[req], str):
            b = {**b, req: [b[req]]}
        if not isinstance(b[req], list) or not all(isinstance(x, str) for x in b[req]) or not b[req]:
            _fail(where, f"{key}.{req}", "expected a host name, a selector or a list of them")
    bg = BackgroundCfg(src=b["src"], dst=b["dst"])
    for k_ in ("start_s", "on_s", "off_s", "rate_gbps"):
        if k_ in b and b[k_] is not None:
            setattr(bg, k_, _coerce(where, f"{key}.{k_}", b[k_], float))
    _positive(where, f"{key}.start_s", bg.start_s, allow_zero=True)
    _at_least(where, f"{key}.on_s", bg.on_s, MIN_PERIOD_S)
    _positive(where, f"{key}.off_s", bg.off_s, allow_zero=True)
    if 0 < bg.off_s < MIN_PERIOD_S:
        _at_least(where, f"{key}.off_s", bg.off_s, MIN_PERIOD_S)
    _positive(where, f"{key}.rate_gbps", bg.rate_gbps)
    return bg


MAX_FAULT_TIMES = 10_000
MAX_FAULT_AT_S = 365 * 24 * 3600.0  # as far as a replayed window reaches (netkv.trace.MAX_SPAN_S)


FAULT_KINDS = ("link", "switch", "controller", "scheduler", "agent")
_RESTARTED = ("switch", "controller", "scheduler")  # processes that come back: down_s is required


def _fault(where: str, i: int, f) -> FaultCfg:
    """One [[fault]] entry; whether its link, switch or agent exists (and a lost link leaves every
    pair a path) is checked when the cluster is built."""
    key = _entry(where, "fault", i, f, FaultCfg)
    kind = f.get("kind", "link")
    if kind not in FAULT_KINDS:
        _fail(where, f"{key}.kind", f"unknown fault kind {show(kind)} (known: {', '.join(FAULT_KINDS)})")
    fc = FaultCfg(kind=kind)
    if kind == "link":
        link = f.get("link")
        if not isinstance(link, list) or len(link) != 2 or not all(isinstance(x, str) for x in link):
            _fail(where, f"{key}.link", 'expected the two switches it joins, e.g. ["a0_0", "c0_0"]')
        fc.link = list(link)
    elif "link" in f:
        _fail(where, f"{key}.link", f"only for kind = 'link' (this fault is a {kind})")
    if kind in ("switch", "agent"):
        target = f.get("target")
        if not isinstance(target, str) or not target:
            what = "switch, e.g. 'e0_0_0'" if kind == "switch" else "agent's host, e.g. 'h0_0_0_0'"
            _fail(where, f"{key}.target", f"required: the name of the {what}")
        fc.target = target
    elif "target" in f:
        _fail(where, f"{key}.target", f"only for kind = 'switch' or 'agent' (this fault is a {kind})")
    for k_ in ("at_s", "down_s", "every_s"):
        if k_ in f:
            v = _coerce(where, f"{key}.{k_}", f[k_], float)
            if not math.isfinite(v):
                _fail(where, f"{key}.{k_}", f"expected a finite number of seconds, got {show(v)}")
            setattr(fc, k_, v)
    if "times" in f:
        t = f["times"]
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= MAX_FAULT_TIMES:
            _fail(where, f"{key}.times", f"expected an integer within 1..{MAX_FAULT_TIMES}, got {show(t)}")
        fc.times = t
    _positive(where, f"{key}.at_s", fc.at_s, allow_zero=True)
    if fc.at_s > MAX_FAULT_AT_S:
        _fail(where, f"{key}.at_s", f"must be <= {MAX_FAULT_AT_S:g} s (a year), got {fc.at_s:g}")
    _at_least(where, f"{key}.down_s", fc.down_s, MIN_PERIOD_S)
    if kind in _RESTARTED and not math.isfinite(fc.down_s):
        _fail(where, f"{key}.down_s", f"required for a {kind}: seconds until it is restarted")
    if kind == "agent" and "down_s" in f:
        _fail(where, f"{key}.down_s", "an agent is not restarted (its requests fail, it is no longer chosen): omit it")
    if fc.times > 1:
        if fc.every_s is None:
            _fail(where, f"{key}.every_s", "required when times > 1 (the period of the flapping)")
        elif not math.isfinite(fc.down_s) or fc.every_s <= fc.down_s:
            _fail(where, f"{key}.every_s", f"must be > down_s ({fc.down_s:g} s) so the {kind} comes back in between")
    elif fc.every_s is not None:
        _fail(where, f"{key}.every_s", "only with times > 1")
    return fc


def _policies(where: str, raw: dict) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The policy list (empty: every registered policy) and per-policy parameter tables; names and
    parameters are checked against the policy registry when the cluster is built."""
    policies = raw.get("policies", [])
    if not isinstance(policies, list) or ("policies" in raw and not policies):
        _fail(where, "policies", "expected a non-empty list of policy names")
    for i, pol in enumerate(policies):
        if not isinstance(pol, str):
            _fail(where, "policies", f"expected policy names, got {show(pol)}")
        if pol in policies[:i]:
            _fail(where, "policies", f"'{pol}' listed twice")
    params = raw.get("policy", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        _fail(where, "policy", "expected a table of per-policy tables")
    return list(policies), params


def from_dict(raw: dict, path: Path | None = None) -> Experiment:
    """Build an Experiment from an already-parsed document, each section validated on its own."""
    where = str(path) if path else "<experiment>"
    known = {"name", "seed", "policies", "policy", "background", "fault", *_SECTIONS}
    for key in raw:
        if key not in known:
            _fail(where, key, f"unknown top-level key (known: {', '.join(sorted(known))})")
    name = raw.get("name", path.stem if path else "experiment")
    if not isinstance(name, str) or not name or "/" in name:
        _fail(where, "name", "must be a non-empty string without '/'")
    seed = raw.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail(where, "seed", f"expected an integer, got {show(seed)}")
    policies, policy_params = _policies(where, raw)
    secs = {n: parse_section(n, raw.get(n, {}), where) for n in _SECTIONS}
    bgs = _entries(where, raw, "background", _background)
    faults = _entries(where, raw, "fault", _fault)
    return Experiment(
        name=name,
        path=path,
        seed=seed,
        policies=policies,
        background=bgs,
        faults=faults,
        policy_params=policy_params,
        raw=raw,
        **secs,
    )


def to_dict(exp: Experiment) -> dict:
    """The validated experiment as one JSON-able document (paths made absolute, defaults filled in):
    what the orchestrator hands the scheduler service and every agent (`load_json` reads it back)."""
    doc: dict[str, Any] = {"name": exp.name, "seed": exp.seed}
    if exp.policies:
        doc["policies"] = list(exp.policies)
    for n in _SECTIONS:  # None is every optional key's default (TOML has no null)
        doc[n] = {k: v for k, v in dataclasses.asdict(getattr(exp, n)).items() if v is not None}
    for sec, key in (("compute", "profile"), ("trace", "path")):
        ref = doc[sec][key]
        if not ref.startswith("builtin:"):
            doc[sec][key] = str(exp.resolve(ref).resolve())
    doc["policy"] = exp.policy_params
    for name, entries in (("background", exp.background), ("fault", exp.faults)):  # inf: the default "for ever"
        doc[name] = [
            {k: v for k, v in dataclasses.asdict(e).items() if v is not None and v != math.inf} for e in entries
        ]
    return doc


def load_json(path: str | Path) -> Experiment:
    """Read an experiment written by `to_dict` (JSON); validated again like a TOML file."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not a JSON experiment: {e}") from None
    return from_dict(raw, p)

"""Per-request records, per-policy summaries, the printed table, and the run-directory layout.

A run directory holds experiment.toml (a copy), meta.json, and per policy <policy>/requests.jsonl and
<policy>/summary.json; summary.json at the top lists every policy's summary. The simulator and the
emulator write the same files with the same columns (REQUEST_COLUMNS), all in real-cluster units.
Files are written to a temporary name and renamed, so a file that exists is complete; a run that
stopped early says `"partial": true` in meta.json and summary.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

REQUEST_COLUMNS = (
    "id",
    "status",
    "fail_reason",
    "policy",
    "arrival_s",
    "input_tokens",
    "output_tokens",
    "prefill",
    "decode",
    "tier",
    "prefill_hit_blocks",
    "decode_hit_blocks",
    "blocks_sent",
    "bytes_sent",
    "queue_s",
    "prefill_s",
    "transfer_s",
    "decode_wait_s",
    "ttft_s",
    "tbt_mean_s",
    "tbt_p99_s",
    "tbt_top10_s",
    "e2e_s",
    "ttft_unloaded_s",
    "tbt_unloaded_s",
    "decision_us",
    "prefill_choice_us",
    "est_transfer_s",
    "telemetry_age_s",
    "oracle",
    "fresh_decode",
    "fresh_tier",
    "t_prefill_start",
    "t_prefill_end",
    "t_transfer_end",
    "t_first_token",
    "t_done",
)


@dataclass(slots=True)
class RequestRecord:
    """Timeline and outcome of one request (absolute times in seconds from the window start)."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    policy: str = ""
    status: str = "pending"  # completed | failed | pending
    fail_reason: str | None = None
    prefill: str | None = None
    decode: str | None = None
    tier: int | None = None
    prefill_hit_blocks: int = 0
    decode_hit_blocks: int = 0
    blocks_sent: int = 0
    bytes_sent: float = 0.0
    decision_us: float | None = None
    prefill_choice_us: float | None = None
    est_transfer_s: float | None = None
    telemetry_age_s: float | None = None
    oracle: str | None = None
    fresh_decode: str | None = None  # the decode instance fresh telemetry would have chosen (compare_fresh)
    fresh_tier: int | None = None
    t_prefill_start: float | None = None
    t_prefill_end: float | None = None
    t_transfer_end: float | None = None
    t_admit: float | None = None
    t_first_token: float | None = None
    t_done: float | None = None
    ttft_unloaded_s: float | None = None  # alone on the idle cluster (Runtime.unloaded): relative SLOs
    tbt_unloaded_s: float | None = None
    gaps: np.ndarray | None = field(default=None, repr=False)  # inter-token gaps, seconds

    def record_decision(self, d, topo, oracle_name: str) -> None:
        """Copy a scheduler Decision (scheduler.core) into this record."""
        self.prefill = topo.hosts[d.prefill_host].name
        self.decode = topo.hosts[d.decode_host].name
        self.tier = d.tier
        self.decision_us = d.decision_us
        self.prefill_choice_us = d.prefill_choice_us
        self.est_transfer_s = d.est_transfer_s
        self.telemetry_age_s = d.telemetry_age_s
        self.oracle = oracle_name
        self.decode_hit_blocks = d.decode_hit_blocks
        if d.fresh_decode_host is not None:
            self.fresh_decode = topo.hosts[d.fresh_decode_host].name
            self.fresh_tier = d.fresh_tier
        self.blocks_sent = d.blocks_to_send
        self.bytes_sent = d.bytes_to_send

    def to_row(self) -> dict:
        def d(a, b):
            return None if a is None or b is None else b - a

        g = self.gaps if self.gaps is not None and len(self.gaps) else None
        tbt_mean: float | None
        tbt_p99: float | None
        tbt_top10: float | None
        if g is not None:
            tbt_mean, tbt_p99, tbt_top10 = tbt_stats(g)
        else:  # one token (no gap), or unfinished
            tbt_mean = tbt_p99 = tbt_top10 = 0.0 if self.t_done is not None else None
        row = {
            "id": self.id,
            "status": self.status,
            "fail_reason": self.fail_reason,
            "policy": self.policy,
            "arrival_s": self.arrival_s,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "prefill": self.prefill,
            "decode": self.decode,
            "tier": self.tier,
            "prefill_hit_blocks": self.prefill_hit_blocks,
            "decode_hit_blocks": self.decode_hit_blocks,
            "blocks_sent": self.blocks_sent,
            "bytes_sent": self.bytes_sent,
            "queue_s": d(self.arrival_s, self.t_prefill_start),
            "prefill_s": d(self.t_prefill_start, self.t_prefill_end),
            "transfer_s": d(self.t_prefill_end, self.t_transfer_end),
            "decode_wait_s": d(self.t_transfer_end, self.t_admit),
            "ttft_s": d(self.arrival_s, self.t_first_token),
            "tbt_mean_s": tbt_mean,
            "tbt_p99_s": tbt_p99,
            "tbt_top10_s": tbt_top10,
            "e2e_s": d(self.arrival_s, self.t_done),
            "ttft_unloaded_s": self.ttft_unloaded_s,
            "tbt_unloaded_s": self.tbt_unloaded_s,
            "decision_us": self.decision_us,
            "prefill_choice_us": self.prefill_choice_us,
            "est_transfer_s": self.est_transfer_s,
            "telemetry_age_s": self.telemetry_age_s,
            "oracle": self.oracle,
            "fresh_decode": self.fresh_decode,
            "fresh_tier": self.fresh_tier,
            "t_prefill_start": self.t_prefill_start,
            "t_prefill_end": self.t_prefill_end,
            "t_transfer_end": self.t_transfer_end,
            "t_first_token": self.t_first_token,
            "t_done": self.t_done,
        }
        for k, v in row.items():  # JSON-safe: no NaN/inf, no numpy scalars
            t = type(v)
            if t is float:
                if v - v != 0.0:
                    row[k] = None
            elif t is not int and t is not str and v is not None:
                row[k] = _clean(v)
        return row


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def _ranks(n: int, q: float) -> tuple[float, int, int]:
    """np.percentile's linear method: the fractional rank of q and its two neighbouring ranks."""
    idx = q / 100.0 * (n - 1)
    lo = int(math.floor(idx))
    return idx, lo, min(lo + 1, n - 1)


def _between(part: np.ndarray, idx: float, lo: int, hi: int) -> float:
    """The value at fractional rank idx of a partitioned array, in np.percentile's float arithmetic."""
    x, y = float(part[lo]), float(part[hi])
    t = idx - lo
    d = y - x
    return y - d * (1 - t) if t >= 0.5 else x + d * t


def percentile(a: np.ndarray, q: float) -> float:
    """np.percentile(a, q) (its default linear method, the same float arithmetic) by partial partition."""
    idx, lo, hi = _ranks(len(a), q)
    return _between(np.partition(a, [lo, hi]) if len(a) > 2 else np.sort(a), idx, lo, hi)


def tbt_stats(gaps: np.ndarray) -> tuple[float, float, float]:
    """(mean, p99, mean of the largest 10%) of a request's gaps from one partial partition: the p99
    ranks lie within the largest 10%, so one partition places all three (the simulator writes
    one row per request). The p99 is np.percentile's (its default linear method, the same float
    arithmetic), without sorting the whole array."""
    n = len(gaps)
    k = max(1, int(math.ceil(0.1 * n)))
    idx, lo, hi = _ranks(n, 99)
    part = np.partition(gaps, sorted({n - k, lo, hi})) if n > 2 else np.sort(gaps)
    # sums / counts: ndarray.mean's arithmetic without its per-call bookkeeping
    add = np.add.reduce
    return float(add(gaps)) / n, _between(part, idx, lo, hi), float(add(part[n - k :])) / k


def top10_mean(gaps: np.ndarray) -> float:
    """Mooncake's TBT: the mean of the largest 10% of a request's inter-token gaps (at least one)."""
    return tbt_stats(gaps)[2]


def slo_met(rows: list[dict], scale: float) -> np.ndarray:
    """Per row: met the relative SLO at `scale` (TTFT and TBT within `scale` x the request's
    unloaded ones); a failed or unfinished request misses it."""
    out = np.zeros(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if r["status"] == "completed" and r.get("ttft_unloaded_s") is not None:
            out[i] = r["ttft_s"] <= scale * r["ttft_unloaded_s"] and r["tbt_top10_s"] <= scale * r["tbt_unloaded_s"]
    return out


def summarize(
    rows: list[dict], slo_ttft_s: float, slo_tbt_s: float, scales=(1.5, 2.0, 3.0, 5.0, 10.0), scale: float = 3.0
) -> dict:
    """Summary statistics of one policy's request rows; SLO attainment with the absolute thresholds
    and with the relative ones at every scale in `scales` and at `scale` (the table's)."""
    done = [r for r in rows if r["status"] == "completed"]
    out = {"requests": len(rows), "completed": len(done), "failed": sum(r["status"] == "failed" for r in rows)}
    reasons: dict[str, int] = {}
    for r in rows:
        if r["status"] == "failed":
            reasons[r["fail_reason"] or "unknown"] = reasons.get(r["fail_reason"] or "unknown", 0) + 1
    out["fail_reasons"] = reasons
    shadow = [r for r in rows if r.get("fresh_decode") is not None]
    if shadow:  # what staleness changed (telemetry.compare_fresh)
        out["fresh_agreement"] = {
            "decisions": len(shadow),
            "same_decode": sum(r["fresh_decode"] == r["decode"] for r in shadow) / len(shadow),
            "same_tier": sum(r["fresh_tier"] == r["tier"] for r in shadow) / len(shadow),
        }
    if not done:
        return out

    def stats(key):
        a = np.array([r[key] for r in done if r[key] is not None], dtype=float)
        if len(a) == 0:
            return {}
        return {
            "mean": float(a.mean()),
            "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)),
        }

    ok = [r for r in done if r["ttft_s"] <= slo_ttft_s and r["tbt_top10_s"] <= slo_tbt_s]
    span = max(r["t_done"] for r in done) - min(r["arrival_s"] for r in rows)
    tiers = [r["tier"] for r in done if r["tier"] is not None]
    out.update(
        {
            "ttft_s": stats("ttft_s"),
            "tbt_mean_s": stats("tbt_mean_s"),
            "tbt_p99_s": stats("tbt_p99_s"),
            "tbt_top10_s": stats("tbt_top10_s"),
            "transfer_s": stats("transfer_s"),
            "queue_s": stats("queue_s"),
            "decode_wait_s": stats("decode_wait_s"),
            "e2e_s": stats("e2e_s"),
            "decision_us": stats("decision_us"),
            "slo": {"ttft_s": slo_ttft_s, "tbt_s": slo_tbt_s},
            # attainment over all requests: a failed request misses its SLO
            "slo_attainment": len(ok) / len(rows),
            "slo_scale": scale,
            "slo_rel_attainment": float(slo_met(rows, scale).mean()),
            "slo_rel_by_scale": {f"{x:g}": float(slo_met(rows, x).mean()) for x in sorted({*scales, scale})},
            "throughput_rps": len(done) / span if span > 0 else None,
            "output_tokens_per_s": sum(r["output_tokens"] for r in done) / span if span > 0 else None,
            "gbytes_sent": sum(r["bytes_sent"] for r in done) / 1e9,
            "tier_share": {str(t): tiers.count(t) / len(tiers) for t in range(4)} if tiers else {},
        }
    )
    ages = [r["telemetry_age_s"] for r in done if r["telemetry_age_s"] is not None]
    if ages:
        a = np.array(ages)
        out["telemetry_age_s"] = {
            "mean": float(a.mean()),
            "p10": float(np.percentile(a, 10)),
            "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)),
            "max": float(a.max()),
        }
    return out


def summarize_exp(rows: list[dict], slo) -> dict:
    """`summarize` with an experiment's [slo] section (`netkv.config.SloCfg`)."""
    return summarize(rows, slo.ttft_s, slo.tbt_s, slo.scales, slo.scale)


# (column, format, (summary key, sub-key or None, optional scale) or None for policy/done)
TABLE_COLS: tuple[tuple[str, str, tuple | None], ...] = (
    ("policy", "{}", None),
    ("done", "{}", None),
    ("TTFT mean", "{:.3f}", ("ttft_s", "mean")),
    ("p50", "{:.3f}", ("ttft_s", "p50")),
    ("p90", "{:.3f}", ("ttft_s", "p90")),
    ("p99", "{:.3f}", ("ttft_s", "p99")),
    ("xfer mean", "{:.4f}", ("transfer_s", "mean")),
    ("TBT mean ms", "{:.1f}", ("tbt_mean_s", "mean", 1e3)),
    ("TBT p99 ms", "{:.1f}", ("tbt_p99_s", "p99", 1e3)),
    ("TBT top10 ms", "{:.1f}", ("tbt_top10_s", "mean", 1e3)),
    ("SLO %", "{:.1f}", ("slo_attainment", None, 100)),
    ("rel SLO %", "{:.1f}", ("slo_rel_attainment", None, 100)),
    ("cross-pod %", "{:.0f}", ("tier_share", "3", 100)),
    ("dec us p50", "{:.1f}", ("decision_us", "p50")),
)


def format_faults(summaries: dict[str, dict]) -> str:
    """The faults each policy met (trace-clock seconds), how late each change came, how long each
    restarted component took to work again, and how the policy's requests ended; "" if none."""
    lines: list[str] = []
    for pol, s in summaries.items():
        evs = s.get("faults") or []
        if not evs:
            continue
        if not lines:
            lines.append(
                f"{'policy':<18} {'fault':<18} {'down at':>8} {'back at':>8} {'late ms':>8} {'back after s':>12}"
            )
        open_: dict[str, dict] = {}
        rows = []
        for e in sorted(evs, key=lambda e: e["t"]):
            label = e.get("fault") or e.get("link", "?")
            if e.get("modelled") is False:
                rows.append([label, e["t"], None, None, None, "not modelled"])
            elif not e.get("up"):
                open_[label] = e
                rows.append([label, e["t"], None, e.get("late_s"), None, ""])
            else:
                down = open_.pop(label, None)
                row = next((r for r in reversed(rows) if r[0] == label and r[2] is None and down), None)
                if row is None:
                    row = [label, None, None, None, None, ""]
                    rows.append(row)
                row[2], row[4] = e["t"], e.get("recovery_wall_s")
                if e.get("late_s") is not None:
                    row[3] = max(abs(row[3] or 0.0), abs(e["late_s"]))

        def f(x, w, prec=2):
            return f"{'-':>{w}}" if x is None else f"{x:{w}.{prec}f}"

        for label, down, up, late, rec, note in rows:
            late_ms = None if late is None else late * 1e3
            lines.append(
                f"{pol:<18} {label:<18} {f(down, 8)} {f(up, 8)} {f(late_ms, 8, 0)} {note or f(rec, 12)}".rstrip()
            )
        why = ", ".join(f"{n} {r}" for r, n in (s.get("fail_reasons") or {}).items())
        lines.append(
            f"{pol:<18} requests: {s['completed']} completed, {s['failed']} failed" + (f" ({why})" if why else "")
        )
    return "\n".join(lines)


def format_summary(summaries: dict[str, dict]) -> str:
    """The policy table, and the fault table when there were faults."""
    faults = format_faults(summaries)
    return format_table(summaries) + (f"\n\nfaults:\n{faults}" if faults else "")


def format_table(summaries: dict[str, dict]) -> str:
    """A fixed-width table of the per-policy summaries (times in seconds unless marked)."""
    header = [c[0] for c in TABLE_COLS]
    lines = []
    for pol, s in summaries.items():
        row = []
        for name, fmt, path in TABLE_COLS:
            if name == "policy":
                row.append(pol)
            elif name == "done":
                row.append(f"{s.get('completed', 0)}/{s.get('requests', 0)}")
            elif path is not None:
                key, sub, *scale = path
                v = s.get(key)
                if sub is not None:
                    v = v.get(sub) if isinstance(v, dict) else None
                if v is None:
                    row.append("-")
                else:
                    row.append(fmt.format(v * (scale[0] if scale else 1)))
        lines.append(row)
    widths = (
        [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)] if lines else [len(h) for h in header]
    )
    fmt_row = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, lines)])


# ------------------------------------------------------------------------------------------------
# run directory


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirError(ValueError):
    """A file of a run directory is not what netkv wrote (corrupt or edited); names the file and line."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: corrupt ({e.msg} at line {e.lineno})") from None


class RunDir:
    """Layout and atomic writers of one run's output directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def create(cls, base: Path, name: str, stamp: str, experiment_path: Path | None) -> RunDir:
        root = Path(base) / f"{name}-{stamp}"
        n = 1
        while root.exists():
            n += 1
            root = Path(base) / f"{name}-{stamp}-{n}"
        root.mkdir(parents=True)
        if experiment_path is not None:
            shutil.copyfile(experiment_path, root / "experiment.toml")
        return cls(root)

    def policy_dir(self, policy: str) -> Path:
        d = self.root / policy
        d.mkdir(exist_ok=True)
        return d

    def write_requests(self, policy: str, rows: list[dict]) -> Path:
        p = self.policy_dir(policy) / "requests.jsonl"
        # orjson: a tenth of json.dumps' time on 12,031 rows (a simulated run's output step); each row
        # straight to the file (its results are over-allocated: joined, 12,031 rows took 100 MB)
        dump, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        tmp = p.with_name(p.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                for r in rows:
                    fh.write(dump(r, option=opt))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, p)
        return p

    def write_policy_summary(self, policy: str, summary: dict) -> None:
        atomic_write(self.policy_dir(policy) / "summary.json", json.dumps(summary, indent=1))

    def write_meta(self, meta: dict) -> None:
        atomic_write(self.root / "meta.json", json.dumps(meta, indent=1, default=str))

    def write_summary(self, summaries: dict[str, dict], partial: bool) -> None:
        doc = {"partial": partial, "policies": summaries}
        atomic_write(self.root / "summary.json", json.dumps(doc, indent=1))
        atomic_write(self.root / "summary.txt", format_summary(summaries) + "\n")

    def read_summary(self) -> dict:
        return _read_json(self.root / "summary.json")

    def read_meta(self) -> dict:
        return _read_json(self.root / "meta.json")

    def read_policy_summary(self, policy: str) -> dict:
        return _read_json(self.root / policy / "summary.json")

    def read_requests(self, policy: str) -> list[dict]:
        path = self.root / policy / "requests.jsonl"
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        try:  # one parse for the whole file; line by line only to say where it is corrupt
            out = json.loads("[" + ",".join(lines) + "]")
            if len(out) == len(lines) and all(isinstance(r, dict) for r in out):
                return out
        except json.JSONDecodeError:
            pass
        out = []
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise RunDirError(f"{path}:{n}: corrupt ({e.msg})") from None
        return out

"""Mooncake trace replay: JSONL loader with validation, windowing and rate scaling.

Each line is one request: {"timestamp": ms, "input_length": tokens, "output_length": tokens,
"hash_ids": [prefix-block ids]}, one block per 512 tokens. Errors name the file and the line.

Handling (documented and tested):
- a missing field, a wrong type, a negative or zero length, or len(hash_ids) != ceil(input/512)
  is an error: TraceError("FILE:LINE: ..."); so is a value past physical bounds: a timestamp past
  one year, an input over 10 M tokens (the longest context windows offered today), an output over
  1 M tokens; and a window that `rate_multiplier` stretches past one year.
- unsorted timestamps are an error by default; `sort=True` sorts stably instead (the order of equal
  timestamps is kept).
- blank lines are skipped.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from netkv.messages import show

BLOCK_TOKENS = 512
MAX_SPAN_S = 365 * 24 * 3600.0  # a replayed window spans at most a year of arrivals
MAX_INPUT_TOKENS = 10_000_000  # the longest context windows offered today are 1-10 M tokens
MAX_OUTPUT_TOKENS = 1_000_000


class TraceError(ValueError):
    """A trace file is malformed; the message starts with FILE:LINE."""


@dataclass(slots=True)
class Request:
    """One trace request after windowing and rate scaling (arrival in real-cluster seconds)."""

    id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]
    line: int = 0  # line in the trace file

    @property
    def n_blocks(self) -> int:
        return len(self.hash_ids)


def _open(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _int_field(obj: dict, key: str, where: str, minimum: int, maximum: float) -> int:
    if key not in obj:
        raise TraceError(f"{where}: missing field '{key}'")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer() and key == "timestamp":
            v = int(v)
        else:
            raise TraceError(f"{where}: field '{key}' must be an integer, got {show(v)}")
    if v < minimum:
        raise TraceError(f"{where}: field '{key}' must be >= {minimum}, got {v}")
    if v > maximum:
        raise TraceError(f"{where}: field '{key}' must be <= {maximum:.0f}, got {v}")
    return v


def parse_line(text: str, where: str) -> tuple[int, int, int, tuple[int, ...]]:
    """Validate one JSON line; returns (timestamp_ms, input, output, hash_ids)."""
    try:
        obj = orjson.loads(text)  # half json.loads' time; its errors are json.JSONDecodeError too
    except json.JSONDecodeError as e:
        raise TraceError(f"{where}: invalid JSON ({e.msg})") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise TraceError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected a JSON object")
    ts = _int_field(obj, "timestamp", where, 0, MAX_SPAN_S * 1000)
    inp = _int_field(obj, "input_length", where, 1, MAX_INPUT_TOKENS)
    out = _int_field(obj, "output_length", where, 1, MAX_OUTPUT_TOKENS)
    if "hash_ids" not in obj:
        raise TraceError(f"{where}: missing field 'hash_ids'")
    ids = obj["hash_ids"]
    # the set of the elements' types (JSON true/false parse as bool, not int): one C-level pass
    if not isinstance(ids, list) or not set(map(type, ids)) <= {int}:
        raise TraceError(f"{where}: field 'hash_ids' must be a list of integers (each within 64 bits)")
    want = math.ceil(inp / BLOCK_TOKENS)
    if len(ids) != want:
        raise TraceError(f"{where}: len(hash_ids) = {len(ids)} but ceil(input_length / {BLOCK_TOKENS}) = {want}")
    return ts, inp, out, tuple(ids)


def load_trace(
    path: str | Path,
    start_s: float = 0.0,
    duration_s: float | None = None,
    requests: int | None = None,
    rate_multiplier: float = 1.0,
    sort: bool = False,
) -> list[Request]:
    """Load a window of a Mooncake trace.

    The window starts at `start_s` (trace time) and keeps requests for `duration_s` trace seconds
    and/or the first `requests` of them (both limits apply when both are given). Arrivals are
    re-based to 0 and divided by `rate_multiplier` (2.0 replays twice as fast).
    """
    path = Path(path)
    if rate_multiplier <= 0:
        raise ValueError("rate_multiplier must be > 0")
    rows: list[tuple[int, int, int, int, tuple[int, ...]]] = []
    last_ts = -1
    try:
        fh = _open(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot open trace: {e.strerror}") from None
    name = str(path)
    start_ms = start_s * 1000.0
    end_ms = math.inf if duration_s is None else start_ms + duration_s * 1000.0
    try:
        with fh:
            for lineno, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                where = f"{name}:{lineno}"
                ts, inp, out, ids = parse_line(text, where)
                if ts < last_ts and not sort:
                    raise TraceError(
                        f"{where}: timestamp {ts} is earlier than the previous line's {last_ts} "
                        "(a trace must be sorted by timestamp; sort the file first)"
                    )
                last_ts = max(last_ts, ts)
                rows.append((ts, lineno, inp, out, ids))
                # early exit once past the window (only valid for sorted input)
                if not sort and ts >= end_ms:
                    break
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a corrupt or truncated gzip; bytes that are not UTF-8
        what = f"not UTF-8 ({e.reason})" if isinstance(e, UnicodeDecodeError) else (str(e) or type(e).__name__)
        raise TraceError(f"{path}: cannot read the trace after {len(rows)} requests: {what}") from None
    if sort:
        rows.sort(key=lambda r: (r[0], r[1]))
    selected = [r for r in rows if start_ms <= r[0] < end_ms]
    if requests is not None:
        selected = selected[:requests]
    if not selected:
        raise TraceError(
            f"{path}: the window (start {start_s} s, duration {duration_s}, requests {requests}) holds no requests"
        )
    t0 = selected[0][0]
    span = (selected[-1][0] - t0) / 1000.0 / rate_multiplier
    if span > MAX_SPAN_S:
        raise TraceError(
            f"{path}: rate_multiplier {rate_multiplier:g} stretches the window's arrivals over {span:.3g} s "
            f"(more than a year)"
        )
    return [
        Request(i, (ts - t0) / 1000.0 / rate_multiplier, inp, out, ids, line)
        for i, (ts, line, inp, out, ids) in enumerate(selected)
    ]


def scale_inputs(reqs: list[Request], scale: float) -> list[Request]:
    """The same requests with every input `scale` times as long (at least one token), for context-length
    sweeps. Prefix sharing is kept: new block j stands for original block k = floor(j / scale), and
    gets the id orig[k] * 64 + (j - first new block of k), so two requests that shared their first m
    original blocks share their first ~m x scale new ones. `scale` must be in (0, 64]."""
    if not 0 < scale <= 64:
        raise ValueError(f"input scale must be in (0, 64], got {scale}")
    if scale == 1:
        return reqs
    out = []
    for r in reqs:
        n_tok = max(1, round(r.input_tokens * scale))
        n_new = math.ceil(n_tok / BLOCK_TOKENS)
        ids = []
        for j in range(n_new):
            k = min(int(j / scale), len(r.hash_ids) - 1)
            ids.append(r.hash_ids[k] * 64 + (j - math.ceil(k * scale)))
        out.append(Request(r.id, r.arrival_s, n_tok, r.output_tokens, tuple(ids), r.line))
    return out


def window_from_config(exp) -> list[Request]:
    """Load the trace window an experiment file asks for (inputs scaled by `trace.input_scale`,
    outputs capped at `trace.max_output_tokens`)."""
    t = exp.trace
    reqs = scale_inputs(
        load_trace(exp.resolve(t.path), t.start_s, t.duration_s, t.requests, t.rate_multiplier), t.input_scale
    )
    if t.max_output_tokens is not None:  # a shorter decode for smoke runs; everything else as traced
        reqs = [replace(r, output_tokens=min(r.output_tokens, t.max_output_tokens)) for r in reqs]
    return reqs

"""Compute model: KV bytes per token, prefill and decode-step latency from a measured profile.

- Prefill latency is interpolated (piecewise linear in the number of new, uncached tokens; linear
  extrapolation past the last point) from the profile's `prefill` rows.
- Decode-step latency is a least-squares fit  t = a + b * batch + c * total_context_tokens  to the
  profile's `decode_step` rows (the rows are scattered in (batch, context), too few for a grid
  interpolation; the fit's residuals are reported by `ComputeModel.describe()`).
- A profile timed on `layers_timed` of `layers_total` layers is scaled by their ratio.
- Tensor parallelism, first order: latency / TP (ideal scaling; real TP loses 10-30% to all-reduce,
  so this flatters TP > 1) and TP x GPU memory for weights + KV.
- The H200 profile shipped is HF eager mode: decode steps carry launch overhead (~20 ms floor) and
  overstate small-batch TBT compared with a serving engine; see netkv/data/README.md.
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netkv.registry import Registry
from netkv.trace import BLOCK_TOKENS


@dataclass(frozen=True)
class ModelSpec:
    """Model shape that sets the KV cache size."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    params_b: float

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_block(self) -> int:
        return self.kv_bytes_per_token * BLOCK_TOKENS

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.dtype_bytes


# Llama 3 shapes (Meta model cards): 8B 32 layers, 70B 80 layers; both 8 KV heads of dim 128.
MODEL_PRESETS: Registry[ModelSpec] = Registry("model preset")
for _i, _m in enumerate((ModelSpec("llama3-8b", 32, 8, 128, 2, 8.03), ModelSpec("llama3-70b", 80, 8, 128, 2, 70.6))):
    MODEL_PRESETS.add(_m.name, _m, order=_i)


def model_from_config(m) -> ModelSpec:
    if m.preset is not None:
        return MODEL_PRESETS.get(m.preset)
    return ModelSpec("custom", m.layers, m.kv_heads, m.head_dim, m.dtype_bytes, m.params_b)


class ProfileError(ValueError):
    """A compute profile is malformed or lacks the rows a model needs."""


@dataclass
class Profile:
    prefill_tokens: np.ndarray  # sorted new-token counts
    prefill_s: np.ndarray  # latency in seconds (full model, TP=1)
    decode_rows: np.ndarray  # (n, 3): batch, context per sequence, latency s


def load_profile(path: str | Path, model: str) -> Profile:
    """Read a profile CSV (columns as in netkv/data/README.md) for one model."""
    path = Path(path)
    need = {"model", "phase", "batch", "context_tokens", "new_tokens", "layers_timed", "layers_total", "latency_ms"}
    pre: dict[int, list[float]] = {}
    dec = []
    try:
        fh = open(path, newline="")
    except OSError as e:
        raise ProfileError(f"{path}: cannot read profile: {e.strerror}") from None
    with fh:
        rd = csv.DictReader(fh)
        missing = need - set(rd.fieldnames or [])
        if missing:
            raise ProfileError(f"{path}: missing columns {sorted(missing)}")
        for lineno, row in enumerate(rd, 2):
            if row["model"] != model:
                continue
            try:
                scale = float(row["layers_total"]) / float(row["layers_timed"])
                lat = float(row["latency_ms"]) * scale / 1000.0
                batch, ctx, new = int(row["batch"]), int(row["context_tokens"]), int(row["new_tokens"])
            except (TypeError, ValueError):
                raise ProfileError(f"{path}:{lineno}: non-numeric value") from None
            if lat <= 0 or batch < 1 or ctx < 0 or new < 0:
                raise ProfileError(f"{path}:{lineno}: latency, batch and token counts must be positive")
            if row["phase"] == "prefill":
                pre.setdefault(new, []).append(lat)
            elif row["phase"] == "decode_step":
                dec.append((batch, ctx, lat))
            else:
                raise ProfileError(f"{path}:{lineno}: unknown phase '{row['phase']}'")
    if len(pre) < 2:
        raise ProfileError(f"{path}: needs at least 2 prefill rows for model '{model}'")
    if len(dec) < 3:
        raise ProfileError(f"{path}: needs at least 3 decode_step rows for model '{model}'")
    toks = np.array(sorted(pre), dtype=float)
    lats = np.array([np.median(pre[int(t)]) for t in toks])
    return Profile(toks, lats, np.array(dec, dtype=float))


class ComputeModel:
    """Latency and memory model of one instance (a GPU, or a TP group) serving one model."""

    def __init__(
        self,
        profile: Profile,
        model: ModelSpec,
        tensor_parallel: int = 1,
        gpu_memory_gb: float = 141.0,
        memory_utilization: float = 0.9,
        max_batch: int = 128,
        decode_kv_blocks: int | None = None,
        prefill_cache_blocks: int | None = None,
    ):
        self.model = model
        self.tp = tensor_parallel
        self.max_batch = max_batch
        self._pt = profile.prefill_tokens
        self._ps = profile.prefill_s / tensor_parallel
        self._pt_list, self._ps_list = self._pt.tolist(), self._ps.tolist()
        # beyond the largest profiled prompt: the last segment's slope
        self._slope_end = (self._ps[-1] - self._ps[-2]) / (self._pt[-1] - self._pt[-2])
        # least squares for the decode step: a + b*batch + c*total_context, coefficients >= 0
        rows = profile.decode_rows
        X = np.column_stack([np.ones(len(rows)), rows[:, 0], rows[:, 0] * rows[:, 1]])
        y = rows[:, 2] / tensor_parallel
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        if coef[0] <= 0:
            raise ProfileError("decode_step rows give a non-positive fixed step time")
        coef = np.maximum(coef, 0.0)
        self.step_a, self.step_b, self.step_c = (float(v) for v in coef)
        self.decode_fit_rel_err = float(np.max(np.abs(X @ coef - y) / y))
        usable = gpu_memory_gb * 1e9 * tensor_parallel * memory_utilization - model.weight_bytes
        if decode_kv_blocks is None:
            if usable <= 0:
                raise ProfileError(
                    f"model {model.name} ({model.weight_bytes / 1e9:.0f} GB of weights) does not fit in "
                    f"{tensor_parallel} x {gpu_memory_gb} GB; raise compute.tensor_parallel"
                )
            decode_kv_blocks = int(usable // model.kv_bytes_per_block)
        self.kv_blocks = decode_kv_blocks
        self.prefill_cache_blocks = decode_kv_blocks if prefill_cache_blocks is None else prefill_cache_blocks

    # ---- prefill -----------------------------------------------------------------------------
    def prefill_s(self, new_tokens: int) -> float:
        """Prefill latency for `new_tokens` uncached tokens (at least one token is computed)."""
        n = max(float(new_tokens), 1.0)
        t, s = self._pt_list, self._ps_list
        if n > t[-1]:
            return float(s[-1] + self._slope_end * (n - t[-1]))
        # np.interp's arithmetic (slope of the segment, from its left end), without its per-call cost
        j = bisect_right(t, n) - 1
        if j < 0:
            return s[0]
        if j == len(t) - 1 or t[j] == n:
            return s[j]
        return (s[j + 1] - s[j]) / (t[j + 1] - t[j]) * (n - t[j]) + s[j]

    def prefill_s_array(self, new_tokens: np.ndarray) -> np.ndarray:
        """Vectorised prefill_s."""
        n = np.maximum(np.asarray(new_tokens, dtype=float), 1.0)
        t, s = self._pt, self._ps
        out = np.interp(n, t, s)
        if n.max(initial=0.0) > t[-1]:
            big = n > t[-1]
            out[big] = s[-1] + self._slope_end * (n[big] - t[-1])
        return out

    # ---- decode ------------------------------------------------------------------------------
    def step_s(self, batch: int, total_context: float) -> float:
        """One decode iteration for `batch` sequences holding `total_context` tokens in all."""
        if batch <= 0:
            return 0.0
        return self.step_a + self.step_b * batch + self.step_c * total_context

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / BLOCK_TOKENS)

    def admits(self, batch: int, kv_used: int, need: int) -> bool:
        """The admission rule of a decode instance (simulator and agents alike): a sequence joins a
        running batch of `batch` sequences holding `kv_used` blocks if the batch has room and its
        `need` blocks fit; an idle instance takes any request, even one larger than its KV budget."""
        return batch == 0 or (batch < self.max_batch and kv_used + need <= self.kv_blocks)

    def describe(self) -> dict:
        return {
            "model": self.model.name,
            "kv_bytes_per_token": self.model.kv_bytes_per_token,
            "tensor_parallel": self.tp,
            "kv_blocks_per_instance": self.kv_blocks,
            "prefill_cache_blocks": self.prefill_cache_blocks,
            "prefill_ms": {int(n): round(self.prefill_s(int(n)) * 1e3, 2) for n in (512, 4096, 16384, 65536)},
            "decode_step_ms": f"{self.step_a * 1e3:.3f} + {self.step_b * 1e3:.4f} * batch + {self.step_c * 1e3:.3e} * total_context",
            "decode_fit_max_rel_err": round(self.decode_fit_rel_err, 3),
            "max_batch": self.max_batch,
        }


def compute_from_config(exp) -> ComputeModel:
    model = model_from_config(exp.model)
    c = exp.compute
    prof_model = c.profile_model or model.name
    try:
        prof = load_profile(exp.resolve(c.profile), prof_model)
    except ProfileError as e:
        if c.profile_model is None and "rows for model" in str(e):
            raise ProfileError(f"{e} (set compute.profile_model to the profile's model to use)") from None
        raise
    return ComputeModel(
        prof,
        model,
        c.tensor_parallel,
        c.gpu_memory_gb,
        c.memory_utilization,
        c.max_batch,
        c.decode_kv_blocks,
        c.prefill_cache_blocks,
    )

"""Compute model from the H200 profile."""

import numpy as np
import pytest

from netkv.compute import MODEL_PRESETS, ComputeModel, ProfileError, load_profile


def model(name="llama3-8b", tp=1):
    m = MODEL_PRESETS[name]
    return ComputeModel(load_profile(__import__("netkv").DATA_DIR / "h200-llama3-hf-eager.csv", name), m, tp)


def test_kv_bytes_per_token():
    assert MODEL_PRESETS["llama3-8b"].kv_bytes_per_token == 128 * 1024
    assert MODEL_PRESETS["llama3-70b"].kv_bytes_per_token == 320 * 1024


def test_prefill_interpolates_profile_points():
    c = model()
    assert c.prefill_s(8192) == pytest.approx(0.258374)
    assert c.prefill_s(6144) == pytest.approx((0.122098 + 0.258374) / 2)
    # beyond the last point: linear extrapolation with the last slope
    slope = (1.389835 - 0.580642) / 16384
    assert c.prefill_s(40000) == pytest.approx(1.389835 + slope * (40000 - 32768))
    assert c.prefill_s(0) == c.prefill_s(1) > 0
    assert np.allclose(
        c.prefill_s_array(np.array([0, 8192, 40000])), [c.prefill_s(0), c.prefill_s(8192), c.prefill_s(40000)]
    )


def test_70b_does_not_fit_one_gpu():
    with pytest.raises(ProfileError, match="tensor_parallel"):
        model("llama3-70b", tp=1)


def test_tp_divides_latency():
    m = MODEL_PRESETS["llama3-70b"]
    prof = load_profile(__import__("netkv").DATA_DIR / "h200-llama3-hf-eager.csv", "llama3-70b")
    c2 = ComputeModel(prof, m, 2)
    c4 = ComputeModel(prof, m, 4)
    assert c2.prefill_s(8192) == pytest.approx(0.209879 * 10 / 2)
    assert c4.prefill_s(8192) == pytest.approx(c2.prefill_s(8192) / 2)
    assert c4.kv_blocks > c2.kv_blocks > 0


def test_decode_fit_is_close_and_monotone():
    c = model()
    assert c.decode_fit_rel_err < 0.35
    assert c.step_s(64, 64 * 4096) > c.step_s(8, 8 * 4096) > c.step_s(1, 1024) > 0
    assert c.step_s(64, 64 * 4096) == pytest.approx(0.121167, rel=0.2)


def test_capacity_in_blocks():
    c = model()
    usable = 141e9 * 0.9 - 8.03e9 * 2
    assert c.kv_blocks == int(usable // (128 * 1024 * 512))


def test_profile_missing_model(data_dir):
    with pytest.raises(ProfileError, match="prefill rows"):
        load_profile(data_dir / "h200-llama3-hf-eager.csv", "nope")

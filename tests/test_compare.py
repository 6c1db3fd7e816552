"""`compare_runs` on hand-made run directories with known answers."""

import json

import pytest

from netkv.compare import METRICS, compare_runs


def _run(root, rows):
    root.mkdir()
    (root / "summary.json").write_text(json.dumps({"partial": False, "policies": {"p": {}}}))
    (root / "p").mkdir()
    full = []
    for r in rows:
        base = {m: 1.0 for m in METRICS}
        full.append({**base, "status": "completed", "tier": 3, **r})
    (root / "p" / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))
    return root


def test_relative_errors_per_request_and_over_the_same_pair(tmp_path):
    a = _run(
        tmp_path / "a",
        [
            {"id": 0, "prefill": "P", "decode": "D1", "transfer_s": 1.0},
            {"id": 1, "prefill": "P", "decode": "D1", "transfer_s": 2.0},
            {"id": 2, "prefill": "P", "decode": "D2", "transfer_s": 4.0},
            {"id": 3, "prefill": "P", "decode": "D2", "transfer_s": 1.0, "status": "failed"},
        ],
    )
    b = _run(
        tmp_path / "b",
        [
            {"id": 0, "prefill": "P", "decode": "D1", "transfer_s": 1.1},  # +10%
            {"id": 1, "prefill": "P", "decode": "D1", "transfer_s": 1.0},  # -50%
            {"id": 2, "prefill": "P", "decode": "D1", "transfer_s": 4.0},  # other choice, 0%
            {"id": 3, "prefill": "P", "decode": "D2", "transfer_s": 9.0},  # failed in A: not compared
        ],
    )
    res = compare_runs(a, b)["p"]
    assert res["requests"] == 3
    assert res["same_decode"] == pytest.approx(2 / 3)
    t = res["transfer_s"]
    assert t["mean_a"] == pytest.approx(7 / 3) and t["mean_b"] == pytest.approx(6.1 / 3)
    assert t["rel_err_p50"] == pytest.approx(0.1)
    assert t["mae"] == pytest.approx((0.1 + 1.0 + 0.0) / 3)
    same = res["transfer_s_same_pair"]
    assert same["n"] == 2 and same["rel_err_p50"] == pytest.approx(0.3)  # median of 10% and 50%
    assert same["rel_err_p95"] == pytest.approx(0.1 + 0.95 * 0.4)
    # B against A is a different question: errors relative to the other run
    back = compare_runs(b, a)["p"]["transfer_s_same_pair"]
    assert back["rel_err_p50"] == pytest.approx((0.1 / 1.1 + 1.0) / 2)


def test_runs_of_different_requests_are_refused(tmp_path):
    from netkv.compare import CompareError

    pair = {"prefill": "P", "decode": "D"}
    a = _run(
        tmp_path / "a",
        [
            {"id": 0, "arrival_s": 0.0, "input_tokens": 100, "output_tokens": 5, **pair},
            {"id": 1, "arrival_s": 1.0, "input_tokens": 200, "output_tokens": 5, **pair},
        ],
    )
    b = _run(
        tmp_path / "b",
        [
            {"id": 0, "arrival_s": 0.0, "input_tokens": 100, "output_tokens": 5, **pair},
            {"id": 1, "arrival_s": 1.0, "input_tokens": 999, "output_tokens": 5, **pair},
        ],
    )
    with pytest.raises(CompareError) as e:
        compare_runs(a, b)
    assert str(e.value) == (
        f"{a} and {b} replay different requests (p, request 1: arrival, input, output = "
        "(1.0, 200, 5) vs (1.0, 999, 5)); compare runs of one experiment and trace window"
    )
    assert compare_runs(a, a)["p"]["requests"] == 2

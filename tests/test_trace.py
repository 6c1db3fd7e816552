"""Mooncake trace loading: validation errors name the line; windowing; rate scaling."""

import json

import pytest

from netkv.trace import TraceError, load_trace

from conftest import SHARED


def write(tmp_path, rows, raw=None):
    p = tmp_path / "t.jsonl"
    p.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    return p


def ok(ts, n=600, out=10, ids=None):
    return {"timestamp": ts, "input_length": n, "output_length": out,
            "hash_ids": ids if ids is not None else list(range((n + 511) // 512))}


@pytest.mark.parametrize("bad,msg", [
    ({"input_length": 600, "output_length": 1, "hash_ids": [1, 2]}, "missing field 'timestamp'"),
    ({"timestamp": 5, "input_length": "600", "output_length": 1, "hash_ids": [1, 2]}, "'input_length' must be an integer"),
    ({"timestamp": 5, "input_length": -3, "output_length": 1, "hash_ids": []}, "'input_length' must be >= 1"),
    ({"timestamp": 5, "input_length": 600, "output_length": 0, "hash_ids": [1, 2]}, "'output_length' must be >= 1"),
    ({"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1]}, "len(hash_ids) = 1"),
    ({"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": "ab"}, "list of integers"),
    ({"timestamp": 5, "input_length": 600, "output_length": 1}, "missing field 'hash_ids'"),
])
def test_errors_name_file_and_line(tmp_path, bad, msg):
    p = write(tmp_path, [ok(0), ok(1), bad])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert f"{p}:3:" in str(e.value)
    assert msg in str(e.value)


def test_invalid_json_names_line(tmp_path):
    p = write(tmp_path, None, raw=json.dumps(ok(0)) + "\n{oops\n")
    with pytest.raises(TraceError, match=r":2: invalid JSON"):
        load_trace(p)


def test_unsorted_is_an_error_unless_sorting(tmp_path):
    p = write(tmp_path, [ok(0), ok(2000), ok(1000)])
    with pytest.raises(TraceError, match=r":3: timestamp 1000 is earlier"):
        load_trace(p)
    reqs = load_trace(p, sort=True)
    assert [r.arrival_s for r in reqs] == [0.0, 1.0, 2.0]
    assert [r.line for r in reqs] == [1, 3, 2]


def test_window_and_rate(tmp_path):
    p = write(tmp_path, [ok(t * 1000) for t in range(10)])
    reqs = load_trace(p, start_s=2, duration_s=4)
    assert [r.arrival_s for r in reqs] == [0, 1, 2, 3]
    reqs = load_trace(p, start_s=2, duration_s=4, rate_multiplier=2, requests=3)
    assert [r.arrival_s for r in reqs] == [0, 0.5, 1.0]
    with pytest.raises(TraceError, match="holds no requests"):
        load_trace(p, start_s=100)


def test_blank_lines_skipped(tmp_path):
    p = write(tmp_path, None, raw=json.dumps(ok(0)) + "\n\n" + json.dumps(ok(5)) + "\n")
    assert len(load_trace(p)) == 2


def test_shipped_trace_is_complete(data_dir):
    reqs = load_trace(data_dir / "mooncake-conversation.jsonl.gz")
    assert len(reqs) == 12031
    mean_in = sum(r.input_tokens for r in reqs) / len(reqs)
    assert abs(mean_in - 12035) < 1


@pytest.mark.skipif(not (SHARED / "data/mooncake/conversation_trace.jsonl").exists(), reason="no ../shared")
def test_shipped_trace_equals_shared(data_dir):
    a = load_trace(data_dir / "mooncake-conversation.jsonl.gz")
    b = load_trace(SHARED / "data/mooncake/conversation_trace.jsonl")
    assert [(r.arrival_s, r.input_tokens, r.hash_ids) for r in a] == [(r.arrival_s, r.input_tokens, r.hash_ids) for r in b]

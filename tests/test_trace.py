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
    return {
        "timestamp": ts,
        "input_length": n,
        "output_length": out,
        "hash_ids": ids if ids is not None else list(range((n + 511) // 512)),
    }


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"input_length": 600, "output_length": 1, "hash_ids": [1, 2]}, "missing field 'timestamp'"),
        (
            {"timestamp": 5, "input_length": "600", "output_length": 1, "hash_ids": [1, 2]},
            "'input_length' must be an integer",
        ),
        ({"timestamp": 5, "input_length": -3, "output_length": 1, "hash_ids": []}, "'input_length' must be >= 1"),
        ({"timestamp": 5, "input_length": 600, "output_length": 0, "hash_ids": [1, 2]}, "'output_length' must be >= 1"),
        ({"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": [1]}, "len(hash_ids) = 1"),
        ({"timestamp": 5, "input_length": 600, "output_length": 1, "hash_ids": "ab"}, "list of integers"),
        ({"timestamp": 5, "input_length": 600, "output_length": 1}, "missing field 'hash_ids'"),
    ],
)
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
    assert [(r.arrival_s, r.input_tokens, r.hash_ids) for r in a] == [
        (r.arrival_s, r.input_tokens, r.hash_ids) for r in b
    ]


def test_more_malformed_lines_name_the_line(tmp_path):
    cases = [
        ("[1, 2]", "expected a JSON object"),
        (
            json.dumps({**ok(5), "hash_ids": [True, 2]}),
            "field 'hash_ids' must be a list of integers (each within 64 bits)",
        ),
        (json.dumps({**ok(5), "hash_ids": 7}), "field 'hash_ids' must be a list of integers (each within 64 bits)"),
        (json.dumps({**ok(5), "hash_ids": [1.0]}), "field 'hash_ids' must be a list of integers (each within 64 bits)"),
        # the JSON parser (orjson) reads integers past 64 bits as floats
        (
            json.dumps({**ok(5), "hash_ids": [2**64]}),
            "field 'hash_ids' must be a list of integers (each within 64 bits)",
        ),
        (json.dumps({**ok(5), "input_length": 600.0}), "field 'input_length' must be an integer, got 600.0"),
        (json.dumps({**ok(5), "timestamp": 5.5}), "field 'timestamp' must be an integer, got 5.5"),
        (json.dumps({**ok(5), "output_length": True}), "field 'output_length' must be an integer, got True"),
    ]
    for line, msg in cases:
        p = write(tmp_path, None, raw=json.dumps(ok(0)) + "\n" + line + "\n")
        with pytest.raises(TraceError) as e:
            load_trace(p)
        assert str(e.value) == f"{p}:2: {msg}"


def test_an_integral_float_timestamp_is_accepted(tmp_path):
    p = write(tmp_path, [ok(0), {**ok(0), "timestamp": 1500.0}])
    assert [r.arrival_s for r in load_trace(p)] == [0.0, 1.5]


def test_exact_messages_for_unsorted_missing_and_bad_rate(tmp_path):
    p = write(tmp_path, [ok(10), ok(5)])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert str(e.value) == (
        f"{p}:2: timestamp 5 is earlier than the previous line's 10 "
        "(a trace must be sorted by timestamp; sort the file first)"
    )
    with pytest.raises(TraceError) as e:
        load_trace(tmp_path / "nope.jsonl")
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'}: cannot open trace: No such file or directory"
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=r"^rate_multiplier must be > 0$"):
            load_trace(p, rate_multiplier=bad)


def test_sorting_keeps_the_file_order_of_equal_timestamps(tmp_path):
    rows = [ok(2000, n=100), ok(1000, n=900), ok(1000, n=300), ok(1000, n=600)]
    reqs = load_trace(write(tmp_path, rows), sort=True)
    assert [r.input_tokens for r in reqs] == [900, 300, 600, 100] and [r.line for r in reqs] == [2, 3, 4, 1]


def test_reading_stops_at_the_end_of_the_window(tmp_path):
    """A sorted trace is read only up to the first line at or past the window's end: what follows
    (here a malformed line) is never parsed."""
    raw = "".join(json.dumps(ok(t)) + "\n" for t in (0, 1000, 2000)) + "{oops\n"
    p = write(tmp_path, None, raw=raw)
    assert [r.arrival_s for r in load_trace(p, duration_s=2.0)] == [0.0, 1.0]
    with pytest.raises(TraceError, match="invalid JSON"):
        load_trace(p, duration_s=2.5)


def test_the_window_start_is_in_trace_seconds(tmp_path):
    p = write(tmp_path, [ok(t) for t in (999, 1000, 1001, 4000)])
    reqs = load_trace(p, start_s=1.0)
    assert [r.line for r in reqs] == [2, 3, 4] and [r.arrival_s for r in reqs] == [0.0, 0.001, 3.0]


def test_an_experiment_window_applies_every_trace_key(tmp_path):
    from netkv.trace import window_from_config

    from conftest import make_exp

    p = write(tmp_path, [ok(t * 1000) for t in range(20)])
    exp = make_exp(trace={"path": str(p), "start_s": 2.0, "duration_s": 10.0, "requests": 6, "rate_multiplier": 4.0})
    reqs = window_from_config(exp)
    assert [r.line for r in reqs] == [3, 4, 5, 6, 7, 8] and reqs[-1].arrival_s == 1.25
    exp = make_exp(trace={"path": str(p), "duration_s": 3.0, "rate_multiplier": 1.0})
    exp.trace.requests = None
    assert len(window_from_config(exp)) == 3


def test_unreadable_files_are_trace_errors(tmp_path):
    import gzip

    good = "".join(json.dumps(ok(t)) + "\n" for t in range(0, 50000, 1000)).encode()
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"this is not gzip at all\n" * 10)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(good)[:-20])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(ok(0)).encode() + b'\n{"caf\xe9": 1}\n')
    for p, says in ((corrupt, "Not a gzipped file"), (truncated, "end-of-stream marker"), (latin, "not UTF-8")):
        with pytest.raises(TraceError) as e:
            load_trace(p)
        msg = str(e.value)
        assert msg.startswith(f"{p}: cannot read the trace after ") and says in msg and "\n" not in msg


@pytest.mark.parametrize(
    "field,value,limit",
    [
        ("timestamp", 10**20, "31536000000"),
        ("input_length", 10**7 + 1, "10000000"),
        ("output_length", 10**12, "1000000"),
    ],
)
def test_values_past_physical_bounds_are_refused_with_the_line(tmp_path, field, value, limit):
    """A far-future timestamp or a huge length used to make the simulator run for ever."""
    row = (
        ok(0)
        if field != "input_length"
        else {**ok(0), "input_length": value, "hash_ids": list(range(-(-value // 512)))}
    )
    row = {**row, field: value}
    p = write(tmp_path, [ok(0), row])
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert str(e.value) == f"{p}:2: field '{field}' must be <= {limit}, got {value}"


def test_a_rate_multiplier_that_stretches_the_window_past_a_year_is_refused(tmp_path):
    p = write(tmp_path, [ok(0), ok(3000)])
    assert load_trace(p, rate_multiplier=1e-4)[-1].arrival_s == pytest.approx(3e4)
    with pytest.raises(TraceError) as e:
        load_trace(p, rate_multiplier=1e-300)
    assert (
        str(e.value) == f"{p}: rate_multiplier 1e-300 stretches the window's arrivals over 3e+300 s (more than a year)"
    )


def test_scaled_inputs_keep_their_shared_prefixes_and_block_counts():
    from netkv.trace import Request, scale_inputs

    a = Request(0, 0.0, 2048, 5, (1, 2, 3, 4))
    b = Request(1, 1.0, 2048, 5, (1, 2, 9, 10))  # shares its first 2 of 4 blocks with a
    for s in (0.5, 2.0, 3.0):
        x, y = scale_inputs([a, b], s)
        assert x.input_tokens == round(2048 * s) and len(x.hash_ids) == -(-x.input_tokens // 512)
        shared = next(i for i, (p, q) in enumerate(zip(x.hash_ids, y.hash_ids)) if p != q)
        assert shared == int(2 * s)  # the shared prefix scales with the input
        assert len(set(x.hash_ids)) == len(x.hash_ids)  # no block twice in one request
        assert (x.output_tokens, x.arrival_s) == (5, 0.0)
    assert scale_inputs([a], 1.0)[0] is a
    with pytest.raises(ValueError, match="input scale"):
        scale_inputs([a], 0.0)


def test_max_output_tokens_caps_every_output_and_nothing_else():
    from netkv.trace import window_from_config

    from conftest import make_exp

    full = window_from_config(make_exp(trace={"requests": 30}))
    capped = window_from_config(make_exp(trace={"requests": 30, "max_output_tokens": 20}))
    assert any(r.output_tokens > 20 for r in full)
    assert [r.output_tokens for r in capped] == [min(r.output_tokens, 20) for r in full]
    assert [(r.arrival_s, r.input_tokens, r.hash_ids) for r in capped] == [
        (r.arrival_s, r.input_tokens, r.hash_ids) for r in full
    ]
    with pytest.raises(ValueError, match="trace.max_output_tokens: must be > 0"):
        make_exp(trace={"max_output_tokens": 0})

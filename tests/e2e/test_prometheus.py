"""The Prometheus fixture: backfill from a trace, remote write, queries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from e2e import trace_backfill
from e2e.promstack import PrometheusServer, encode_write_request, snappy_literal

pytestmark = pytest.mark.e2e

TRACES = trace_backfill.traces_dir()


def _small_trace(tmp_path: Path) -> Path:
    rows = ["timestamp,requests,input_tokens,output_tokens"]
    for minute in range(180):
        tokens = "" if minute % 7 == 0 else str(minute * 10)
        rows.append(f"2000-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z,{minute % 13},{tokens},")
    path = tmp_path / "tiny_per_minute.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_openmetrics_text(tmp_path: Path) -> None:
    rows = trace_backfill.read_trace(_small_trace(tmp_path))
    text = "".join(trace_backfill.to_openmetrics(rows, {"trace": "tiny"}, shift=60))
    assert text.endswith("# EOF\n")
    assert 'peakwise_trace_requests_per_minute{trace="tiny"} 0 946684860\n' in text
    assert "peakwise_trace_output_tokens_per_minute" not in text  # empty column
    # The counter is the running sum.
    total = sum(r.requests for r in rows)
    assert f'peakwise_trace_requests_total{{trace="tiny"}} {total:.0f}' in text


def test_snappy_literal_framing() -> None:
    assert snappy_literal(b"") == b"\x00"
    assert snappy_literal(b"abc") == b"\x03\x08abc"
    big = snappy_literal(bytes(70000))
    assert big[:3] == bytes([0xF0, 0xA2, 0x04])  # varint 70000
    assert encode_write_request({(("__name__", "m"),): [(1.0, 2.0)]}).startswith(b"\x0a")


def test_backfill_history_matches_trace(prometheus: PrometheusServer, tmp_path: Path) -> None:
    trace = _small_trace(tmp_path)
    rows = trace_backfill.read_trace(trace)
    result = prometheus.backfill_trace(trace, labels={"service": "tiny-backfill"})
    assert result.samples == 180
    assert result.end - result.start == 179 * 60
    assert result.shift_seconds % 60 == 0
    assert result.end <= time.time()

    sel = 'peakwise_trace_requests_per_minute{service="tiny-backfill"}'
    data = prometheus.query_range(sel, result.start, result.end, 60)
    (series,) = data["result"]
    assert series["metric"]["trace"] == "tiny_per_minute"
    got = [(int(float(t)), float(v)) for t, v in series["values"]]
    want = [(r.ts + result.shift_seconds, r.requests) for r in rows]
    assert got == want

    tokens = prometheus.query_range(
        'peakwise_trace_input_tokens_per_minute{service="tiny-backfill"}',
        result.start,
        result.end,
        60,
    )["result"][0]["values"]
    # Rows without tokens have no sample; a range query looks back up to 5 minutes, so
    # check only the instants that carry their own sample.
    by_ts = {int(float(t)): float(v) for t, v in tokens}
    for r in rows:
        if r.input_tokens is not None:
            assert by_ts[r.ts + result.shift_seconds] == r.input_tokens

    rate = prometheus.query(
        'rate(peakwise_trace_requests_total{service="tiny-backfill"}[10m])', at=result.end
    )["result"]
    assert rate and float(rate[0]["value"][1]) > 0


@pytest.mark.slow
def test_servegen_fourteen_days(prometheus: PrometheusServer) -> None:
    trace = TRACES / "servegen_m-mid_per_minute.csv"
    if not trace.exists():
        pytest.fail(f"shared trace missing: {trace}")
    rows = trace_backfill.read_trace(trace)
    result = prometheus.backfill_trace(trace, labels={"service": "servegen"})
    assert result.samples == len(rows) == 20160
    sel = 'peakwise_trace_requests_per_minute{service="servegen"}'
    got: list[tuple[int, float]] = []
    # At most 11,000 points per range query: fetch in day-long chunks.
    start = result.start
    while start <= result.end:
        stop = min(start + 86400 - 60, result.end)
        (series,) = prometheus.query_range(sel, start, stop, 60)["result"]
        got += [(int(float(t)), float(v)) for t, v in series["values"]]
        start = stop + 60
    assert got == [(r.ts + result.shift_seconds, r.requests) for r in rows]


def test_remote_write_push(prometheus: PrometheusServer) -> None:
    now = int(time.time())
    old = now - 3 * 86400  # inside the out-of-order window
    samples = [(float(old + 60 * i), float(i * i)) for i in range(30)]
    prometheus.push([({"__name__": "peakwise_test_pushed", "case": "remote-write"}, samples)])
    data = prometheus.query_range(
        'peakwise_test_pushed{case="remote-write"}', old, old + 29 * 60, 60
    )
    (series,) = data["result"]
    assert [(int(float(t)), float(v)) for t, v in series["values"]] == [
        (int(t), v) for t, v in samples
    ]

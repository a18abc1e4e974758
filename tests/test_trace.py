"""The trace reader: good traces become demand per second, bad ones a one-line TraceError."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from peakwise.trace import (
    FAMILY_PEAKS,
    FILE_COLUMNS,
    TRACE_FAMILIES,
    WOBBLE_PERSISTENCE,
    WOBBLE_STEP,
    TraceError,
    TraceFamily,
    TraceTable,
    demand_from_table,
    family_level,
    implausible_zero_runs,
    parse_trace_table,
    read_trace,
    synthesize_family,
    synthesize_trace,
    write_trace_csv,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPO_ROOT.parent / "shared" / "traces"
HEADER = "timestamp,requests,input_tokens,output_tokens"


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(*rows: str) -> str:
    return "\n".join((HEADER, *rows)) + "\n"


def test_counts_per_minute_become_demand_per_second(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _rows(
            "2024-03-01T10:00:00Z,120,60000,6000",
            "2024-03-01T10:01:00Z,180,90000,12000",
        ),
    )
    trace = read_trace(path)
    assert trace.series.start == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert trace.series.step_seconds == 60
    np.testing.assert_allclose(trace.series.values, [2.0, 3.0])
    assert trace.unit == "requests/s"
    assert (trace.rows, trace.missing_minutes, trace.empty_cells) == (2, 0, 0)
    assert trace.end == datetime(2024, 3, 1, 10, 1, tzinfo=UTC)

    np.testing.assert_allclose(read_trace(path, "input_tokens").series.values, [1000, 1500])
    np.testing.assert_allclose(read_trace(path, "output_tokens").series.values, [100, 200])
    tokens = read_trace(path, "tokens")
    np.testing.assert_allclose(tokens.series.values, [1100, 1700])
    assert tokens.unit == "tokens/s"


def test_missing_minutes_are_gaps_not_zero(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _rows(
            "2024-03-01T10:00:00Z,60,,",
            "2024-03-01T10:03:00Z,120,,",
            "2024-03-01T10:04:00Z,180,,",
        ),
    )
    trace = read_trace(path)
    assert len(trace.series) == 5
    np.testing.assert_array_equal(trace.series.values[[0, 3, 4]], [1.0, 2.0, 3.0])
    assert np.isnan(trace.series.values[1:3]).all()
    assert (trace.missing_minutes, trace.gap_minutes, trace.rows) == (2, 2, 3)


def test_empty_and_nan_cells_are_gaps(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _rows(
            "2024-03-01T10:00:00Z,60,600,60",
            "2024-03-01T10:01:00Z,,600,60",
            "2024-03-01T10:02:00Z,NaN,600,",
            "2024-03-01T10:03:00Z,0,0,0",
        ),
    )
    requests = read_trace(path)
    np.testing.assert_array_equal(np.isnan(requests.series.values), [False, True, True, False])
    assert requests.series.values[3] == 0.0  # a real zero stays zero
    assert requests.empty_cells == 2
    # tokens = input + output: a gap in either is a gap in the sum.
    tokens = read_trace(path, "tokens")
    np.testing.assert_array_equal(np.isnan(tokens.series.values), [False, False, True, False])


def test_columns_may_be_left_out_or_reordered(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "requests,timestamp\n60,2024-03-01T10:00:00Z\n120,2024-03-01T10:01:00Z\n"
    )
    np.testing.assert_allclose(read_trace(path).series.values, [1.0, 2.0])
    with pytest.raises(TraceError, match="column input_tokens has no values"):
        read_trace(path, "input_tokens")


def test_timestamps_with_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _rows(
            "2024-03-01T12:00:00+02:00,60,,",
            "2024-03-01T10:01:00,60,,",  # no offset: taken as UTC
        ),
    )
    trace = read_trace(path)
    assert trace.series.start == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert len(trace.series) == 2


def test_zero_runs_become_gaps_only_when_asked(tmp_path: Path) -> None:
    counts = [5, 0, 0, 0, 7, 0, 8]
    lines = [f"2024-03-01T10:{m:02d}:00Z,{c},," for m, c in enumerate(counts)]
    path = _write(tmp_path, _rows(*lines))
    plain = read_trace(path)
    assert not np.isnan(plain.series.values).any()
    assert plain.zero_gap_minutes == 0
    gapped = read_trace(path, zero_is_gap_min_run=3)
    np.testing.assert_array_equal(
        np.isnan(gapped.series.values), [False, True, True, True, False, False, False]
    )
    assert gapped.zero_gap_minutes == 3
    assert gapped.series.values[5] == 0.0  # a single idle minute is kept
    with pytest.raises(TraceError, match="zero_is_gap_min_run must be at least 1"):
        read_trace(path, zero_is_gap_min_run=0)


BAD_TRACES = [
    pytest.param("", "empty file", id="empty-file"),
    pytest.param("\n\n", "empty file", id="blank-lines-only"),
    pytest.param(HEADER + "\n", "no data rows", id="header-only"),
    pytest.param(
        "timestamp,requests,gpu_hours\n2024-03-01T10:00:00Z,1,2\n",
        "unknown column(s) 'gpu_hours'; expected timestamp,requests,input_tokens,output_tokens",
        id="unknown-column",
    ),
    pytest.param("requests\n5\n", "no timestamp column", id="no-timestamp-column"),
    pytest.param(
        _rows("2024-03-01T10:00:00Z,5,,", "2024-03-01T10:01:00Z,-3,,"),
        ":3: requests is negative (-3)",
        id="negative",
    ),
    pytest.param(
        _rows("2024-03-01T10:00:00Z,5,-1,"),
        ":2: input_tokens is negative",
        id="negative-tokens",
    ),
    pytest.param(_rows("2024-03-01T10:00:00Z,many,,"), ":2: requests 'many'", id="not-a-number"),
    pytest.param(_rows("2024-03-01T10:00:00Z,inf,,"), "not a finite number", id="infinite"),
    pytest.param(
        _rows("01/03/2024 10:00,5,,"), ":2: timestamp '01/03/2024 10:00' is not ISO", id="non-iso"
    ),
    pytest.param(
        _rows("2024-03-01T10:01:00Z,5,,", "2024-03-01T10:00:00Z,5,,"),
        ":3: timestamp is earlier than the one on line 2",
        id="unsorted",
    ),
    pytest.param(
        _rows("2024-03-01T10:00:00Z,5,,", "2024-03-01T10:01:00Z,5,,", "2024-03-01T10:01:00Z,6,,"),
        ":4: timestamp repeats the one on line 3",
        id="duplicate",
    ),
    pytest.param(
        _rows("2024-03-01T10:00:00Z,5,,", "2024-03-01T10:00:30Z,5,,"),
        ":3: timestamp is 30 s after the previous row; the step must be 60 s",
        id="off-grid",
    ),
    pytest.param(
        _rows(*(f"2024-03-01T10:{m:02d}:00Z,5,," for m in range(0, 30, 5))),
        ": rows are 300 s apart; the step must be 60 s",
        id="five-minute-step",
    ),
    pytest.param(_rows("2024-03-01T10:00:00Z,5"), ":2: 2 fields, expected 4", id="short-row"),
]


@pytest.mark.parametrize(("text", "message"), BAD_TRACES)
def test_bad_traces_raise_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    error = str(caught.value)
    assert message in error
    assert error.startswith(str(path)), "the message names the file"
    assert "\n" not in error
    assert isinstance(caught.value, ValueError)


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read the trace"):
        read_trace(tmp_path / "nope.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(TraceError, match="not a UTF-8 text file"):
        read_trace(binary)


def test_unknown_demand_column_is_rejected(tmp_path: Path) -> None:
    table = parse_trace_table(_rows("2024-03-01T10:00:00Z,120,60000,6000").splitlines())
    with pytest.raises(TraceError, match="choose one of requests, input_tokens"):
        demand_from_table(table, "gpus")  # type: ignore[arg-type]


def test_synthetic_trace_round_trips_through_csv(tmp_path: Path) -> None:
    table = synthesize_trace(days=14, seed=7)
    path = write_trace_csv(tmp_path / "sub" / "synthetic.csv", table)
    assert path.read_text().splitlines()[0] == ",".join(FILE_COLUMNS)
    trace = read_trace(path)
    assert len(trace.series) == 14 * 1440
    assert trace.gap_minutes == 0
    np.testing.assert_allclose(trace.series.values, table.requests / 60)
    np.testing.assert_allclose(
        read_trace(path, "tokens").series.values * 60, table.counts("tokens")
    )


def test_synthetic_trace_is_reproducible_and_seed_dependent() -> None:
    a, b = synthesize_trace(days=2, seed=3), synthesize_trace(days=2, seed=3)
    np.testing.assert_array_equal(a.requests, b.requests)
    assert not np.array_equal(a.requests, synthesize_trace(days=2, seed=4).requests)
    with pytest.raises(ValueError, match="days must be at least 1"):
        synthesize_trace(days=0)


def test_synthetic_trace_has_the_shape_of_a_chat_service() -> None:
    peak = 3000.0
    table = synthesize_trace(days=14, seed=1, peak_requests_per_minute=peak)
    # 2024-01-01 is a Monday: days 5, 6, 12, 13 are the weekend.
    by_day = table.requests.reshape(14, 1440)
    weekday = by_day[[0, 1, 2, 3, 4, 7, 8, 9, 10, 11]]
    weekend = by_day[[5, 6, 12, 13]]
    hourly = weekday.reshape(10, 24, 60).mean(axis=(0, 2))
    assert hourly.argmax() in (19, 20, 21), "evening peak"
    assert hourly[3] < 0.2 * hourly.max(), "night trough"
    assert hourly[9] > 2.5 * hourly[7], "sharp morning ramp"
    assert weekend.mean() < 0.8 * weekday.mean(), "weekend dip"
    # Noise and bursts: no two minutes alike, some minute well above the day's smooth peak.
    assert np.unique(table.requests).size > 1000
    assert table.requests.max() > 1.1 * peak
    assert (table.input_tokens > table.output_tokens).mean() > 0.99


def test_reading_two_weeks_is_fast(tmp_path: Path) -> None:
    path = write_trace_csv(tmp_path / "two-weeks.csv", synthesize_trace(days=14, seed=2))
    began = time.perf_counter()
    trace = read_trace(path, "tokens")
    elapsed = time.perf_counter() - began
    assert len(trace.series) == 20160
    assert elapsed < 1.0, f"reading 20,160 rows took {elapsed:.2f} s"


def test_shared_traces_load() -> None:
    if not SHARED_TRACES.is_dir():
        pytest.fail(f"{SHARED_TRACES} is missing: CI clones shared/ beside the repository")
    servegen = read_trace(SHARED_TRACES / "servegen_m-mid_per_minute.csv")
    assert len(servegen.series) == 20160
    assert servegen.gap_minutes == 0 and servegen.missing_minutes == 0
    assert math.isclose(float(np.nanmax(servegen.series.values)), 206685.6 / 60)
    # Its eight hour-aligned zero runs (10 to 230 minutes) are missing data.
    gapped = read_trace(SHARED_TRACES / "servegen_m-mid_per_minute.csv", zero_is_gap_min_run=10)
    assert gapped.zero_gap_minutes == 840 == gapped.gap_minutes
    with pytest.raises(TraceError, match="column tokens has no values"):
        read_trace(SHARED_TRACES / "servegen_m-mid_per_minute.csv", "tokens")

    for name in ("azure_llm_2023_conv_per_minute.csv", "mooncake_conversation_per_minute.csv"):
        tokens = read_trace(SHARED_TRACES / name, "tokens")
        assert 55 <= len(tokens.series) <= 61
        assert tokens.gap_minutes == 0
        assert float(tokens.series.values.max()) > float(
            read_trace(SHARED_TRACES / name).series.values.max()
        )


def test_synth_trace_command(tmp_path: Path) -> None:
    out = tmp_path / "synthetic.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "peakwise",
            "synth-trace",
            "--days",
            "2",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "2880 minutes" in result.stdout
    np.testing.assert_allclose(
        read_trace(out).series.values * 60, synthesize_trace(days=2, seed=5).requests
    )


def test_malformed_csv_and_absurd_spans_are_clear_errors(tmp_path: Path) -> None:
    # A stray quote swallows the rest of the file into one huge field.
    huge = _write(tmp_path, _rows('2024-03-01T10:00:00Z,"5,,', "1" * 200_000), "quote.csv")
    with pytest.raises(TraceError, match=r"quote\.csv:\d+: not valid CSV \(field larger"):
        read_trace(huge)
    # A mistyped year on the last row must not allocate decades of NaN.
    typo = _write(
        tmp_path,
        _rows("2024-03-01T10:00:00Z,5,,", "2024-03-01T10:01:00Z,5,,", "2204-03-01T10:02:00Z,5,,"),
        "typo.csv",
    )
    with pytest.raises(TraceError, match=r"typo\.csv:4: the trace would span"):
        read_trace(typo)


def test_zero_runs_that_idle_time_cannot_explain_are_found() -> None:
    busy = synthesize_trace(days=1, seed=3).requests.copy()  # hundreds of requests a minute
    busy[600:615] = 0.0  # a collector outage: 15 minutes of zeros in the middle of the day
    busy[900:905] = 0.0  # too short to judge
    runs = implausible_zero_runs(busy)
    assert [(r.start, r.minutes) for r in runs] == [(600, 15)] and runs[0].expected > 1000
    kept = demand_from_table(_table(busy))
    assert kept.zero_runs == runs and kept.gap_minutes == 0  # found, not acted on
    gapped = demand_from_table(_table(busy), implausible_zeros_as_gaps=True)
    assert gapped.zero_gap_minutes == 15 and np.isnan(gapped.series.values[600:615]).all()
    # A sparse service's quiet nights are idle time: nothing is found there.
    sparse = synthesize_family("sparse", days=3, seed=3).requests
    assert (sparse == 0).sum() > 500 and implausible_zero_runs(sparse) == ()


def test_servegen_zero_runs_are_found_as_the_missing_data_they_are() -> None:
    if not SHARED_TRACES.is_dir():
        pytest.fail(f"{SHARED_TRACES} is missing: CI clones shared/ beside the repository")
    path = SHARED_TRACES / "servegen_m-mid_per_minute.csv"
    auto = read_trace(path, implausible_zeros_as_gaps=True)
    fixed = read_trace(path, zero_is_gap_min_run=10)
    assert len(auto.zero_runs) == 8 and auto.zero_gap_minutes == 840
    np.testing.assert_array_equal(np.isnan(auto.series.values), np.isnan(fixed.series.values))


def _table(requests: np.ndarray) -> TraceTable:
    nothing = np.full(requests.shape[0], np.nan)
    ones = np.ones(requests.shape[0], dtype=np.bool_)
    return TraceTable(datetime(2024, 1, 1, tzinfo=UTC), requests, nothing, nothing, ones)


def test_each_trace_family_has_its_shape() -> None:
    def per_day(requests: np.ndarray) -> np.ndarray:
        return requests.reshape(-1, 1440).mean(axis=1)

    weekly = synthesize_family("weekly", seed=4).requests
    np.testing.assert_array_equal(weekly, synthesize_trace(14, 4).requests)
    assert per_day(weekly)[5:7].mean() < 0.8 * per_day(weekly)[:5].mean()  # the weekend
    growth = per_day(synthesize_family("growth", seed=4).requests)
    assert 1.25 < growth[7:12].mean() / growth[0:5].mean() < 1.6  # 2 ** (7 / 14) a week later
    shifted = per_day(synthesize_family("level-shift", seed=4).requests)
    assert shifted[10:12].mean() > 1.5 * shifted[3:5].mean()
    spikes = synthesize_family("spikes", seed=4).requests
    rise = spikes[2:] / np.maximum(spikes[:-2], 1.0)
    assert (rise > 1.5).sum() >= 20  # sudden spikes, several a day
    launch = synthesize_family("launch", seed=4).requests
    assert launch.shape[0] == 1440 and launch[: 9 * 60].mean() < 0.1 * launch[12 * 60 :].mean()
    sparse = synthesize_family("sparse", seed=4).requests
    assert sparse.max() < 30 and (sparse == 0).mean() > 0.1
    again = synthesize_family("spikes", seed=4).requests
    np.testing.assert_array_equal(again, spikes)  # reproducible from the seed
    with pytest.raises(ValueError, match="unknown trace family"):
        synthesize_family("flat")  # type: ignore[arg-type]


def test_synth_trace_writes_a_family(tmp_path: Path) -> None:
    out = tmp_path / "launch.csv"
    cmd = [sys.executable, "-m", "peakwise", "synth-trace", "--family", "launch", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "1440 minutes" in result.stdout
    np.testing.assert_allclose(
        read_trace(out).series.values * 60, synthesize_family("launch").requests
    )


@pytest.mark.parametrize("days", [1, 2, 3, 6])
def test_a_level_shift_shorter_than_two_weeks_steps_up_within_it(days: int) -> None:
    # Was: under a week it raised numpy's "low >= high" (the step was drawn in days 6-9).
    shifted = synthesize_family("level-shift", days, seed=3).requests
    same = synthesize_family("weekly", days, seed=3).requests  # the same cycle, no step
    n = days * 1440
    assert shifted.shape[0] == n
    before = shifted[: 2 * n // 5].sum() / same[: 2 * n // 5].sum()
    after = shifted[-n // 3 :].sum() / same[-n // 3 :].sum()
    assert 0.9 < before < 1.1
    assert 1.6 < after < 2.0


@pytest.mark.parametrize("family", TRACE_FAMILIES)
def test_a_familys_level_is_what_its_counts_are_drawn_from(family: TraceFamily) -> None:
    level = family_level(family, 3, seed=7)
    # Its parts make it up ...
    parts = level.offset + level.cycle * np.exp(level.wobble) + level.bursts
    np.testing.assert_allclose(parts, level.level, rtol=1e-12, atol=1e-12)
    # ... and the counts of the same seed are Poisson around the peak times it.
    counts = synthesize_family(family, 3, seed=7).requests
    mean = FAMILY_PEAKS[family] * level.level
    z = (counts.sum() - mean.sum()) / math.sqrt(mean.sum())
    assert abs(z) < 5
    # The wobble is the AR(1) its constants say: what is left after the persistence has
    # the step's spread.
    w = level.wobble[400:]
    steps = w[1:] - WOBBLE_PERSISTENCE * w[:-1]
    assert abs(float(np.std(steps)) - WOBBLE_STEP) < 0.1 * WOBBLE_STEP

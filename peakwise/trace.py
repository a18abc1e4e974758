"""Per-minute demand traces: read them into a Series, and synthesize realistic ones.

The trace format (see ``../shared/traces/README.md``) is a CSV with the header
``timestamp,requests,input_tokens,output_tokens``: one row per minute, ``timestamp`` the
ISO-8601 UTC start of the minute, the other columns counts over that minute. Token columns may
be empty where the source has none, and a file may leave out token columns altogether.

How bad or irregular input is treated (the rule: a gap is a gap, never zero demand):

* a minute that is absent (the timestamps jump by a whole number of minutes) becomes a gap:
  NaN in the Series, counted in ``Trace.missing_minutes``;
* an empty cell or ``NaN`` is a gap, counted in ``Trace.empty_cells``;
* runs of exact zeros stay zero demand unless ``zero_is_gap_min_run`` is set, in which case
  runs of at least that many zero minutes become gaps (some exports write missing data as 0),
  or ``implausible_zeros_as_gaps`` is set, in which case the runs that idle time cannot
  explain become gaps (``implausible_zero_runs``: at least 10 zero minutes where the demand
  around them would have brought 20 requests or more); either way ``Trace.zero_runs`` lists
  the implausible runs found, so a caller can warn about them;
* everything else that is wrong raises ``TraceError`` (a ``ValueError``) with a one-line
  message naming the file and, where there is one, the line: an empty file, an unknown or
  missing column, a timestamp that is not ISO 8601, timestamps out of order or repeated, a
  step other than 60 s, a negative, infinite or non-numeric count, a row with the wrong
  number of fields, malformed CSV, or a span of more than MAX_MINUTES.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from peakwise.forecasting.series import FloatArray, Series

BoolArray = NDArray[np.bool_]

TraceColumn = Literal["requests", "input_tokens", "output_tokens", "tokens"]
"""Which demand a trace is read as; ``tokens`` is input plus output tokens."""

TRACE_COLUMNS: tuple[TraceColumn, ...] = get_args(TraceColumn)
FILE_COLUMNS: tuple[str, ...] = ("timestamp", "requests", "input_tokens", "output_tokens")
"""The columns a trace file may have, in the order they are written."""
STEP_SECONDS = 60
# Gaps are filled with NaN, so one mistyped year would otherwise allocate gigabytes.
MAX_MINUTES = 5_000_000

_COUNT_COLUMNS = FILE_COLUMNS[1:]
_GAP_CELLS = frozenset({"", "nan", "NaN", "NAN"})


class TraceError(ValueError):
    """A trace that cannot be read; the message is one line, fit to show a user as is."""


@dataclass(frozen=True)
class TraceTable:
    """The counts of a trace file, one value per minute from ``start``; NaN marks a gap.

    All arrays have the same length. A column the file does not have is all NaN.
    """

    start: datetime
    requests: FloatArray
    input_tokens: FloatArray
    output_tokens: FloatArray
    has_row: BoolArray
    """False for minutes the file had no row for."""

    def __len__(self) -> int:
        return int(self.requests.shape[0])

    def counts(self, column: TraceColumn) -> FloatArray:
        """Counts per minute of one demand column (``tokens``: input + output, NaN if either is)."""
        if column == "tokens":
            return self.input_tokens + self.output_tokens
        values: FloatArray = getattr(self, column)
        return values


ZERO_RUN_MINUTES = 10
"""Zero runs at least this long are checked for being missing data rather than idle time."""
ZERO_RUN_EXPECTED = 20.0
"""... and are when the demand around them would have brought this many requests over the
run: a Poisson stream with that mean has no arrival with probability e^-20 (about 2e-9)."""
ZERO_RUN_CONTEXT = 60
"""Minutes before and after a run whose median count is the demand around it."""


@dataclass(frozen=True)
class ZeroRun:
    """A run of zero minutes that idle time cannot explain."""

    start: int
    """Index of its first minute."""
    minutes: int
    expected: float
    """Count the demand around it would have brought over the run."""


def implausible_zero_runs(
    counts: FloatArray,
    min_run: int = ZERO_RUN_MINUTES,
    min_expected: float = ZERO_RUN_EXPECTED,
) -> tuple[ZeroRun, ...]:
    """Runs of at least ``min_run`` zero minutes whose surroundings make them implausible as
    idle time: at the median count per minute of the hour before and the hour after (the
    higher of the two), the run would have seen at least ``min_expected`` requests. A sparse
    service (a few requests an hour) keeps its zero runs; a busy one that drops to exact zero
    for ten minutes lost its data."""
    is_zero = np.concatenate(([0], (counts == 0).astype(np.int8), [0]))
    edges = np.diff(is_zero)
    runs = []
    for begin, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        length = int(end - begin)
        if length < min_run:
            continue
        around = [
            counts[max(0, begin - ZERO_RUN_CONTEXT) : begin],
            counts[end : end + ZERO_RUN_CONTEXT],
        ]
        rates = [float(np.nanmedian(a)) for a in around if a.size and not np.isnan(a).all()]
        expected = max(rates, default=0.0) * length
        if expected >= min_expected:
            runs.append(ZeroRun(int(begin), length, expected))
    return tuple(runs)


@dataclass(frozen=True)
class Trace:
    """Demand read from a trace: the Series (units per second, NaN = gap) and where it came from."""

    series: Series
    source: str
    """File the trace was read from (or a label for in-memory text)."""
    column: TraceColumn
    """Column the demand was taken from."""
    rows: int
    """Data rows in the file."""
    missing_minutes: int
    """Minutes between the first and last timestamp that had no row (now gaps)."""
    empty_cells: int
    """Rows whose demand cell was empty or NaN (now gaps)."""
    zero_gap_minutes: int
    """Zero minutes turned into gaps (``zero_is_gap_min_run`` or ``implausible_zeros_as_gaps``)."""
    zero_runs: tuple[ZeroRun, ...] = ()
    """Runs of zero minutes that idle time cannot explain, found before any became gaps."""

    @property
    def unit(self) -> str:
        return "requests/s" if self.column == "requests" else "tokens/s"

    @property
    def gap_minutes(self) -> int:
        return int(np.isnan(self.series.values).sum())

    @property
    def end(self) -> datetime:
        """Start of the last minute."""
        return self.series.time_at(len(self.series) - 1)


def _parse_timestamp(text: str, where: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TraceError(
            f"{where}: timestamp {text!r} is not ISO 8601 (like 2024-01-01T00:00:00Z)"
        ) from None
    # The format says UTC; a timestamp without an offset is taken to be UTC.
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _parse_count(text: str, column: str, where: str) -> float:
    cell = text.strip()
    if cell in _GAP_CELLS:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(f"{where}: {column} {cell!r} is not a number") from None
    if math.isnan(value):
        return math.nan
    if math.isinf(value):
        raise TraceError(f"{where}: {column} {cell!r} is not a finite number")
    if value < 0:
        raise TraceError(f"{where}: {column} is negative ({cell}); counts must be >= 0")
    return value


def _header_columns(header: list[str], source: str) -> list[str]:
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in FILE_COLUMNS]
    if unknown:
        raise TraceError(
            f"{source}:1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"expected {','.join(FILE_COLUMNS)}"
        )
    if len(set(names)) != len(names):
        raise TraceError(f"{source}:1: a column is named twice in {','.join(names)}")
    if "timestamp" not in names:
        raise TraceError(f"{source}:1: no timestamp column; expected {','.join(FILE_COLUMNS)}")
    return names


Rows = tuple[list[datetime], list[tuple[float, float, float]], list[int]]


class _CsvReader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


def _read_rows(reader: _CsvReader, source: str) -> Rows:
    """Timestamps, (requests, input, output) counts and line numbers of the data rows."""
    header = next((row for row in reader if row), None)
    if header is None:
        raise TraceError(f"{source}: empty file; expected the header {','.join(FILE_COLUMNS)}")
    names = _header_columns(header, source)
    time_index = names.index("timestamp")
    count_indexes = [(names.index(c), c) if c in names else (-1, c) for c in _COUNT_COLUMNS]

    stamps: list[datetime] = []
    counts: list[tuple[float, float, float]] = []
    lines_of: list[int] = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank lines, e.g. a trailing newline
        line_num = reader.line_num
        where = f"{source}:{line_num}"
        if len(row) != len(names):
            expected = f"{len(names)} ({','.join(names)})"
            raise TraceError(f"{where}: {len(row)} fields, expected {expected}")
        stamps.append(_parse_timestamp(row[time_index], where))
        r, i, o = (
            math.nan if idx < 0 else _parse_count(row[idx], name, where)
            for idx, name in count_indexes
        )
        counts.append((r, i, o))
        lines_of.append(line_num)
    return stamps, counts, lines_of


def parse_trace_table(lines: Iterable[str], source: str = "<trace>") -> TraceTable:
    """Parse the lines of a trace CSV; ``source`` names it in error messages."""
    reader = csv.reader(lines)
    try:
        stamps, counts, lines_of = _read_rows(reader, source)
    except csv.Error as err:  # e.g. a NUL byte or an unterminated quote
        raise TraceError(f"{source}:{reader.line_num}: not valid CSV ({err})") from None
    if not stamps:
        raise TraceError(f"{source}: no data rows after the header")

    start = stamps[0]
    offsets = np.array([(t - start).total_seconds() for t in stamps])
    _check_steps(offsets, lines_of, source)
    minute = (offsets // STEP_SECONDS).astype(np.int64)
    length = int(minute[-1]) + 1
    if length > MAX_MINUTES:
        raise TraceError(
            f"{source}:{lines_of[-1]}: the trace would span {length:,} minutes; "
            f"at most {MAX_MINUTES:,} (about 9 years) are read"
        )
    table = np.full((length, 3), np.nan)
    table[minute] = np.array(counts, dtype=np.float64)
    has_row = np.zeros(length, dtype=np.bool_)
    has_row[minute] = True
    return TraceTable(start, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(), has_row)


def _check_steps(offsets: FloatArray, lines_of: Sequence[int], source: str) -> None:
    """Timestamps must rise strictly, on a 60-second grid, mostly one minute apart."""
    steps = np.diff(offsets)
    if steps.size == 0:
        return
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        k = int(bad[0])
        what = "repeats" if steps[k] == 0 else "is earlier than"
        raise TraceError(
            f"{source}:{lines_of[k + 1]}: timestamp {what} the one on line {lines_of[k]}; "
            "rows must be sorted by time, one per minute"
        )
    off_grid = np.flatnonzero(steps % STEP_SECONDS != 0)
    if off_grid.size:
        k = int(off_grid[0])
        raise TraceError(
            f"{source}:{lines_of[k + 1]}: timestamp is {steps[k]:g} s after the previous row; "
            f"the step must be {STEP_SECONDS} s"
        )
    # Missing minutes are allowed, but a file sampled every 5 minutes is not a per-minute trace:
    # its rows would all be read as gaps. The step is the largest one all intervals are whole
    # multiples of.
    step = int(np.gcd.reduce(steps.astype(np.int64)))
    if step != STEP_SECONDS:
        raise TraceError(f"{source}: rows are {step} s apart; the step must be {STEP_SECONDS} s")


def read_trace_table(path: str | Path) -> TraceTable:
    """Read a trace CSV into per-minute counts (see the module docs for bad input)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return parse_trace_table(handle, str(path))
    except OSError as err:
        raise TraceError(f"{path}: cannot read the trace: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a UTF-8 text file") from None


def _zero_runs_to_gaps(values: FloatArray, min_run: int) -> int:
    """Turn runs of at least ``min_run`` exact zeros into NaN in place; how many were turned."""
    is_zero = np.concatenate(([0], (values == 0).astype(np.int8), [0]))
    edges = np.diff(is_zero)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    turned = 0
    for begin, end in zip(starts, ends, strict=True):
        if end - begin >= min_run:
            values[begin:end] = np.nan
            turned += int(end - begin)
    return turned


def demand_from_table(
    table: TraceTable,
    column: TraceColumn = "requests",
    *,
    source: str = "<trace>",
    zero_is_gap_min_run: int | None = None,
    implausible_zeros_as_gaps: bool = False,
) -> Trace:
    """Demand per second from one column of per-minute counts.

    ``zero_is_gap_min_run``: when set, runs of at least this many consecutive minutes of exactly
    zero become gaps. ``implausible_zeros_as_gaps``: the runs ``implausible_zero_runs`` finds
    become gaps. Default neither: zero is real idle time. The ServeGen trace in
    ``../shared/traces`` needs one of them (its eight zero runs, 10 to 230 minutes, are missing
    data; both rules find exactly those).
    """
    if column not in TRACE_COLUMNS:
        choices = ", ".join(TRACE_COLUMNS)
        raise TraceError(f"unknown trace column {column!r}; choose one of {choices}")
    if zero_is_gap_min_run is not None and zero_is_gap_min_run < 1:
        raise TraceError(f"zero_is_gap_min_run must be at least 1, got {zero_is_gap_min_run}")
    per_minute = table.counts(column).copy()
    if np.isnan(per_minute).all():
        raise TraceError(f"{source}: column {column} has no values")
    n_rows = int(table.has_row.sum())
    missing = len(table) - n_rows
    empty_cells = int(np.isnan(per_minute[table.has_row]).sum())
    suspicious = implausible_zero_runs(per_minute)
    zero_gaps = 0
    if zero_is_gap_min_run is not None:
        zero_gaps = _zero_runs_to_gaps(per_minute, zero_is_gap_min_run)
    if implausible_zeros_as_gaps:
        for run in suspicious:
            stretch = per_minute[run.start : run.start + run.minutes]
            zero_gaps += int((stretch == 0).sum())
            stretch[:] = np.nan
    series = Series(table.start, STEP_SECONDS, per_minute / STEP_SECONDS)
    return Trace(series, source, column, n_rows, missing, empty_cells, zero_gaps, suspicious)


def read_trace(
    path: str | Path,
    column: TraceColumn = "requests",
    *,
    zero_is_gap_min_run: int | None = None,
    implausible_zeros_as_gaps: bool = False,
) -> Trace:
    """Read a trace file as demand per second of ``column``; raises TraceError on bad input."""
    table = read_trace_table(path)
    return demand_from_table(
        table,
        column,
        source=str(path),
        zero_is_gap_min_run=zero_is_gap_min_run,
        implausible_zeros_as_gaps=implausible_zeros_as_gaps,
    )


# --- Synthetic traces ---------------------------------------------------------------------


def _daily_shape(minute_of_day: FloatArray, *, weekend: bool) -> FloatArray:
    """Relative demand over a day, peak 1: night trough, sharp morning ramp, evening peak."""
    hour = minute_of_day / 60.0
    # People start later and more gradually at weekends.
    ramp_at, ramp_width = (9.75, 0.8) if weekend else (8.25, 0.3)
    morning = 1.0 / (1.0 + np.exp(-(hour - ramp_at) / ramp_width))
    night = 1.0 / (1.0 + np.exp((hour - 23.0) / 0.5))
    lunch_dip = 0.07 * np.exp(-0.5 * ((hour - 12.75) / 0.5) ** 2)
    evening = 0.45 * np.exp(-0.5 * ((hour - 20.5) / 1.2) ** 2)
    day = (0.62 - lunch_dip + evening) * morning * night
    trough = 0.1
    shape = trough + (1 - trough) * day / float(day.max())
    return shape / float(shape.max())


WOBBLE_PERSISTENCE = 0.97
"""The chat level's slow wobble is an AR(1) on the log scale: this share of it is left a
minute later ..."""
WOBBLE_STEP = 0.02
"""... and each minute adds a normal part of this standard deviation (about 8% spread)."""


@dataclass(frozen=True)
class DemandLevel:
    """What a synthetic trace's counts are drawn from, as relative demand per minute (peak
    about 1): ``level`` equals ``offset + cycle × exp(wobble) + bursts`` up to rounding. The
    parts are for benchmarks that ask what knowing the process would be worth."""

    level: FloatArray
    cycle: FloatArray
    """The daily and weekly cycle, each day's drift, and the family's trend, step or climb."""
    wobble: FloatArray
    """The slow wobble on the log scale (``WOBBLE_PERSISTENCE``, ``WOBBLE_STEP``)."""
    bursts: FloatArray
    """Extra demand from bursts and spikes."""
    offset: float = 0.0

    def times(self, factor: FloatArray) -> DemandLevel:
        """The level multiplied by ``factor`` per minute (a trend, a step); no offset."""
        if self.offset:
            raise ValueError("a level with an offset cannot be scaled per minute")
        return DemandLevel(
            self.level * factor, self.cycle * factor, self.wobble, self.bursts * factor
        )


def _chat_level(
    rng: np.random.Generator,
    days: int,
    start: datetime,
    weekend_level: float,
    bursts_per_week: float,
) -> DemandLevel:
    """Relative demand per minute of a chat service (peak about 1): the daily and weekly
    cycle, day-to-day drift, slow wobble and a few bursts."""
    minutes = days * 1440
    index = np.arange(minutes)
    weekday = (start.weekday() + index // 1440) % 7
    is_weekend = weekday >= 5
    one_day = np.arange(1440, dtype=np.float64)
    cycle = np.where(
        is_weekend,
        weekend_level * _daily_shape(one_day, weekend=True)[index % 1440],
        _daily_shape(one_day, weekend=False)[index % 1440],
    )
    # Each day a little busier or quieter than the last.
    cycle *= np.repeat(np.exp(rng.normal(0.0, 0.05, days)), 1440)
    # Slow, correlated wobble (AR(1) on the log scale, about 8% spread).
    # The AR(1) recursion as a convolution with its decaying kernel (0.97**400 < 1e-5), which
    # avoids both a Python loop and importing scipy.signal (seconds) for one filter.
    kernel = WOBBLE_PERSISTENCE ** np.arange(400)
    wobble = np.convolve(rng.normal(0.0, WOBBLE_STEP, minutes), kernel)[:minutes]
    level = cycle * np.exp(wobble)
    bursts = _bursts(rng, minutes, level, bursts_per_week * days / 7.0)
    return DemandLevel(level + bursts, cycle, wobble, bursts)


def _table_from_level(
    rng: np.random.Generator,
    start: datetime,
    level: FloatArray,
    peak_requests_per_minute: float,
    input_tokens_per_request: float = 1200.0,
    output_tokens_per_request: float = 250.0,
) -> TraceTable:
    """Poisson request counts at ``peak × level`` per minute, and token counts that follow
    them with their own per-minute variation in request length."""
    minutes = level.shape[0]
    requests = rng.poisson(peak_requests_per_minute * np.maximum(level, 0.0)).astype(np.float64)
    length_noise = np.exp(rng.normal(0.0, 0.15, (2, minutes)))
    input_tokens = np.round(requests * input_tokens_per_request * length_noise[0])
    output_tokens = np.round(requests * output_tokens_per_request * length_noise[1])
    has_row = np.ones(minutes, dtype=np.bool_)
    return TraceTable(start, requests, input_tokens, output_tokens, has_row)


def synthesize_trace(
    days: int = 14,
    seed: int = 1,
    *,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    peak_requests_per_minute: float = 3000.0,
    weekend_level: float = 0.65,
    bursts_per_week: float = 3.0,
    input_tokens_per_request: float = 1200.0,
    output_tokens_per_request: float = 250.0,
) -> TraceTable:
    """A realistic per-minute trace of a chat service, reproducible from ``seed``.

    Daily cycle (night trough at about 10% of the peak, a sharp ramp around 08:15, a lunch
    dip, the peak around 20:30), weekends at ``weekend_level`` of weekdays with a later and
    softer ramp, day-to-day level drift, slow correlated noise, Poisson counting noise, and
    short bursts (a launch, a batch job) of up to 2.5 times the level. Times are UTC and
    ``start`` (a Monday by default) should be a midnight. Token counts follow requests with
    their own per-minute variation in request length.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    rng = np.random.default_rng(seed)
    level = _chat_level(rng, days, start, weekend_level, bursts_per_week).level
    return _table_from_level(
        rng,
        start,
        level,
        peak_requests_per_minute,
        input_tokens_per_request,
        output_tokens_per_request,
    )


TraceFamily = Literal["weekly", "growth", "level-shift", "spikes", "launch", "sparse"]
TRACE_FAMILIES: tuple[TraceFamily, ...] = get_args(TraceFamily)
FAMILY_DAYS: dict[TraceFamily, int] = {
    "weekly": 14,
    "growth": 14,
    "level-shift": 14,
    "spikes": 14,
    "launch": 1,
    "sparse": 14,
}
"""How long each family's trace is by default."""


FAMILY_PEAKS: dict[TraceFamily, float] = {family: 3000.0 for family in TRACE_FAMILIES} | {
    "sparse": 6.0
}
"""Requests per minute at each family's peak (relative level 1) by default."""


def synthesize_family(
    family: TraceFamily,
    days: int | None = None,
    seed: int = 1,
    *,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    peak_requests_per_minute: float | None = None,
) -> TraceTable:
    """A synthetic trace of one family of demand shapes, reproducible from ``seed``:

    * ``weekly``: the chat service of ``synthesize_trace`` (daily and weekly cycle, bursts);
    * ``growth``: the same, its level doubling steadily over two weeks;
    * ``level-shift``: the same, its level stepping up 1.8 times at a random hour of day 6-9
      and staying there (a large customer moving in); in a trace shorter than a week, at a
      random minute 43-64% of the way through it;
    * ``spikes``: a flatter daily cycle with sudden spikes several times a day (2-minute
      rises to 1.5-2.5 times the level, fading after 5-40 minutes);
    * ``launch``: a new service's first day: nearly idle until a launch at 09:00, then
      demand climbs twentyfold within two hours and follows the daily cycle, with bursts;
    * ``sparse``: counts of a few requests a minute at the peak (image generation): many
      minutes are zero at night, which is idle time, not missing data.

    Counts are Poisson at ``peak_requests_per_minute`` (default ``FAMILY_PEAKS``) times
    ``family_level``'s level, which draws first from the same seed.
    """
    rng = np.random.default_rng(seed)
    length = _family_days(family, days)
    level = _family_level(rng, family, length, start).level
    peak = FAMILY_PEAKS[family] if peak_requests_per_minute is None else peak_requests_per_minute
    return _table_from_level(rng, start, level, peak)


def family_level(
    family: TraceFamily,
    days: int | None = None,
    seed: int = 1,
    *,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
) -> DemandLevel:
    """The relative level ``synthesize_family`` draws its counts from, with its parts."""
    return _family_level(np.random.default_rng(seed), family, _family_days(family, days), start)


def _family_days(family: TraceFamily, days: int | None) -> int:
    if family not in TRACE_FAMILIES:
        raise ValueError(f"unknown trace family {family!r}; choose one of {TRACE_FAMILIES}")
    length = FAMILY_DAYS[family] if days is None else days
    if length < 1:
        raise ValueError(f"days must be at least 1, got {length}")
    return length


def _family_level(
    rng: np.random.Generator, family: TraceFamily, length: int, start: datetime
) -> DemandLevel:
    minutes = np.arange(length * 1440, dtype=np.float64)
    if family == "spikes":
        chat = _chat_level(rng, length, start, 0.85, 0.0)
        flat = 0.5 + 0.5 * chat.level  # a flatter cycle: the spikes are the story
        spikes = _bursts(rng, minutes.shape[0], flat, 3.0 * length)
        return DemandLevel(
            flat + spikes, 0.5 * chat.cycle, chat.wobble, 0.5 * chat.bursts + spikes, 0.5
        )
    level = _chat_level(rng, length, start, 0.65, 3.0)
    if family == "growth":
        return level.times(2.0 ** (minutes / (14 * 1440)))
    if family == "level-shift":
        n = minutes.shape[0]
        if n > 6 * 1440:
            at = int(rng.integers(6 * 1440, min(9 * 1440, n)))
        else:  # under a week: at the same share of the trace as days 6-9 are of two weeks
            at = int(rng.integers(3 * n // 7, max(3 * n // 7 + 1, 9 * n // 14)))
        return level.times(np.where(np.arange(n) >= at, 1.8, 1.0))
    if family == "launch":
        launch = 9 * 60
        climb = 1.0 / (1.0 + np.exp(-(minutes - launch - 60.0) / 15.0))
        return level.times(0.05 + 0.95 * climb)
    return level


def _bursts(rng: np.random.Generator, minutes: int, level: FloatArray, mean: float) -> FloatArray:
    """Extra relative demand from a few sudden bursts: a 2-minute rise, then an exponential fade."""
    extra = np.zeros(minutes)
    count = max(1, int(rng.poisson(mean)))
    for _ in range(count):
        begin = int(rng.integers(0, minutes))
        length = int(rng.integers(5, 41))
        height = float(rng.uniform(0.5, 1.5)) * float(level[begin])
        t = np.arange(min(length + 30, minutes - begin), dtype=np.float64)
        rise = np.minimum(t / 2.0, 1.0)
        fade = np.where(t < length, 1.0, np.exp(-(t - length) / 5.0))
        extra[begin : begin + t.size] += height * rise * fade
    return extra


def _format_count(value: float) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def write_trace_csv(path: str | Path, table: TraceTable) -> Path:
    """Write per-minute counts in the trace format (NaN as an empty cell, all minutes present)."""
    out = Path(path)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    step = timedelta(seconds=STEP_SECONDS)
    columns = (table.requests, table.input_tokens, table.output_tokens)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        handle.write(",".join(FILE_COLUMNS) + "\n")
        for k in range(len(table)):
            stamp = (table.start + k * step).strftime("%Y-%m-%dT%H:%M:%SZ")
            cells = ",".join(_format_count(float(col[k])) for col in columns)
            handle.write(f"{stamp},{cells}\n")
    return out

"""Turn a per-minute demand trace into Prometheus history.

A trace CSV (``timestamp,requests,input_tokens,output_tokens``, one row per minute, see
``shared/traces/README.md``) becomes an OpenMetrics file, and ``promtool tsdb
create-blocks-from openmetrics`` turns that into TSDB blocks for a Prometheus data dir.

Series written (all carry the label ``trace=<file stem>`` plus any extra labels given):

* ``peakwise_trace_requests_per_minute`` (gauge): the ``requests`` column, one sample per
  minute, stamped at the start of the minute, value exactly as in the CSV.
* ``peakwise_trace_input_tokens_per_minute`` / ``peakwise_trace_output_tokens_per_minute``
  (gauges): the token columns, only for rows where the CSV has a value.
* ``peakwise_trace_requests_total`` (counter): the running sum of ``requests`` up to and
  including that minute, so ``rate(peakwise_trace_requests_total[5m])`` gives requests/s.

Time shift: the traces carry nominal dates (often 2000-01-01). By default every timestamp
is moved by the same whole number of minutes so that the last minute of the trace starts
``end_margin`` before *now* (floored to the minute); ``shift_seconds`` in the result is
that offset (shifted = original + shift). Pass ``end=None`` together with ``shift=False``
to keep the original timestamps (then the Prometheus retention must reach back that far).

Only the standard library is used, so ``hack/prometheus-backfill`` runs this with the
system python3 as well as the tests do.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

METRIC_PREFIX = "peakwise_trace"
REQUESTS_GAUGE = f"{METRIC_PREFIX}_requests_per_minute"
INPUT_TOKENS_GAUGE = f"{METRIC_PREFIX}_input_tokens_per_minute"
OUTPUT_TOKENS_GAUGE = f"{METRIC_PREFIX}_output_tokens_per_minute"
REQUESTS_COUNTER = f"{METRIC_PREFIX}_requests_total"

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class TraceRow:
    """One minute of a trace; ``ts`` is seconds since the epoch (UTC)."""

    ts: int
    requests: float
    input_tokens: float | None
    output_tokens: float | None


@dataclasses.dataclass(frozen=True)
class BackfillResult:
    """What went into Prometheus, with the timestamps as stored (after the shift)."""

    trace: str
    labels: dict[str, str]
    shift_seconds: int
    start: int  # first sample, epoch seconds (shifted)
    end: int  # last sample, epoch seconds (shifted)
    samples: int  # rows written
    metrics: tuple[str, ...]
    blocks_dir: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _parse_ts(text: str) -> int:
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def _parse_num(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    return float(text)


def read_trace(path: str | os.PathLike[str]) -> list[TraceRow]:
    """Read a trace CSV; rows come back in time order, one per minute."""
    rows: list[TraceRow] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"timestamp", "requests"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for line_no, rec in enumerate(reader, start=2):
            try:
                requests = _parse_num(rec["requests"])
                rows.append(
                    TraceRow(
                        ts=_parse_ts(rec["timestamp"]),
                        requests=0.0 if requests is None else requests,
                        input_tokens=_parse_num(rec.get("input_tokens")),
                        output_tokens=_parse_num(rec.get("output_tokens")),
                    )
                )
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
    rows.sort(key=lambda r: r.ts)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def compute_shift(rows: Sequence[TraceRow], end: int) -> int:
    """Whole minutes that move the last row's timestamp to ``end`` (floored to a minute)."""
    end_minute = end - end % 60
    return end_minute - rows[-1].ts


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _fmt(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"not a finite sample value: {value}")
    return repr(float(value)) if value != int(value) else str(int(value))


def to_openmetrics(
    rows: Sequence[TraceRow], labels: Mapping[str, str], shift: int = 0
) -> Iterable[str]:
    """Yield OpenMetrics lines (with trailing newlines) for the series described above."""
    for name in labels:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid label name: {name!r}")
    lab = "{" + _labels_text(labels) + "}"

    yield f"# HELP {REQUESTS_GAUGE} Requests in the minute starting at the sample time.\n"
    yield f"# TYPE {REQUESTS_GAUGE} gauge\n"
    for r in rows:
        yield f"{REQUESTS_GAUGE}{lab} {_fmt(r.requests)} {r.ts + shift}\n"

    for name, attr, what in (
        (INPUT_TOKENS_GAUGE, "input_tokens", "Input"),
        (OUTPUT_TOKENS_GAUGE, "output_tokens", "Output"),
    ):
        present = [r for r in rows if getattr(r, attr) is not None]
        if not present:
            continue
        yield f"# HELP {name} {what} tokens in the minute starting at the sample time.\n"
        yield f"# TYPE {name} gauge\n"
        for r in present:
            yield f"{name}{lab} {_fmt(getattr(r, attr))} {r.ts + shift}\n"

    family = REQUESTS_COUNTER.removesuffix("_total")
    yield f"# HELP {family} Requests since the start of the trace.\n"
    yield f"# TYPE {family} counter\n"
    total = 0.0
    for r in rows:
        total += r.requests
        yield f"{REQUESTS_COUNTER}{lab} {_fmt(total)} {r.ts + shift}\n"
    yield "# EOF\n"


def metrics_written(rows: Sequence[TraceRow]) -> tuple[str, ...]:
    names = [REQUESTS_GAUGE]
    if any(r.input_tokens is not None for r in rows):
        names.append(INPUT_TOKENS_GAUGE)
    if any(r.output_tokens is not None for r in rows):
        names.append(OUTPUT_TOKENS_GAUGE)
    names.append(REQUESTS_COUNTER)
    return tuple(names)


def traces_dir() -> Path:
    """The shared demand traces: ``$PEAKWISE_TRACES_DIR``, else ``shared/traces`` beside the
    repository (where CI and the work tree have it)."""
    env = os.environ.get("PEAKWISE_TRACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "traces"


def promtool_path() -> str:
    found = shutil.which("promtool")
    if not found:
        raise FileNotFoundError(
            "promtool not found on PATH: install Debian's prometheus package "
            "(hack/setup does: apt-get install --no-install-recommends prometheus)"
        )
    return found


def create_blocks(openmetrics_file: Path, out_dir: Path, timeout: float = 300) -> None:
    """Run ``promtool tsdb create-blocks-from openmetrics`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            promtool_path(),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            str(openmetrics_file),
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"promtool create-blocks-from openmetrics failed ({proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )


def backfill(
    trace: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    labels: Mapping[str, str] | None = None,
    end: int | None = None,
    end_margin: int = 120,
    shift: bool = True,
) -> BackfillResult:
    """Write the trace's series as TSDB blocks into ``data_dir`` (Prometheus stopped).

    ``end``: epoch seconds where the last minute should land (default: now - end_margin).
    Blocks are built in a temporary folder and then moved into ``data_dir``; Prometheus
    picks them up at its next start (or within about a minute when it runs).
    """
    rows = read_trace(trace)
    trace_name = Path(trace).name.split(".")[0]
    all_labels = {"trace": trace_name, **(labels or {})}
    offset = 0
    if shift:
        target = end if end is not None else int(dt.datetime.now(dt.UTC).timestamp()) - end_margin
        offset = compute_shift(rows, target)
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backfill-", dir=data.parent) as tmp:
        om = Path(tmp, "trace.om")
        with om.open("w") as fh:
            fh.writelines(to_openmetrics(rows, all_labels, offset))
        blocks = Path(tmp, "blocks")
        create_blocks(om, blocks)
        for block in sorted(blocks.iterdir()):
            shutil.move(str(block), str(data / block.name))
    return BackfillResult(
        trace=trace_name,
        labels=all_labels,
        shift_seconds=offset,
        start=rows[0].ts + offset,
        end=rows[-1].ts + offset,
        samples=len(rows),
        metrics=metrics_written(rows),
        blocks_dir=str(data),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/prometheus-backfill",
        description="Backfill a per-minute trace CSV into a Prometheus data dir "
        "(run it while that Prometheus is stopped, or restart it afterwards).",
    )
    parser.add_argument("trace", help="trace CSV: timestamp,requests,input_tokens,output_tokens")
    parser.add_argument("data_dir", help="Prometheus --storage.tsdb.path")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra label on every series (repeatable)",
    )
    parser.add_argument(
        "--end",
        help="ISO time or epoch seconds where the last minute should land (default: now-2m)",
    )
    parser.add_argument("--no-shift", action="store_true", help="keep the trace's own timestamps")
    parser.add_argument(
        "--openmetrics-only",
        action="store_true",
        help="print the OpenMetrics text to stdout instead of creating blocks",
    )
    args = parser.parse_args(argv)
    labels: dict[str, str] = {}
    for item in args.label:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--label needs NAME=VALUE, got {item!r}")
        labels[name] = value
    end: int | None = None
    if args.end:
        end = int(args.end) if args.end.isdigit() else _parse_ts(args.end)
    if args.openmetrics_only:
        rows = read_trace(args.trace)
        offset = 0
        if not args.no_shift:
            target = end if end is not None else int(dt.datetime.now(dt.UTC).timestamp()) - 120
            offset = compute_shift(rows, target)
        all_labels = {"trace": Path(args.trace).name.split(".")[0], **labels}
        sys.stdout.writelines(to_openmetrics(rows, all_labels, offset))
        return 0
    result = backfill(args.trace, args.data_dir, labels=labels, end=end, shift=not args.no_shift)
    print(result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())

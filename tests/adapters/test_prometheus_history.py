"""The Prometheus history adapter against a real Prometheus (the session ``prometheus`` fixture).

History is backfilled from the servegen trace with promtool, live samples arrive through
remote write, and what comes back must equal what went in.
"""

from __future__ import annotations

import asyncio
import csv
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e.promstack import PrometheusServer, free_port
from shared_traces import SERVEGEN

from peakwise.adapters.prometheus import (
    EmptyResultError,
    MultipleSeriesError,
    PrometheusHistory,
    PrometheusUnavailableError,
    PromQLError,
)

pytestmark = pytest.mark.e2e

GAUGE = 'peakwise_trace_requests_per_minute{service="forecasting-adapter"}'


@pytest.fixture(scope="module")
def servegen(prometheus: PrometheusServer) -> dict[str, Any]:
    """The 14-day servegen trace in Prometheus; the requests column as stored."""
    result = prometheus.backfill_trace(SERVEGEN, labels={"service": "forecasting-adapter"})
    with SERVEGEN.open() as handle:
        requests = np.array([float(row["requests"]) for row in csv.DictReader(handle)])
    return {
        "start": datetime.fromtimestamp(result.start, UTC),
        "end": datetime.fromtimestamp(result.end, UTC),
        "requests": requests,
    }


def test_backfilled_history_comes_back_exactly(
    prometheus: PrometheusServer, servegen: dict[str, Any]
) -> None:
    history = PrometheusHistory(prometheus.url)
    series = history.fetch(GAUGE, servegen["start"], servegen["end"], 60)
    assert series.start == servegen["start"] and series.step_seconds == 60
    np.testing.assert_array_equal(series.values, servegen["requests"])
    # 20,160 steps need three range queries of at most 10,000 points.
    assert history.stats.requests == 3
    assert history.stats.steps_requested == len(servegen["requests"])


def test_chunks_respect_a_smaller_limit(
    prometheus: PrometheusServer, servegen: dict[str, Any]
) -> None:
    history = PrometheusHistory(prometheus.url, max_points=1000)
    end = servegen["start"] + timedelta(minutes=4499)
    series = history.fetch(GAUGE, servegen["start"], end, 60)
    np.testing.assert_array_equal(series.values, servegen["requests"][:4500])
    assert history.stats.requests == 5


def test_steps_align_to_the_grid(prometheus: PrometheusServer, servegen: dict[str, Any]) -> None:
    history = PrometheusHistory(prometheus.url)
    start = servegen["start"] + timedelta(minutes=10, seconds=37)  # mid-minute
    series = history.fetch(GAUGE, start, start + timedelta(hours=1), 60)
    assert series.start == servegen["start"] + timedelta(minutes=10)
    np.testing.assert_array_equal(series.values, servegen["requests"][10:71])


def test_incremental_fetch_reads_only_what_is_new(
    prometheus: PrometheusServer, servegen: dict[str, Any]
) -> None:
    history = PrometheusHistory(prometheus.url, overlap_steps=5)
    start, end = servegen["start"], servegen["end"]
    history.fetch(GAUGE, start, end - timedelta(days=1), 60)
    first_steps = history.stats.steps_requested
    series = history.fetch(GAUGE, start, end, 60)
    # The second call asked only for the last day plus the re-read overlap.
    assert history.stats.steps_requested - first_steps == 1440 + 5 + 1
    np.testing.assert_array_equal(series.values, servegen["requests"])
    # Asking again for a range already held (and not newer) fetches only the overlap.
    before = history.stats.steps_requested
    history.fetch(GAUGE, start + timedelta(days=2), end - timedelta(days=3), 60)
    assert history.stats.steps_requested == before


def test_bounded_memory(prometheus: PrometheusServer, servegen: dict[str, Any]) -> None:
    history = PrometheusHistory(prometheus.url, max_cached_steps=2000, max_cached_queries=1)
    start, end = servegen["start"], servegen["end"]
    series = history.fetch(GAUGE, start, end, 60)
    np.testing.assert_array_equal(series.values, servegen["requests"])  # answer is whole
    assert history.cached_steps() == 2000
    history.fetch(f"sum({GAUGE})", end - timedelta(hours=2), end, 60)
    assert history.cached_steps() == 121  # the first query was dropped


def test_live_samples_through_remote_write(prometheus: PrometheusServer) -> None:
    now = int(time.time()) // 60 * 60
    labels = {"__name__": "peakwise_forecasting_live_demand", "service": "live"}
    first = [(now - 60 * k, float(k)) for k in range(30, 10, -1)]
    prometheus.push([(labels, first)])
    history = PrometheusHistory(prometheus.url)
    query = 'peakwise_forecasting_live_demand{service="live"}'
    start = datetime.fromtimestamp(now - 30 * 60, UTC)
    end = datetime.fromtimestamp(now - 11 * 60, UTC)
    series = history.fetch(query, start, end, 60)
    np.testing.assert_array_equal(series.values, [v for _, v in first])
    prometheus.push([(labels, [(now - 60 * k, float(k)) for k in range(10, 0, -1)])])
    later = history.fetch(query, start, datetime.fromtimestamp(now - 60, UTC), 60)
    np.testing.assert_array_equal(later.values, np.arange(30, 0, -1, dtype=np.float64))


def test_async_wrapper(prometheus: PrometheusServer, servegen: dict[str, Any]) -> None:
    history = PrometheusHistory(prometheus.url)
    end = servegen["start"] + timedelta(hours=2)
    series = asyncio.run(history.afetch(GAUGE, servegen["start"], end, 60))
    np.testing.assert_array_equal(series.values, servegen["requests"][:121])


def test_clear_errors(prometheus: PrometheusServer, servegen: dict[str, Any]) -> None:
    history = PrometheusHistory(prometheus.url)
    start, end = servegen["start"], servegen["start"] + timedelta(hours=1)
    with pytest.raises(PromQLError, match="rejected"):
        history.fetch("sum(rate(", start, end, 60)
    with pytest.raises(EmptyResultError, match="no data"):
        history.fetch('peakwise_no_such_metric{service="x"}', start, end, 60)
    several = '{__name__=~"peakwise_trace_requests_.*", service="forecasting-adapter"}'
    with pytest.raises(MultipleSeriesError, match="2 series"):
        history.fetch(several, start, end, 60)


def test_server_down_is_a_clear_error(tmp_path: Path) -> None:
    history = PrometheusHistory(
        f"http://127.0.0.1:{free_port()}", retries=2, backoff_seconds=0.01, timeout_seconds=1
    )
    now = datetime.now(UTC)
    with pytest.raises(PrometheusUnavailableError, match="after 3 attempts"):
        history.fetch("up", now - timedelta(hours=1), now, 60)
    assert history.stats.retries == 2

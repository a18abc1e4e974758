"""How the adapter reads HTTP answers Prometheus itself cannot be made to give here: refused
credentials behind an auth proxy, a transient 503 that a retry gets past, a query too slow to
answer, and a query matching other teams' series."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

from peakwise.adapters.prometheus import (
    MultipleSeriesError,
    PrometheusAuthError,
    PrometheusHistory,
    PrometheusUnavailableError,
    QueryBudgetError,
)

START = datetime(2024, 1, 1, tzinfo=UTC)


class _Canned(BaseHTTPRequestHandler):
    # Answers in order; the last one repeats. `delay` seconds pass before each answer.
    answers: ClassVar[list[tuple[int, dict[str, object]]]] = []
    delay: ClassVar[float] = 0.0
    served: ClassVar[int] = 0

    def do_GET(self) -> None:
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        type(self).served += 1
        time.sleep(self.delay)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Canned.delay, _Canned.served = 0.0, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _matrix(values: list[float]) -> dict[str, object]:
    samples = [[START.timestamp() + 60 * i, str(v)] for i, v in enumerate(values)]
    return {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": samples}]},
    }


def test_refused_credentials(server: str) -> None:
    _Canned.answers = [(401, {"status": "error", "error": "unauthorized"})]
    history = PrometheusHistory(server, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(PrometheusAuthError, match="HTTP 401"):
        history.fetch("up", START, START + timedelta(minutes=2), 60)
    assert history.stats.requests == 1  # never retried


def test_transient_failure_is_retried(server: str) -> None:
    _Canned.answers = [
        (503, {"status": "error", "errorType": "unavailable", "error": "busy"}),
        (200, _matrix([1.0, 2.0, 3.0])),
    ]
    history = PrometheusHistory(server, backoff_seconds=0.01)
    series = history.fetch("demand", START, START + timedelta(minutes=2), 60)
    np.testing.assert_array_equal(series.values, [1.0, 2.0, 3.0])
    assert history.stats.retries == 1


def test_persistent_failure_names_the_cause(server: str) -> None:
    _Canned.answers = [(503, {"status": "error", "errorType": "timeout", "error": "timed out"})]
    history = PrometheusHistory(server, retries=1, backoff_seconds=0.01)
    with pytest.raises(PrometheusUnavailableError, match="timed out"):
        history.fetch("demand", START, START + timedelta(minutes=2), 60)


def test_gaps_stay_gaps(server: str) -> None:
    body = _matrix([5.0, 6.0, 7.0, 8.0])
    samples = body["data"]["result"][0]["values"]  # type: ignore[index]
    del samples[1:3]  # no samples for the middle two steps
    _Canned.answers = [(200, body)]
    series = PrometheusHistory(server).fetch("demand", START, START + timedelta(minutes=3), 60)
    np.testing.assert_array_equal(series.values, [5.0, np.nan, np.nan, 8.0])


def test_a_query_that_times_out_is_not_asked_again(server: str) -> None:
    _Canned.answers = [(200, _matrix([1.0]))]
    _Canned.delay = 1.5
    history = PrometheusHistory(server, timeout_seconds=0.5, retries=3, backoff_seconds=0.01)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailableError, match="not retried"):
        history.fetch("slow", START, START + timedelta(minutes=2), 60)
    assert time.monotonic() - started < 1.4  # one timeout, not four
    assert history.stats.retries == 0


def test_a_fetch_stops_at_its_budget(server: str) -> None:
    # Ten chunks of one step, each answered in 0.3 s: the 1 s budget runs out on the way.
    _Canned.answers = [(200, _matrix([1.0]))]
    _Canned.delay = 0.3
    history = PrometheusHistory(server, max_points=1, query_budget_seconds=1.0)
    with pytest.raises(QueryBudgetError, match="1s budget"):
        history.fetch("expensive", START, START + timedelta(minutes=9), 60)
    assert 2 <= _Canned.served <= 5


def test_other_series_labels_are_never_echoed(server: str) -> None:
    secret = {"namespace": "other-team", "model": "secret-launch"}
    body = _matrix([1.0])
    results = body["data"]["result"]  # type: ignore[index]
    results.append({"metric": secret, "values": results[0]["values"]})
    _Canned.answers = [(200, body)]
    with pytest.raises(MultipleSeriesError) as caught:
        PrometheusHistory(server).fetch('{__name__=~".+"}', START, START, 60)
    assert "2 series" in str(caught.value)
    assert "other-team" not in str(caught.value) and "secret-launch" not in str(caught.value)


def test_the_cache_stays_within_its_bytes(server: str) -> None:
    _Canned.answers = [(200, _matrix([1.0] * 100))]
    history = PrometheusHistory(server, max_cached_bytes=2 * 100 * 8)
    for i in range(5):
        history.fetch(f"q{i}", START, START + timedelta(minutes=99), 60)
    assert history.cached_bytes() <= 2 * 100 * 8
    assert history.cached_steps() == 200  # the two most recent queries

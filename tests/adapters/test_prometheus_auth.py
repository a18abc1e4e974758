"""Credentials and headers the Prometheus adapter sends, checked by a real HTTP server on
loopback that answers like Prometheus only when they are right (as Mimir or an auth proxy
would), and the retention it reads from /api/v1/status/runtimeinfo."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from peakwise.adapters.prometheus import PrometheusAuthError, PrometheusHistory


class _Guarded(BaseHTTPRequestHandler):
    token: ClassVar[str] = "first"
    seen: ClassVar[list[dict[str, str]]] = []

    def log_message(self, *args: Any) -> None:
        return

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        self.seen.append(dict(self.headers))
        if (
            self.headers.get("Authorization") != f"Bearer {self.token}"
            or self.headers.get("X-Scope-OrgID") != "team-a"
        ):
            self._answer(401, {"status": "error", "error": "unauthorized"})
            return
        if self.path.startswith("/api/v1/status/runtimeinfo"):
            self._answer(200, {"status": "success", "data": {"storageRetention": "7d or 5GiB"}})
        elif self.path.startswith("/api/v1/query_range"):
            start = 1_700_000_040
            values = [[start + 60 * i, "2"] for i in range(3)]
            self._answer(
                200,
                {
                    "status": "success",
                    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
                },
            )
        else:
            result = [{"metric": {"node": "n"}, "value": [1_700_000_000, "7.5"]}]
            self._answer(
                200, {"status": "success", "data": {"resultType": "vector", "result": result}}
            )

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()


@pytest.fixture
def server() -> Iterator[str]:
    _Guarded.seen = []
    _Guarded.token = "first"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_token_file_and_tenant_header_are_sent_and_a_rotated_token_is_picked_up(
    server: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    history = PrometheusHistory(
        server, headers={"X-Scope-OrgID": "team-a"}, bearer_token_file=str(token), retries=0
    )
    start = datetime.fromtimestamp(1_700_000_040, UTC)
    series = history.fetch("demand", start, start + timedelta(minutes=2), 60)
    assert list(series.values) == [2.0, 2.0, 2.0]
    assert history.instant("avg(node_total_hourly_cost)") == [7.5]
    assert history.retention() == timedelta(days=7)
    # The Secret is rotated in place: the next request carries the new token.
    token.write_text("second-token-longer\n")
    _Guarded.token = "second-token-longer"
    assert history.instant("up") == [7.5]
    assert _Guarded.seen[-1]["Authorization"] == "Bearer second-token-longer"


def test_without_the_credentials_the_refusal_is_named(server: str) -> None:
    history = PrometheusHistory(server, retries=0)
    with pytest.raises(PrometheusAuthError, match="HTTP 401"):
        history.instant("up")
    assert history.retention() is None  # unknown: no warning

"""A fault-injecting HTTP proxy in front of a real server, for brownout tests.

``FaultProxy(target_url)`` listens on a free loopback port and forwards every GET to the
target, unless told otherwise: ``slow(seconds)`` delays each answer, ``failing(status)``
answers with that HTTP status, ``down()`` drops every connection unanswered (as a stopped
server would), ``healthy()`` forwards again. ``requests`` counts what it was asked.
Only the standard library is used.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class _Mode:
    delay: float = 0.0
    status: int | None = None
    down: bool = False


class FaultProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode = _Mode()
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy.requests += 1
                mode = proxy.mode
                if mode.down:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if mode.delay:
                    time.sleep(mode.delay)
                if mode.status is not None:
                    body = b'{"status":"error","errorType":"unavailable","error":"injected"}'
                    self._answer(mode.status, body)
                    return
                try:
                    with urllib.request.urlopen(proxy.target + self.path, timeout=30) as r:
                        self._answer(r.status, r.read())
                except urllib.error.HTTPError as error:
                    self._answer(error.code, error.read())

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: that is the point of a slow answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def healthy(self) -> None:
        self.mode = _Mode()

    def slow(self, seconds: float) -> None:
        self.mode = _Mode(delay=seconds)

    def failing(self, status: int = 503) -> None:
        self.mode = _Mode(status=status)

    def down(self) -> None:
        self.mode = _Mode(down=True)

"""A real Prometheus (Debian's package) on loopback, for tests.

``PrometheusServer`` starts ``prometheus`` on a free 127.0.0.1 port with its remote-write
receiver and admin API on, a long retention and an out-of-order window (so history can be
backfilled from traces and old samples pushed), and offers:

* ``backfill_trace(csv, labels=...)``: blocks from a trace (see ``trace_backfill``), then a
  restart so Prometheus loads them; returns a ``BackfillResult`` (shift, start, end).
* ``push(series)``: samples through the remote-write receiver (protobuf + snappy, encoded
  here with the standard library only).
* ``query(promql)`` / ``query_range(promql, start, end, step)``: the HTTP API's ``data``.

Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import trace_backfill

# Prometheus keeps everything the tests write, however old (traces carry year-2000 dates).
RETENTION = "36500d"
# Samples pushed through remote write may be this much older than the newest sample.
OUT_OF_ORDER_WINDOW = "30d"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class PrometheusError(RuntimeError):
    pass


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise PrometheusError(
            f"{binary} not found on PATH. Run hack/setup (it installs Debian's prometheus "
            "package: apt-get install --no-install-recommends prometheus)."
        )
    return found


# --- remote write: protobuf and snappy by hand -------------------------------------------
# prometheus.WriteRequest { repeated TimeSeries timeseries = 1; }
# TimeSeries { repeated Label labels = 1; repeated Sample samples = 2; }
# Label { string name = 1; string value = 2; }  Sample { double value = 1; int64 timestamp = 2; }


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_write_request(
    series: Mapping[tuple[tuple[str, str], ...], Sequence[tuple[float, float]]],
) -> bytes:
    """Encode ``{sorted label pairs: [(epoch seconds, value), ...]}`` as a WriteRequest."""
    out = bytearray()
    for labels, samples in series.items():
        ts = bytearray()
        for name, value in sorted(labels):
            ts += _field_bytes(1, _field_bytes(1, name.encode()) + _field_bytes(2, value.encode()))
        for when, value in sorted(samples):
            sample = b"\x09" + struct.pack("<d", float(value))
            sample += b"\x10" + _varint(round(when * 1000))
            ts += _field_bytes(2, sample)
        out += _field_bytes(1, bytes(ts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """Snappy block format with literals only: valid, just not compressed."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


# --- the server ----------------------------------------------------------------------------


class PrometheusAPI:
    """The HTTP side of a Prometheus at ``url``: remote write in, queries out."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    @property
    def remote_write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # --- data in ---------------------------------------------------------------------------

    def push(
        self,
        series: Iterable[tuple[Mapping[str, str], Sequence[tuple[float, float]]]],
        timeout: float = 30,
    ) -> None:
        """Remote-write samples: ``[({"__name__": "m", "k": "v"}, [(epoch_s, value), ...])]``."""
        grouped: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for labels, samples in series:
            if "__name__" not in labels:
                raise ValueError("each series needs a __name__ label")
            grouped.setdefault(tuple(sorted(labels.items())), []).extend(samples)
        body = snappy_literal(encode_write_request(grouped))
        req = urllib.request.Request(
            self.remote_write_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise PrometheusError(f"remote write failed: {exc.code} {detail}") from exc

    # --- data out --------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, Any], timeout: float = 60) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(
                f"{path} failed: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"{path} failed: {payload}")
        return payload["data"]

    def query(self, promql: str, at: float | None = None) -> Any:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        return self.api("/api/v1/query", params)

    def query_range(self, promql: str, start: float, end: float, step: float | str) -> Any:
        return self.api(
            "/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step}
        )


class PrometheusServer(PrometheusAPI):
    """One Prometheus process; ``start()``/``stop()``; state under ``root``."""

    def __init__(self, root: str | os.PathLike[str], port: int | None = None) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.config_file = self.root / "prometheus.yml"
        self.log_file = self.root / "prometheus.log"
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_scrape_configs: list[dict[str, Any]] = []

    def write_config(self) -> None:
        # JSON is YAML; no YAML library needed.
        config = {
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "storage": {"tsdb": {"out_of_order_time_window": OUT_OF_ORDER_WINDOW}},
            "scrape_configs": [
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
                },
                *self.extra_scrape_configs,
            ],
        }
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")

    def command(self) -> list[str]:
        return [
            _need("prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
            "--web.enable-admin-api",
            "--web.enable-lifecycle",
            # Debian's defaults point at /usr/share; tests need no consoles.
            "--web.console.templates=/dev/null",
            "--web.console.libraries=/dev/null",
        ]

    def start(self, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if port_in_use(self.port):
            raise PrometheusError(
                f"port 127.0.0.1:{self.port} is already taken; choose another port "
                "(or leave port unset for a free one)"
            )
        self.write_config()
        log = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}; log {self.log_file}:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(
            f"prometheus not ready within {timeout}s; log {self.log_file}:\n" + self.log_tail()
        )

    def stop(self, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- data in ---------------------------------------------------------------------------

    def backfill_trace(
        self,
        trace: str | os.PathLike[str],
        *,
        labels: Mapping[str, str] | None = None,
        end: int | None = None,
        shift: bool = True,
    ) -> trace_backfill.BackfillResult:
        """Backfill a trace CSV (see ``trace_backfill``) and restart so the blocks load."""
        was_running = self.proc is not None and self.proc.poll() is None
        self.stop()
        try:
            result = trace_backfill.backfill(
                trace, self.data_dir, labels=labels, end=end, shift=shift
            )
        finally:
            if was_running:
                self.start()
        return result

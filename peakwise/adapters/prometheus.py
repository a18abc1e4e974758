"""Demand history from Prometheus: chunked, step-aligned, retried, cached incrementally.

``PrometheusHistory.fetch(query, start, end, step_seconds)`` returns a ``Series`` on the grid
``start, start + step, ... , end`` (both aligned down to a multiple of the step since the
epoch, so successive calls share one grid); steps without a sample are NaN (gaps, never 0).

* Built on prometheus-api-client, which is synchronous: ``afetch`` runs ``fetch`` in a worker
  thread so the operator's event loop never blocks on the network.
* Prometheus answers at most 11,000 points per series per range query, so longer ranges are
  split into chunks of ``max_points`` (10,000) steps.
* Each request has a timeout (sent to Prometheus too, so it gives up on its side as well);
  connection failures, timeouts, 429 and 5xx are retried with exponential backoff; the rest
  fail at once. Every failure is a ``PrometheusHistoryError`` subclass naming the cause.
* Incremental: each ``(query, step)`` keeps the history it fetched; the next call fetches only
  the steps after it (plus ``overlap_steps`` re-read, because the newest points can still
  change while late scrapes arrive). Memory is bounded: at most ``max_cached_steps`` per
  query and ``max_cached_queries`` queries (least recently used dropped). The cache lives in
  memory only: a restarted operator refetches.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from peakwise.forecasting.series import FloatArray, Series

MAX_POINTS_PER_QUERY = 10_000
"""Steps per range query; Prometheus refuses more than 11,000 points per series."""


class PrometheusHistoryError(RuntimeError):
    """Demand history could not be read; the message says why, fit to show in a condition."""


class PromQLError(PrometheusHistoryError):
    """Prometheus rejected the query (syntax error, unknown function, bad parameters)."""


class PrometheusAuthError(PrometheusHistoryError):
    """Prometheus (or a proxy before it) refused the credentials (HTTP 401/403)."""


class PrometheusUnavailableError(PrometheusHistoryError):
    """Prometheus could not be reached or kept failing/timing out after the retries."""


class EmptyResultError(PrometheusHistoryError):
    """The query matched no data at all in the requested range."""


class MultipleSeriesError(PrometheusHistoryError):
    """The query returned several series where one demand series was expected."""


@dataclass
class FetchStats:
    """Counters for tests and metrics: what the adapter actually asked Prometheus."""

    requests: int = 0
    retries: int = 0
    steps_requested: int = 0
    cache_hits: int = 0


@dataclass
class _History:
    """Known values of one (query, step) on the grid from ``start`` (epoch seconds)."""

    start: int
    values: FloatArray
    lock: threading.Lock = field(default_factory=threading.Lock)

    def end(self, step: int) -> int:
        return self.start + (int(self.values.shape[0]) - 1) * step


_STATUS = re.compile(r"HTTP Status Code (\d{3})")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _aligned(moment: datetime, step: int) -> int:
    if moment.tzinfo is None:
        raise ValueError("start and end must be timezone-aware (UTC)")
    seconds = math.floor(moment.timestamp())
    return seconds - seconds % step


def _error_detail(text: str) -> str:
    """The ``error`` field of Prometheus' JSON error body, if the message carries one."""
    found = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    return found.group(1).replace('\\"', '"') if found else text[:300]


class PrometheusHistory:
    """Reads demand series from Prometheus' HTTP API for the forecasters."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float = 10.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_points: int = MAX_POINTS_PER_QUERY,
        overlap_steps: int = 5,
        max_cached_steps: int = 45 * 1440,
        max_cached_queries: int = 2048,
        client: Any = None,
    ) -> None:
        if not 1 <= max_points <= 11_000:
            raise ValueError("max_points must be between 1 and 11,000 (Prometheus' limit)")
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_points = max_points
        self.overlap_steps = overlap_steps
        self.max_cached_steps = max_cached_steps
        self.max_cached_queries = max_cached_queries
        self.stats = FetchStats()
        self._cache: OrderedDict[tuple[str, int], _History] = OrderedDict()
        self._cache_lock = threading.Lock()
        if client is None:
            from prometheus_api_client import PrometheusConnect
            from urllib3.util.retry import Retry

            # No retries inside the client: this class retries, with its own backoff and
            # errors, and must see each HTTP status.
            client = PrometheusConnect(
                url=url,
                headers=dict(headers) if headers else None,
                retry=Retry(total=0, raise_on_status=False),
                timeout=max(1, math.ceil(timeout_seconds)),
            )
        self._client = client

    # --- public --------------------------------------------------------------------------
    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        """The query's values on the aligned grid over [start, end]; NaN where no sample."""
        if step_seconds < 1:
            raise ValueError(f"step_seconds must be at least 1, got {step_seconds}")
        step = int(step_seconds)
        first, last = _aligned(start, step), _aligned(end, step)
        if last < first:
            raise ValueError("end must not be before start")
        history = self._history(query, step, first)
        with history.lock:
            self._update(query, step, history, first, last)
            values = self._window(history, step, first, last)
            # Trim after answering: the caller gets the whole range; the cache keeps its bound.
            self._trim(history, step)
        if np.isnan(values).all():
            raise EmptyResultError(
                f"no data for {query!r} between {_iso(first)} and {_iso(last)} "
                f"(step {step}s): check the metric name and labels"
            )
        return Series(datetime.fromtimestamp(first, UTC), step, values)

    async def afetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        """``fetch`` in a worker thread: safe to await from the operator's event loop."""
        return await asyncio.to_thread(self.fetch, query, start, end, step_seconds)

    def forget(self, query: str | None = None) -> None:
        """Drop the cached history of one query (all steps), or of every query."""
        with self._cache_lock:
            for key in [k for k in self._cache if query is None or k[0] == query]:
                del self._cache[key]

    def cached_steps(self) -> int:
        """Steps held in the cache over all queries (memory is ~8 bytes each)."""
        with self._cache_lock:
            return sum(h.values.shape[0] for h in self._cache.values())

    # --- cache -----------------------------------------------------------------------------
    def _history(self, query: str, step: int, first: int) -> _History:
        key = (query, step)
        with self._cache_lock:
            history = self._cache.get(key)
            if history is None:
                history = _History(start=first, values=np.empty(0))
                self._cache[key] = history
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cached_queries:
                self._cache.popitem(last=False)
            return history

    def _update(self, query: str, step: int, history: _History, first: int, last: int) -> None:
        """Fetch what the cache lacks for [first, last] and merge it in."""
        if history.values.shape[0] == 0:
            missing = [(first, last)]
        else:
            cached_end = history.end(step)
            missing = []
            if first < history.start:
                missing.append((first, history.start - step))
            # Re-read the newest cached steps: late scrapes can still change them.
            tail_from = max(first, history.start, cached_end - self.overlap_steps * step)
            if last >= tail_from:
                missing.append((tail_from, last))
            if not missing:
                self.stats.cache_hits += 1
        for lo, hi in missing:
            fetched = self._fetch_range(query, step, lo, hi)
            self._merge(history, step, lo, fetched)

    def _merge(self, history: _History, step: int, lo: int, fetched: FloatArray) -> None:
        if history.values.shape[0] == 0:
            history.start, history.values = lo, fetched
            return
        new_start = min(history.start, lo)
        new_end = max(history.end(step), lo + (fetched.shape[0] - 1) * step)
        merged = np.full((new_end - new_start) // step + 1, np.nan)
        at = (history.start - new_start) // step
        merged[at : at + history.values.shape[0]] = history.values
        at = (lo - new_start) // step
        merged[at : at + fetched.shape[0]] = fetched
        history.start, history.values = new_start, merged

    def _trim(self, history: _History, step: int) -> None:
        extra = history.values.shape[0] - self.max_cached_steps
        if extra > 0:
            history.values = history.values[extra:].copy()
            history.start += extra * step

    def _window(self, history: _History, step: int, first: int, last: int) -> FloatArray:
        out = np.full((last - first) // step + 1, np.nan)
        lo = max(first, history.start)
        hi = min(last, history.end(step))
        if hi >= lo:
            src = (lo - history.start) // step
            dst = (lo - first) // step
            count = (hi - lo) // step + 1
            out[dst : dst + count] = history.values[src : src + count]
        return out

    # --- Prometheus ----------------------------------------------------------------------
    def _fetch_range(self, query: str, step: int, first: int, last: int) -> FloatArray:
        """Values on the grid [first, last], chunked under the points limit."""
        values = np.full((last - first) // step + 1, np.nan)
        labels: Mapping[str, str] | None = None
        chunk = self.max_points * step
        lo = first
        while lo <= last:
            hi = min(last, lo + chunk - step)
            result = self._query_range(query, lo, hi, step)
            if len(result) > 1:
                shown = ", ".join(_labels(r.get("metric", {})) for r in result[:3])
                raise MultipleSeriesError(
                    f"{query!r} returned {len(result)} series ({shown}"
                    f"{', ...' if len(result) > 3 else ''}); aggregate them, e.g. sum(...)"
                )
            if result:
                metric = result[0].get("metric", {})
                if labels is not None and metric != labels:
                    raise MultipleSeriesError(
                        f"{query!r} returned different series over time "
                        f"({_labels(labels)} then {_labels(metric)}); aggregate them"
                    )
                labels = metric
                for stamp, text in result[0].get("values", []):
                    index = round((float(stamp) - first) / step)
                    value = float(text)
                    if 0 <= index < values.shape[0] and math.isfinite(value):
                        values[index] = value
            lo = hi + step
        return values

    def _query_range(self, query: str, first: int, last: int, step: int) -> list[dict[str, Any]]:
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        attempt = 0
        while True:
            self.stats.requests += 1
            self.stats.steps_requested += (last - first) // step + 1
            try:
                result: list[dict[str, Any]] = self._client.custom_query_range(
                    query,
                    start_time=datetime.fromtimestamp(first, UTC),
                    end_time=datetime.fromtimestamp(last, UTC),
                    step=str(step),
                    params={"timeout": f"{self.timeout_seconds:g}s"},
                )
                return result
            except PrometheusApiClientException as err:
                text = str(err)
                status_match = _STATUS.search(text)
                status = int(status_match.group(1)) if status_match else 0
                detail = _error_detail(text)
                if status in (401, 403):
                    raise PrometheusAuthError(
                        f"Prometheus at {self.url} refused the request (HTTP {status}): "
                        "check the credentials/headers"
                    ) from None
                if status in (400, 422):
                    raise PromQLError(f"Prometheus rejected {query!r}: {detail}") from None
                if status not in _RETRY_STATUS:
                    raise PrometheusHistoryError(
                        f"Prometheus at {self.url} answered HTTP {status}: {detail}"
                    ) from None
                failure = f"HTTP {status}: {detail}"
            except requests.exceptions.Timeout:
                failure = f"no answer within {self.timeout_seconds:g}s"
            except requests.exceptions.RequestException as err:
                failure = f"cannot connect ({type(err).__name__})"
            if attempt >= self.retries:
                raise PrometheusUnavailableError(
                    f"Prometheus at {self.url} is unavailable after {attempt + 1} attempts: "
                    f"{failure}"
                )
            time.sleep(self.backoff_seconds * 2**attempt)
            attempt += 1
            self.stats.retries += 1


def _labels(metric: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

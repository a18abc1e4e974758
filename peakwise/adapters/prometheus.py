"""Demand history from Prometheus: chunked, step-aligned, retried, cached incrementally.

``PrometheusHistory.fetch(query, start, end, step_seconds)`` returns a ``Series`` on the grid
``start, start + step, ... , end`` (both aligned down to a multiple of the step since the
epoch, so successive calls share one grid); steps without a sample are NaN (gaps, never 0).

* Built on prometheus-api-client, which is synchronous: ``afetch`` runs ``fetch`` in a worker
  thread so the operator's event loop never blocks on the network.
* Prometheus answers at most 11,000 points per series per range query, so longer ranges are
  split into chunks of ``max_points`` (10,000) steps.
* Retries are urllib3's own (``Retry`` on the client's session): connection failures and
  429/502/503/504 answers are retried with exponential backoff (honouring Retry-After), a
  query that times out is not (it would only time out again, and hold the caller up); every
  answer's status is read from the response itself by a session hook, never from message
  text. Each fetch has a time budget (``query_budget_seconds``) over all its chunks and
  retries, so one slow or hostile query cannot hold a planning round. Every failure is a
  ``PrometheusHistoryError`` subclass naming the cause, and never echoes the labels of the
  series a query matched (a tenant's query must not read other tenants' label sets into its
  status).
* Beyond a bare URL: ``headers`` (e.g. ``X-Scope-OrgID`` for Mimir, Cortex or a Thanos
  tenancy proxy), ``bearer_token_file`` (read again whenever the file changes, so a rotated
  projected token is picked up without a restart) and ``ca_file`` (a private CA). SigV4
  (Amazon Managed Prometheus) goes through a signing proxy beside the operator
  (docs/scale-and-providers.md).
* ``instant(query)`` answers an instant query (OpenCost prices); ``retention()`` reads the
  server's sample retention from ``/api/v1/status/runtimeinfo`` (None when the server does
  not say: Mimir, Thanos and most proxies do not serve it).
* Incremental: each ``(query, step)`` keeps the history it fetched; the next call fetches only
  the steps after it (plus ``overlap_steps`` re-read, because the newest points can still
  change while late scrapes arrive). Memory is bounded: at most ``max_cached_steps`` per
  query, ``max_cached_queries`` queries and ``max_cached_bytes`` in all (least recently used
  dropped first). The cache lives in memory only: a restarted operator refetches.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import numpy as np
import requests
import requests.auth
from prometheus_api_client import PrometheusConnect
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.util.retry import Retry

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


class QueryBudgetError(PrometheusUnavailableError):
    """One fetch ran out of its time budget (slow Prometheus, or a very expensive query)."""


class _HTTPStatusError(Exception):
    """A non-200 answer, raised by the session's response hook with the real status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status, self.detail = status, detail


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


RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Answers worth retrying: overloaded or briefly unavailable. Not 500 (a query that breaks
Prometheus breaks it again) and not a timeout (a query too slow once is too slow again)."""


def _counting_retry(stats: FetchStats, **settings: Any) -> Retry:
    """urllib3's Retry, counting each retry it grants in `stats` (urllib3 makes a new Retry
    of the same class at every attempt, so the count lives in the closure)."""

    class CountingRetry(Retry):
        def increment(
            self,
            method: str | None = None,
            url: str | None = None,
            response: BaseHTTPResponse | None = None,
            error: Exception | None = None,
            _pool: ConnectionPool | None = None,
            _stacktrace: TracebackType | None = None,
        ) -> Self:
            # Raises when no retry is left; each one granted is counted.
            granted = super().increment(method, url, response, error, _pool, _stacktrace)
            stats.retries += 1
            return granted

    return CountingRetry(**settings)


def _aligned(moment: datetime, step: int) -> int:
    if moment.tzinfo is None:
        raise ValueError("start and end must be timezone-aware (UTC)")
    seconds = math.floor(moment.timestamp())
    return seconds - seconds % step


def _error_detail(text: str) -> str:
    """The ``error`` field of Prometheus' JSON error body, if the message carries one."""
    found = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    return (found.group(1).replace('\\"', '"') if found else text)[:300]


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
        query_budget_seconds: float = 30.0,
        max_points: int = MAX_POINTS_PER_QUERY,
        overlap_steps: int = 5,
        max_cached_steps: int = 45 * 1440,
        max_cached_queries: int = 2048,
        max_cached_bytes: int = 256 * 2**20,
        client: Any = None,
        bearer_token_file: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        if not 1 <= max_points <= 11_000:
            raise ValueError("max_points must be between 1 and 11,000 (Prometheus' limit)")
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.query_budget_seconds = query_budget_seconds
        self.max_points = max_points
        self.overlap_steps = overlap_steps
        self.max_cached_steps = max_cached_steps
        self.max_cached_queries = max_cached_queries
        self.max_cached_bytes = max_cached_bytes
        self.stats = FetchStats()
        self._cache: OrderedDict[tuple[str, int], _History] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.headers = dict(headers or {})
        if client is None:
            session = requests.Session()
            session.hooks["response"].append(self._on_response)
            if bearer_token_file:
                session.auth = BearerTokenFile(bearer_token_file)
            if ca_file:
                session.verify = ca_file
            self._session: requests.Session | None = session
            client = PrometheusConnect(
                url=url,
                headers=dict(headers) if headers else None,
                retry=_counting_retry(
                    self.stats,
                    total=retries,
                    connect=retries,
                    read=False,  # a timed-out query is not asked again: raised at once
                    status=retries,
                    status_forcelist=RETRY_STATUSES,
                    backoff_factor=backoff_seconds,
                    respect_retry_after_header=True,
                    allowed_methods=frozenset({"GET", "POST"}),
                    raise_on_status=False,  # the last answer reaches the hook
                ),
                session=session,
            )
        else:
            self._session = None
        self._client = client

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """Turn any answer but 200 into `_HTTPStatusError`, with its status."""
        if response.status_code != 200:
            raise _HTTPStatusError(response.status_code, _error_detail(response.text))

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
        deadline = time.monotonic() + self.query_budget_seconds
        with history.lock:
            self._update(query, step, history, first, last, deadline)
            values = self._window(history, step, first, last)
            # Trim after answering: the caller gets the whole range; the cache keeps its bound.
            self._trim(history, step)
        with self._cache_lock:
            self._evict()
        if np.isnan(values).all():
            raise EmptyResultError(
                f"no data for {query!r} between {_iso(first)} and {_iso(last)} "
                f"(step {step}s): check the metric name and labels"
            )
        return Series(datetime.fromtimestamp(first, UTC), step, values)

    async def afetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        """``fetch`` in a worker thread: safe to await from the operator's event loop."""
        return await asyncio.to_thread(self.fetch, query, start, end, step_seconds)

    def instant(self, query: str) -> list[float]:
        """The value of each series an instant query returns (NaN for a non-number)."""
        try:
            result: list[dict[str, Any]] = self._client.custom_query(
                query, params={"timeout": f"{self.timeout_seconds:g}s"}
            )
        except _HTTPStatusError as answer:
            raise self._refused(query, answer, 1) from None
        except requests.exceptions.RequestException as err:
            raise PrometheusUnavailableError(
                f"Prometheus at {self.url} is unavailable: {type(err).__name__}"
            ) from None
        values = []
        for item in result:
            try:
                values.append(float(item.get("value", [0, "nan"])[1]))
            except (TypeError, ValueError, IndexError):
                values.append(math.nan)
        return values

    def retention(self) -> timedelta | None:
        """How long the server keeps samples (``storageRetention`` of runtimeinfo, e.g.
        ``15d`` or ``15d or 10GiB``); None when it does not say."""
        if self._session is None:
            return None
        try:
            response = self._session.get(
                f"{self.url.rstrip('/')}/api/v1/status/runtimeinfo",
                headers=self.headers,
                timeout=self.timeout_seconds,
            )
            data = response.json().get("data") or {}
        except (_HTTPStatusError, requests.exceptions.RequestException, ValueError):
            return None
        return parse_retention(str(data.get("storageRetention") or ""))

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
            self._evict()
            return history

    def _evict(self) -> None:
        """Drop least recently used queries until the cache is within its bounds (the newest
        query always stays). Called with the cache lock held."""
        while len(self._cache) > 1 and (
            len(self._cache) > self.max_cached_queries
            or sum(h.values.nbytes for h in self._cache.values()) > self.max_cached_bytes
        ):
            self._cache.popitem(last=False)

    def cached_bytes(self) -> int:
        """Bytes the cached histories hold."""
        with self._cache_lock:
            return sum(h.values.nbytes for h in self._cache.values())

    def _update(
        self, query: str, step: int, history: _History, first: int, last: int, deadline: float
    ) -> None:
        """Fetch what the cache lacks for [first, last] and merge it in, by `deadline`."""
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
            fetched = self._fetch_range(query, step, lo, hi, deadline)
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
    def _fetch_range(
        self, query: str, step: int, first: int, last: int, deadline: float
    ) -> FloatArray:
        """Values on the grid [first, last], chunked under the points limit."""
        values = np.full((last - first) // step + 1, np.nan)
        labels: Mapping[str, str] | None = None
        chunk = self.max_points * step
        lo = first
        while lo <= last:
            hi = min(last, lo + chunk - step)
            result = self._query_range(query, lo, hi, step, deadline)
            if len(result) > 1:
                # Counted, never listed: the labels may be other tenants' series.
                raise MultipleSeriesError(
                    f"{query!r} returned {len(result)} series, not one: aggregate them, "
                    "e.g. sum(...)"
                )
            if result:
                metric = result[0].get("metric", {})
                if labels is not None and metric != labels:
                    raise MultipleSeriesError(
                        f"{query!r} returned different series over time: aggregate them"
                    )
                labels = metric
                for stamp, text in result[0].get("values", []):
                    index = round((float(stamp) - first) / step)
                    value = float(text)
                    if 0 <= index < values.shape[0] and math.isfinite(value):
                        values[index] = value
            lo = hi + step
        return values

    def _query_range(
        self, query: str, first: int, last: int, step: int, deadline: float
    ) -> list[dict[str, Any]]:
        over_budget = QueryBudgetError(
            f"reading {query!r} from Prometheus at {self.url} took longer than its "
            f"{self.query_budget_seconds:g}s budget"
        )
        left = deadline - time.monotonic()
        if left <= 0:
            raise over_budget
        timeout = min(self.timeout_seconds, left)
        retried = self.stats.retries
        self.stats.requests += 1
        self.stats.steps_requested += (last - first) // step + 1
        try:
            result: list[dict[str, Any]] = self._client.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(first, UTC),
                end_time=datetime.fromtimestamp(last, UTC),
                step=str(step),
                # Sent to Prometheus too, so it gives up on its side as well.
                params={"timeout": f"{max(timeout, 1.0):g}s"},
                timeout=timeout,
            )
            return result
        except _HTTPStatusError as answer:
            raise self._refused(query, answer, 1 + self.stats.retries - retried) from None
        except requests.exceptions.Timeout:
            if timeout < self.timeout_seconds:  # cut short by the budget
                raise over_budget from None
            raise PrometheusUnavailableError(
                f"Prometheus at {self.url} gave no answer to {query!r} within {timeout:g}s "
                "(not retried: a query too slow once is too slow again)"
            ) from None
        except requests.exceptions.RequestException as err:
            attempts = 1 + self.stats.retries - retried
            raise PrometheusUnavailableError(
                f"Prometheus at {self.url} is unavailable after {attempts} attempts: "
                f"cannot connect ({type(err).__name__})"
            ) from None

    def _refused(
        self, query: str, answer: _HTTPStatusError, attempts: int
    ) -> PrometheusHistoryError:
        status, detail = answer.status, answer.detail
        if status in (401, 403):
            return PrometheusAuthError(
                f"Prometheus at {self.url} refused the request (HTTP {status}): "
                "check the credentials/headers"
            )
        if status in (400, 422):
            return PromQLError(f"Prometheus rejected {query!r}: {detail}")
        if status in RETRY_STATUSES:
            return PrometheusUnavailableError(
                f"Prometheus at {self.url} is unavailable after {attempts} attempts: "
                f"HTTP {status}: {detail}"
            )
        return PrometheusHistoryError(f"Prometheus at {self.url} answered HTTP {status}: {detail}")


class BearerTokenFile(requests.auth.AuthBase):
    """`Authorization: Bearer <token>` from a file, read again when the file changes (a
    projected ServiceAccount token or a mounted Secret is rotated in place)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._token = ""
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime, stat.st_size)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as handle:
                    self._token = handle.read().strip()
                self._stamp = stamp
            return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


_RETENTION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_RETENTION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_retention(text: str) -> timedelta | None:
    """A Prometheus retention (``15d``, ``1y2w``, ``15d or 10GiB``) as a timedelta; None for
    no time limit or an unknown form (a size-only limit says nothing about time)."""
    first = text.split(" or ", maxsplit=1)[0].strip()
    parts = _RETENTION_PART.findall(first)
    if not parts or "".join(n + u for n, u in parts) != first:
        return None
    seconds = sum(int(n) * _RETENTION_UNITS[u] for n, u in parts)
    return timedelta(seconds=seconds) if seconds > 0 else None


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Forecasts for the operator: history from Prometheus, a fitted model per service, refits.

The estimators do no I/O; this module fetches history through a `HistorySource` (the
Prometheus adapter), keeps one fitted model per InferenceDeployment, refits it when it is
older than `refit_every`, and turns a prediction into the planner's DemandForecast.

Deployments with the same demand query and forecast settings (history, lead, window,
quantile) share one fitted model: fitting is the expensive part of a round (about a second
per 14-day series on one core), and at scale many deployments follow the same series (one
model served by several teams, replicas of a service per namespace). Such a group is fitted
once per refit, not once per deployment; its history comes from the same cached query.

Fits run on a background worker, never as a cost every round has to pay:

* A model older than `refit_every` keeps serving while its refit runs. The refit starts
  from a copy of it, so the forecaster's warm-started selection (`AutoForecaster`,
  `warm_start`) carries its scores over, as in `peakwise backtest`; after a restart the
  first fit starts afresh.
* A round first queues the fits it needs (`schedule`), then waits for them until a deadline
  (`wait_for_fits`), and not at all when they cannot finish by then. A service still
  without a model (a new service, or every service after the operator starts) gets a
  *provisional* forecast, its latest observed demand: the planner keeps at least the
  capacity running now and scales up if that demand needs more, so a restart changes no
  plan; the Forecasting condition says so until the fit lands. So the first round after a
  start with 1,000 distinct queries takes seconds, not the ~1,000 s of fits it would
  otherwise.
* Every service runs `forecasting.target.ShortfallForecaster`, as `peakwise backtest` does:
  the margin is calibrated at every fit to the service's `slo.shortfallMinutes` by replaying
  what the planner would have held (its hold rule comes from the spec and the lead time), a
  new service starts on the calibrated reactive rule and, for its first day, is refitted as
  its history grows (`refit_interval`: when it has grown by a tenth, every 5 minutes at
  most often), and forecasts
  take over when they meet the target for less (the calibrated reactive rule is the model's
  own forecast, not a fallback: the Forecasting condition stays True and names it).
  `ForecastResult.calibration` carries the
  target, the margin in use, the shortfall replayed on the history and the shortfall the
  served forecasts achieved over the last 7 days, for status and metrics.
* With the expert override `forecast.quantile`, a fitted model whose own backtest covers far
  less often than its quantile asks (`coverage_tolerance`), or that had too little history
  to learn seasonality, is not trusted alone: the forecast is at least the reactive one, and
  the condition says why. (Calibrated services need no such net: the calibration is it.)
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from time import monotonic
from typing import Protocol

import numpy as np

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import CalibrationInfo, ForecastInfo, PeakForecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.shortfall import HoldRule
from peakwise.forecasting.target import (
    ShortfallForecaster,
    hold_rule,
    refit_interval,
    selection_quantile,
    service_forecaster,
)
from peakwise.operator import metrics
from peakwise.operator.fitqueue import FairExecutor
from peakwise.planner import DemandForecast

STEP_SECONDS = 60


class HistorySource(Protocol):
    """Where demand history comes from (Prometheus in production, anything in tests)."""

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        """Demand per step over [start, end]; NaN for steps without data. Raises on failure."""
        ...


@dataclass(frozen=True)
class ForecastResult:
    forecast: DemandForecast | None
    """None when there is no usable forecast (no data); the planner then holds capacity."""
    info: ForecastInfo | None
    observed: float | None
    """The latest observed demand (units/s), if any."""
    problem: str = ""
    """Why there is no forecast, for the Forecasting condition."""
    fallback: str = ""
    """Why the model's forecast alone does not size the service (provisional or reactive)."""
    model_fitted_at: datetime | None = None
    """When the model that forecast was fitted (None before the first fit)."""
    stale: str = ""
    """Why the model is older than its refits should let it be (they fail or hang)."""

    @property
    def calibration(self) -> CalibrationInfo | None:
        """The shortfall target, the margin in use, the replayed and the achieved shortfall
        (None until the service's model is fitted)."""
        return self.info.calibration if self.info is not None else None


@dataclass(frozen=True)
class CarriedAchieved:
    """The achieved shortfall a service's status reported before the operator restarted:
    the share of minutes short over the `seconds` up to `until`."""

    shortfall: float
    seconds: float
    until: datetime


def reactive_peak(values: FloatArray, margin: float) -> float | None:
    """The reactive forecast: the highest known demand of `values` times `margin`."""
    known = values[~np.isnan(values)]
    return float(known.max()) * margin if known.size else None


ForecasterFactory = Callable[[int, int, float], PeakForecaster]
"""(lead steps, window steps, selection quantile) -> an unfitted forecaster, which each
service's ``ShortfallForecaster`` calibrates (``default_forecaster`` in production)."""


def fit_model(
    factory: ForecasterFactory,
    spec: InferenceDeploymentSpec,
    rule: HoldRule,
    width: int,
    series: Series,
    previous: ShortfallForecaster | None = None,
    carried: CarriedAchieved | None = None,
) -> ShortfallForecaster:
    """One fit (module-level so a process pool can run it).

    A refit starts from a copy of the `previous` model, so a warm-started forecaster carries
    its selection over and the shortfall the served forecasts achieved is measured (the
    served model is never refitted in place: it keeps predicting meanwhile). A first fit
    after a restart starts the record of what was achieved from `carried`. The model keeps
    only what forecasting this window shape needs: the operator holds one per service, and
    the history lives in the Prometheus adapter's cache already.
    """
    if previous is not None:
        model = copy.deepcopy(previous)
    else:
        quantile = selection_quantile(spec.slo.shortfall_minutes, spec.forecast.quantile)
        model = service_forecaster(spec, rule, width, factory(rule.lead, width, quantile))
        if carried is not None:
            model.carry_achieved(carried.shortfall, carried.seconds, carried.until, STEP_SECONDS)
    return model.fit(series).discard_history()


@dataclass
class _Fitted:
    model: ShortfallForecaster
    fitted_at: datetime


_ModelKey = tuple[str, timedelta, float | None, float, HoldRule]
"""(query, history, quantile override, shortfall target, hold rule): what a fitted model
depends on (the hold rule holds the lead and window steps and the replica size)."""


class FitTimeoutError(RuntimeError):
    """A fit ran past its time limit; its worker was stopped and replaced."""


def _terminate(pool: Executor) -> None:
    """Stop a process pool's workers now, a hung fit among them."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14 and later
    if terminate is not None:
        terminate()
        return
    # Before 3.14 ProcessPoolExecutor has no public way to stop a running worker.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class ForecastService:
    def __init__(
        self,
        source: HistorySource,
        factory: ForecasterFactory,
        refit_every: timedelta = timedelta(hours=6),
        window: timedelta = timedelta(minutes=1),
        *,
        recent: timedelta = timedelta(hours=1),
        reactive_margin: float = 1.25,
        coverage_tolerance: float = 0.1,
        fit_workers: int = 1,
        fit_pool: Callable[[], Executor] | None = None,
        fit_timeout: timedelta = timedelta(minutes=5),
    ) -> None:
        self.source = source
        self.factory = factory
        self.refit_every = refit_every
        self.window = window
        self.recent = recent
        self.reactive_margin = reactive_margin
        self.coverage_tolerance = coverage_tolerance
        self._fitted: dict[_ModelKey, _Fitted] = {}
        self._model_of: dict[tuple[str, str], _ModelKey] = {}
        self._jobs: dict[_ModelKey, Future[None]] = {}
        self._failures: dict[_ModelKey, tuple[int, datetime]] = {}
        """Failed fits in a row per model and when the next may start (a fit that fails on
        this history fails again next round: retrying every round only loads Prometheus)."""
        self._carried: dict[_ModelKey, CarriedAchieved] = {}
        """What a model not fitted yet takes over from its service's status (a restart)."""
        self._memo: dict[_ModelKey, tuple[datetime, _Fitted | None, ForecastResult]] = {}
        self._memo_locks: dict[_ModelKey, threading.Lock] = {}
        self._lock = threading.Lock()
        # One worker by default: on a small node the fits must leave a core to the event loop.
        self._executor = FairExecutor(fit_workers, "peakwise-fit")
        self.fit_timeout = fit_timeout
        """A fit in a worker process running longer is stopped, its worker replaced."""
        self._workers = fit_workers
        # Where the CPU part of a fit runs: a process pool keeps fits off this process' GIL
        # (the event loop and the round's fetches would otherwise wait behind them).
        self._new_fit_pool = fit_pool
        self._fit_pool = fit_pool() if fit_pool else None
        self._fit_seconds = 1.0
        """Moving mean of a fit's duration, to judge whether waiting for fits pays."""
        self.fits = 0
        """How many models were fitted (for tests and benchmarks)."""

    def close(self) -> None:
        """Stop the fit worker (queued fits are dropped, a running one finishes)."""
        self._executor.shutdown()
        if self._fit_pool is not None:
            self._fit_pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            model_key = self._model_of.pop(key, None)
            if model_key is not None and model_key not in self._model_of.values():
                self._fitted.pop(model_key, None)
                self._memo.pop(model_key, None)
                self._memo_locks.pop(model_key, None)
                self._failures.pop(model_key, None)
                self._carried.pop(model_key, None)
                job = self._jobs.pop(model_key, None)
                if job is not None:
                    job.cancel()

    def pending_fits(self) -> int:
        """Fits queued or running."""
        with self._lock:
            return sum(1 for job in self._jobs.values() if not job.done())

    def schedule(
        self,
        key: tuple[str, str],
        spec: InferenceDeploymentSpec,
        lead: timedelta,
        now: datetime,
        carried: CarriedAchieved | None = None,
    ) -> None:
        """Queue the fit this deployment's model needs (none, first fit, or refit). Cheap.

        `carried`: the achieved shortfall the deployment's status kept, for a model this
        process has not fitted yet to start its record from (ignored once it has one)."""
        self._job(key, spec, lead, now, carried)

    def wait_for_fits(self, deadline: float) -> None:
        """Wait until no fit is pending, or until `deadline` (a `time.monotonic()` value).

        Gives up at once when the queued fits, at the mean fit time so far, cannot finish by
        the deadline: a round then plans those services provisionally instead of idling.
        """
        while True:
            with self._lock:
                pending = [job for job in self._jobs.values() if not job.done()]
                projected = len(pending) * self._fit_seconds / self._workers
            left = deadline - monotonic()
            if not pending or projected > left:
                return
            _wait(pending[0], left)

    def forecast(
        self,
        key: tuple[str, str],
        spec: InferenceDeploymentSpec,
        lead: timedelta,
        now: datetime,
        wait: bool = True,
    ) -> ForecastResult:
        """Blocking (network; with `wait`, the fits it starts): run it in a thread.

        Without `wait`, a deployment whose model is not fitted yet is planned provisionally and a
        stale model serves while its refit runs in the background.
        """
        model_key, fitted, job = self._job(key, spec, lead, now)
        if job is not None and wait:
            _wait(job, None)
            fitted = self._fitted.get(model_key) or fitted
        end = now.replace(second=0, microsecond=0)
        # Deployments of one model key share its forecast for the minute: one fetch and one
        # prediction per group and minute, however many deployments and rounds ask.
        with self._lock:
            lock = self._memo_locks.setdefault(model_key, threading.Lock())
        with lock:
            memo = self._memo.get(model_key)
            if memo is not None and memo[0] == end and memo[1] is fitted:
                return memo[2]
            if fitted is None:
                result = self._until_fitted(spec, lead, end, self._why_no_model(job))
            else:
                result = self._predict(fitted, spec, lead, self._steps(lead), self._width(), end)
            # A failure is not shared for the rest of the minute: the next round tries again,
            # so a Prometheus that is back is used at once.
            if result.forecast is not None:
                self._memo[model_key] = (end, fitted, result)
            else:
                self._memo.pop(model_key, None)
        if fitted is not None:
            # Refits are due every _refit_after; twice that without one means they fail or hang.
            age = now - fitted.fitted_at
            if age > 2 * self._refit_after(fitted):
                hours = age.total_seconds() / 3600
                failed = job is not None and job.done() and not job.cancelled() and job.exception()
                why = f"refits fail ({job.exception()})" if failed and job else "a refit is pending"
                result = replace(result, stale=f"the model was fitted {hours:.1f}h ago: {why}")
        return result

    def _steps(self, d: timedelta) -> int:
        return max(0, round(d.total_seconds() / STEP_SECONDS))

    def _width(self) -> int:
        return max(1, self._steps(self.window))

    def _window_span(self) -> timedelta:
        """The window each forecast covers, in whole steps (the planner holds targets for it)."""
        return timedelta(seconds=self._width() * STEP_SECONDS)

    def _job(
        self,
        key: tuple[str, str],
        spec: InferenceDeploymentSpec,
        lead: timedelta,
        now: datetime,
        carried: CarriedAchieved | None = None,
    ) -> tuple[_ModelKey, _Fitted | None, Future[None] | None]:
        """The deployment's model key, its fitted model if any, and the fit it needs, queued
        if not yet."""
        model_key: _ModelKey = (
            spec.demand.query,
            spec.forecast.history,
            spec.forecast.quantile,
            spec.slo.shortfall_minutes,
            hold_rule(spec, lead, self._window_span(), STEP_SECONDS),
        )
        with self._lock:
            self._model_of[key] = model_key
            fitted = self._fitted.get(model_key)
            if carried is not None and fitted is None:
                self._carried.setdefault(model_key, carried)
            if fitted is not None and now - fitted.fitted_at < self._refit_after(fitted):
                return model_key, fitted, None
            job = self._jobs.get(model_key)
            failure = self._failures.get(model_key)
            if job is not None and job.done() and failure is not None and now < failure[1]:
                return model_key, fitted, job  # failed: its error is shown until the retry
            if job is None or job.done():
                end = now.replace(second=0, microsecond=0)
                # Queued per namespace: one team's many fits do not hold another's.
                job = self._executor.submit(key[0], self._fit, model_key, spec, end, now)
                self._jobs[model_key] = job
            return model_key, fitted, job

    def _refit_after(self, fitted: _Fitted) -> timedelta:
        """A young service is refitted as soon as its history has grown by a tenth."""
        span = fitted.model.history_seconds_
        return timedelta(seconds=refit_interval(span, self.refit_every.total_seconds()))

    # --- fitting, in the background ------------------------------------------------------
    def _fit(
        self, model_key: _ModelKey, spec: InferenceDeploymentSpec, end: datetime, now: datetime
    ) -> None:
        try:
            self._fit_once(model_key, spec, end, now)
        except Exception:
            with self._lock:
                failures = self._failures.get(model_key, (0, now))[0] + 1
                # Back off, doubling from a minute up to the refit interval.
                delay = min(self.refit_every, timedelta(minutes=2 ** min(failures - 1, 16)))
                self._failures[model_key] = (failures, now + delay)
            raise
        with self._lock:
            self._failures.pop(model_key, None)

    def _fit_once(
        self, model_key: _ModelKey, spec: InferenceDeploymentSpec, end: datetime, now: datetime
    ) -> None:
        rule = model_key[-1]
        series = self._history(spec, end - spec.forecast.history, end)
        if np.isnan(series.values).all():
            raise ValueError("the demand query returned no data")
        with self._lock:
            serving = self._fitted.get(model_key)
            carried = self._carried.get(model_key) if serving is None else None
        previous = serving.model if serving is not None else None
        started = monotonic()
        pool = self._fit_pool
        fit = (self.factory, spec, rule, self._width(), series, previous, carried)
        if pool is None:
            model = fit_model(*fit)
        else:
            try:
                fitting = pool.submit(fit_model, *fit)
                model = fitting.result(timeout=self.fit_timeout.total_seconds())
            except TimeoutError:
                _terminate(pool)
                with self._lock:
                    if self._fit_pool is pool and self._new_fit_pool is not None:
                        self._fit_pool = self._new_fit_pool()
                limit = self.fit_timeout.total_seconds()
                raise FitTimeoutError(
                    f"the fit ran past its {limit:g}s limit; its worker was replaced"
                ) from None
            except BrokenExecutor:
                # A worker died (killed, out of memory): the pool is unusable; start another.
                with self._lock:
                    if self._fit_pool is pool and self._new_fit_pool is not None:
                        self._fit_pool = self._new_fit_pool()
                raise
        took = monotonic() - started
        with self._lock:
            self._fit_seconds += (took - self._fit_seconds) * 0.2
            if model_key in self._model_of.values():  # not forgotten meanwhile
                self._fitted[model_key] = _Fitted(model, now)
                self._carried.pop(model_key, None)
            self.fits += 1
        metrics.model_fits.inc()

    def _why_no_model(self, job: Future[None] | None) -> str:
        if job is not None and job.done() and not job.cancelled() and job.exception():
            return f"the model could not be fitted ({job.exception()})"
        return f"the model is being fitted in the background ({self.pending_fits()} queued)"

    # --- forecasting ---------------------------------------------------------------------
    def _history(self, spec: InferenceDeploymentSpec, start: datetime, end: datetime) -> Series:
        return self.source.fetch(spec.demand.query, start, end, STEP_SECONDS)

    def _until_fitted(
        self, spec: InferenceDeploymentSpec, lead: timedelta, end: datetime, why: str
    ) -> ForecastResult:
        """A provisional forecast while the model is fitted: the latest observed demand.

        The planner keeps at least the capacity running now for it (a restart changes no
        plan) and scales up when the latest demand needs more.
        """
        try:
            series = self._history(spec, end - self.recent, end)
        except Exception as error:
            return ForecastResult(None, None, None, f"demand history unavailable: {error}")
        known = series.values[~np.isnan(series.values)]
        if known.size == 0:
            return ForecastResult(None, None, None, "the demand query returned no data")
        observed = float(known[-1])
        forecast = DemandForecast(
            observed,
            _nominal_quantile(spec),
            end + lead,
            "provisional (latest demand)",
            self._window_span(),
            provisional=True,
        )
        reason = f"{why}; meanwhile holding current capacity, more if the latest demand needs it"
        return ForecastResult(forecast, None, observed, fallback=reason)

    def _predict(
        self,
        fitted: _Fitted,
        spec: InferenceDeploymentSpec,
        lead: timedelta,
        lead_steps: int,
        width: int,
        end: datetime,
    ) -> ForecastResult:
        try:
            # Incremental: the fit fetched the history; this reads only the newest minutes.
            series = self._history(spec, end - spec.forecast.history, end)
        except Exception as error:
            return ForecastResult(None, None, None, f"demand history unavailable: {error}")
        known = series.values[~np.isnan(series.values)]
        if known.size == 0:
            return ForecastResult(None, None, None, "the demand query returned no data")
        info = fitted.model.info_
        origin = np.array([len(series) - 1], dtype=np.int64)
        peak = float(fitted.model.predict_target(series, origin)[0])
        observed = float(known[-1])
        if not math.isfinite(peak):
            return ForecastResult(None, info, observed, "the model gave no forecast")
        peak, model, fallback = max(peak, 0.0), info.model, ""
        calibration = info.calibration
        quantile = _nominal_quantile(spec)
        if calibration is not None and calibration.quantile is not None:
            quantile = calibration.quantile
        if spec.forecast.quantile is not None:
            poor = self._poor_backtest(info, spec.forecast.quantile) or _short_history(info)
            if poor:
                recent_steps = max(1, round(self.recent.total_seconds() / STEP_SECONDS))
                reactive = reactive_peak(series.values[-recent_steps:], self.reactive_margin)
                reactive = reactive or 0.0
                fallback = f"{poor}; sized for at least the reactive forecast ({reactive:,.4g}/s)"
                if reactive > peak:
                    peak, model = reactive, f"reactive (model {info.model} not trusted)"
        window = self._window_span()
        forecast = DemandForecast(peak, quantile, end + lead, model, window)
        return ForecastResult(
            forecast, info, observed, fallback=fallback, model_fitted_at=fitted.fitted_at
        )

    def _poor_backtest(self, info: ForecastInfo, quantile: float) -> str:
        """Why the model's own rolling-origin backtest disqualifies it, or ''."""
        if info.coverage is None:
            return ""  # too little history to judge; short-history models say so themselves
        if info.coverage < quantile - self.coverage_tolerance:
            return (
                f"model {info.model} covered the demand peak in {info.coverage:.0%} of its "
                f"backtest, far below the {quantile:.0%} asked for"
            )
        return ""


def _nominal_quantile(spec: InferenceDeploymentSpec) -> float:
    """The quantile a forecast is labelled with when no calibrated one is known yet."""
    if spec.forecast.quantile is not None:
        return spec.forecast.quantile
    return 1.0 - spec.slo.shortfall_minutes


def _short_history(info: ForecastInfo) -> str:
    """Why the model is only a recent-level stand-in, or ''."""
    if not info.short_history:
        return ""
    span = info.training_span_seconds
    known = f" ({span / 3600:.0f} h of it)" if span is not None else ""
    return f"history too short to learn seasonality{known}: model {info.model} is a stand-in"


def _wait(job: Future[None], timeout: float | None) -> None:
    """Wait for a fit; its failure is reported when a forecast needs the model."""
    if timeout is not None and timeout <= 0:
        return
    try:
        job.result(timeout=timeout)
    except Exception:  # a timeout, or the fit's own error (read from the job when needed)
        return


def _minutes(d: timedelta) -> str:
    minutes = round(d.total_seconds() / 60)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"

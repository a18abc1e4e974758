"""Forecasts for the operator: history from Prometheus, a fitted model per service, refits.

The estimators do no I/O; this module fetches history through a `HistorySource` (the
Prometheus adapter), keeps one fitted model per InferenceDeployment, refits it when it is
older than `refit_every`, and turns a prediction into the planner's DemandForecast.

Deployments with the same demand query and forecast settings (history, lead, window,
quantile) share one fitted model: fitting is the expensive part of a round (about a second
per 14-day series on one core), and at scale many deployments follow the same series (one
model served by several teams, replicas of a service per namespace). Such a group is fitted
once per refit, not once per deployment; its history comes from the same cached query.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import ForecastInfo, PeakForecaster
from peakwise.forecasting.series import Series
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


@dataclass
class _Fitted:
    model: PeakForecaster
    fitted_at: datetime


_ModelKey = tuple[str, timedelta, int, int, float]
"""(query, history, lead steps, window steps, quantile): what a fitted model depends on."""

ForecasterFactory = Callable[[int, int, float], PeakForecaster]
"""(lead steps, window steps, quantile) -> an unfitted forecaster."""


class ForecastService:
    def __init__(
        self,
        source: HistorySource,
        factory: ForecasterFactory,
        refit_every: timedelta = timedelta(hours=6),
        window: timedelta = timedelta(minutes=30),
    ) -> None:
        self.source = source
        self.factory = factory
        self.refit_every = refit_every
        self.window = window
        self._fitted: dict[_ModelKey, _Fitted] = {}
        self._model_of: dict[tuple[str, str], _ModelKey] = {}
        self._locks: dict[_ModelKey, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.fits = 0
        """How many models were fitted (for tests and benchmarks)."""

    def forget(self, key: tuple[str, str]) -> None:
        model_key = self._model_of.pop(key, None)
        if model_key is not None and model_key not in self._model_of.values():
            self._fitted.pop(model_key, None)

    def _lock(self, model_key: _ModelKey) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(model_key, threading.Lock())

    def forecast(
        self, key: tuple[str, str], spec: InferenceDeploymentSpec, lead: timedelta, now: datetime
    ) -> ForecastResult:
        """Blocking (network and fitting): run it in a thread."""
        end = now.replace(second=0, microsecond=0)
        start = end - spec.forecast.history
        try:
            series = self.source.fetch(spec.demand.query, start, end, STEP_SECONDS)
        except Exception as error:
            return ForecastResult(None, None, None, f"demand history unavailable: {error}")
        known = series.values[~np.isnan(series.values)]
        if known.size == 0:
            return ForecastResult(None, None, None, "the demand query returned no data")
        lead_steps = max(0, round(lead.total_seconds() / STEP_SECONDS))
        width = max(1, round(self.window.total_seconds() / STEP_SECONDS))
        model_key: _ModelKey = (
            spec.demand.query,
            spec.forecast.history,
            lead_steps,
            width,
            spec.forecast.quantile,
        )
        self._model_of[key] = model_key
        # One fit per model key at a time: concurrent deployments of a group wait and reuse it.
        with self._lock(model_key):
            fitted = self._fitted.get(model_key)
            if fitted is None or now - fitted.fitted_at >= self.refit_every:
                model = self.factory(lead_steps, width, spec.forecast.quantile)
                fitted = _Fitted(model.fit(series), now)
                self._fitted[model_key] = fitted
                with self._locks_lock:
                    self.fits += 1
        origin = np.array([len(series) - 1], dtype=np.int64)
        predicted = fitted.model.predict_peak(
            series, origin, lead=lead_steps, width=width, quantiles=[spec.forecast.quantile]
        )
        peak = float(predicted[0, 0])
        observed = float(known[-1])
        if not math.isfinite(peak):
            return ForecastResult(None, fitted.model.info_, observed, "the model gave no forecast")
        peak_at = now + lead
        return ForecastResult(
            DemandForecast(
                max(peak, 0.0), spec.forecast.quantile, peak_at, fitted.model.info_.model
            ),
            fitted.model.info_,
            observed,
        )

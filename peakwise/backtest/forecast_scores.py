"""Rolling-origin evaluation of the forecasters on a trace (what ``forecast-eval`` runs).

The evaluation replays a trace the way the operator would see it: from ``first_day`` on, each
model is refitted once a day on everything before that day (expanding window, time order) and
forecasts every minute of the day, each origin seeing only data up to itself. Scores are
measured over all those origins, against the actual window peaks, and (with ``horizon``) for
the per-step forecasts against the actual value at every step of the horizon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from peakwise.forecasting.base import IntArray, PeakForecaster, pinball_loss
from peakwise.forecasting.calibration import coverage
from peakwise.forecasting.select import CANDIDATES, default_forecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import step_targets, window_peak_targets

Factory = Callable[[int, int, float], PeakForecaster]


def default_models() -> dict[str, Factory]:
    """Every candidate on its own, the selecting AutoForecaster (``default_forecaster``, as the
    operator uses it), and the older baseline."""
    from peakwise.forecasting.seasonal import SeasonalPeakForecaster

    models: dict[str, Factory] = dict(CANDIDATES)
    models["seasonal-peak (baseline)"] = lambda lead, width, q: SeasonalPeakForecaster(
        lead=lead, width=width
    )
    models["auto (selected)"] = default_forecaster  # as the operator uses it
    return models


@dataclass(frozen=True)
class StepScore:
    """How the per-step quantile forecasts (``predict_steps``) did, step by step."""

    horizon: int
    pinball_loss: FloatArray
    """Pinball loss of the quantile forecast at steps 1 … horizon (index ``h - 1``)."""
    coverage: FloatArray
    """Share of actual values at or below the quantile forecast, per step."""
    fit_seconds: float
    """Mean time of the first per-step forecast after a refit (the per-step part is fitted
    then, on first use)."""
    predict_seconds: float
    """Time of forecasting the whole horizon for one origin from the full history."""

    @property
    def mean_loss(self) -> float:
        return float(np.nanmean(self.pinball_loss))

    @property
    def mean_coverage(self) -> float:
        return float(np.nanmean(self.coverage))


@dataclass(frozen=True)
class ModelScore:
    name: str
    pinball_loss: float
    coverage: float
    mae_median: float
    """Mean absolute error of the median (q = 0.5) forecast of the window peak."""
    fit_seconds: float
    """Mean time of one refit (on an expanding history)."""
    predict_seconds: float
    """Mean time of forecasting one origin from the full history (what the operator does)."""
    models_chosen: tuple[str, ...]
    forecast: FloatArray
    """The quantile forecast for every origin (NaN before the evaluation span)."""
    median: FloatArray
    steps: StepScore | None = None
    """Per-step scores, when ``evaluate`` was given a ``horizon``."""


def evaluate(
    series: Series,
    models: dict[str, Factory],
    *,
    lead: int,
    width: int,
    quantile: float,
    first_origin: int,
    refit_every: int,
    horizon: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ModelScore]:
    """Rolling-origin scores of each model over origins ``first_origin`` onwards; with
    ``horizon``, also of its per-step forecasts over that many steps (same origins, scored
    where the step is inside the trace). Each model is made once and refitted at every
    refit, as the operator and the backtest keep one per service (a warm-started selection
    carries its scores from one refit to the next)."""
    n = len(series)
    actual = window_peak_targets(series.values, lead, width)
    scored: list[ModelScore] = []
    last_origin = n - lead - width  # later origins have no complete window to score
    if first_origin >= last_origin:
        raise ValueError("the trace is too short for this evaluation span, lead and width")
    for name, factory in models.items():
        forecast = np.full(n, np.nan)
        median = np.full(n, np.nan)
        fit_times: list[float] = []
        chosen: list[str] = []
        model = factory(lead, width, quantile)
        steps = _StepTally(horizon, quantile) if horizon else None
        for start in range(first_origin, last_origin, refit_every):
            stop = min(last_origin, start + refit_every)
            began = time.perf_counter()
            model.fit(series.head(start))
            fit_times.append(time.perf_counter() - began)
            chosen.append(model.info_.model)
            origins = np.arange(start, stop, dtype=np.int64)
            out = model.predict_peak(
                series.head(stop), origins, lead=lead, width=width, quantiles=[0.5, quantile]
            )
            median[start:stop], forecast[start:stop] = out[:, 0], out[:, 1]
            if steps:
                steps.add(model, series, origins)
        # The operator's call: one origin, the whole history; best of a few to skip hiccups.
        predict_times = []
        for _ in range(5):
            began = time.perf_counter()
            model.predict_peak(
                series, np.array([n - 1]), lead=lead, width=width, quantiles=[quantile]
            )
            predict_times.append(time.perf_counter() - began)
        span = slice(first_origin, last_origin)
        known = ~np.isnan(actual[span]) & ~np.isnan(median[span])
        errors = np.abs(actual[span][known] - median[span][known])
        scored.append(
            ModelScore(
                name=name,
                pinball_loss=pinball_loss(actual[span], forecast[span], quantile),
                coverage=coverage(actual[span], forecast[span]),
                mae_median=float(errors.mean()) if errors.size else float("nan"),
                fit_seconds=float(np.mean(fit_times)),
                predict_seconds=float(np.min(predict_times)),
                models_chosen=tuple(chosen),
                forecast=forecast,
                median=median,
                steps=steps.score(model, series) if steps else None,
            )
        )
        if progress:
            progress(name)
    return scored


class _StepTally:
    """Per-step loss and coverage summed over the refit periods of one model."""

    def __init__(self, horizon: int, quantile: float) -> None:
        self.horizon = horizon
        self.quantile = quantile
        self.loss = np.zeros(horizon)
        self.covered = np.zeros(horizon)
        self.count = np.zeros(horizon)
        self.fit_times: list[float] = []

    def add(self, model: PeakForecaster, series: Series, origins: IntArray) -> None:
        known = series.head(int(origins.max()) + 1)
        # The first per-step forecast after a refit fits the per-step part: time it alone.
        began = time.perf_counter()
        model.predict_steps(known, origins[:1], horizon=self.horizon, quantiles=[self.quantile])
        self.fit_times.append(time.perf_counter() - began)
        predicted = model.predict_steps(
            known, origins, horizon=self.horizon, quantiles=[self.quantile]
        )[:, :, 0]
        actual = step_targets(series.values, origins, self.horizon)
        ok = ~np.isnan(actual) & ~np.isnan(predicted)
        diff = np.where(ok, actual - predicted, 0.0)
        loss = np.maximum(self.quantile * diff, (self.quantile - 1.0) * diff)
        self.loss += loss.sum(axis=0)
        self.covered += (ok & (actual <= predicted)).sum(axis=0)
        self.count += ok.sum(axis=0)

    def score(self, model: PeakForecaster, series: Series) -> StepScore:
        predict_times = []
        for _ in range(5):
            began = time.perf_counter()
            model.predict_steps(
                series, np.array([len(series) - 1]), horizon=self.horizon, quantiles=[self.quantile]
            )
            predict_times.append(time.perf_counter() - began)
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(self.count > 0, self.loss / self.count, np.nan)
            cover = np.where(self.count > 0, self.covered / self.count, np.nan)
        return StepScore(
            horizon=self.horizon,
            pinball_loss=loss,
            coverage=cover,
            fit_seconds=float(np.mean(self.fit_times)),
            predict_seconds=float(np.min(predict_times)),
        )

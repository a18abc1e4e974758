"""Quantile gradient boosting on calendar and lag features.

The model predicts the window peak *relative to the recent peak*: target and lag features are
logs of ratios to ``scale = max(recent 60-minute peak, floor)``. Trees cannot extrapolate, and
demand levels drift (the servegen trace doubles over two weeks); ratios keep tomorrow's inputs
inside the range the trees saw.

It is trained with ``loss="quantile"`` at the target quantile on the older part of the history
and calibrated (split conformal) on the most recent part, which it never saw.

Per-step forecasts use a second regressor of the same kind, fitted the first time they are
asked for: one model for all steps with the step as a feature (and the target's clock time and
its level yesterday), on the same relative scale, calibrated per step on the held-out part.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from peakwise.forecasting.base import IntArray
from peakwise.forecasting.model import BoolArray, PeakModel
from peakwise.forecasting.naive import DAY_SECONDS
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    last_known,
    recent_peak_base,
    recent_peak_path,
    trailing_gap_fraction,
    trailing_max,
    trailing_mean,
    window_peak_targets,
)

# Windows (seconds) of the lag features.
_SCALE_SECONDS = 3600
_MAX_WINDOWS = (600, 1800, 7200, 21600)
_MEAN_WINDOWS = (3600, 21600, DAY_SECONDS)


@functools.cache
def _thread_controller() -> Any:
    # Created once: it scans the loaded libraries, which takes milliseconds.
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    return ThreadpoolController()


def _limit_threads(threads: int) -> Any:
    """A context limiting OpenMP threads: on a busy 2-core node, oversubscribed OpenMP made a
    0.3 s fit take 20 s."""
    return _thread_controller().limit(limits=threads, user_api="openmp")


@dataclass(frozen=True)
class GBMState:
    regressor: Any
    """The fitted HistGradientBoostingRegressor, or None with too little history."""
    floor: float


class QuantileGBMPeakForecaster(PeakModel[GBMState]):
    """``HistGradientBoostingRegressor(loss="quantile")`` on lag, seasonal and clock features.

    ``step_max_iter``, ``step_learning_rate`` and ``step_rows_per_origin`` configure the
    per-step model (its trees, and how many random steps each training origin contributes).
    """

    name = "quantile-gbm"

    def __init__(
        self,
        max_iter: int = 60,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 40,
        stride: int = 3,
        calibration_fraction: float = 0.2,
        min_training_rows: int = 300,
        threads: int = 1,
        fallback_window_seconds: int = 7200,
        step_max_iter: int = 30,
        step_learning_rate: float = 0.2,
        step_rows_per_origin: int = 4,
        *,
        lead: int = 10,
        width: int = 30,
        quantile: float = 0.95,
        floor_fraction: float = 0.05,
        default_margin: float = 1.25,
        margin: str = "auto",
    ) -> None:
        super().__init__(
            lead=lead,
            width=width,
            quantile=quantile,
            floor_fraction=floor_fraction,
            default_margin=default_margin,
            margin=margin,
        )
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.stride = stride
        self.calibration_fraction = calibration_fraction
        self.min_training_rows = min_training_rows
        self.threads = threads
        self.fallback_window_seconds = fallback_window_seconds
        self.step_max_iter = step_max_iter
        self.step_learning_rate = step_learning_rate
        self.step_rows_per_origin = step_rows_per_origin

    def _calibration_start(self, length: int, lead: int, width: int) -> int:
        return max(0, length - lead - width - int(self.calibration_fraction * length))

    def _scale(self, values: FloatArray, floor: float) -> FloatArray:
        recent = trailing_max(values, self.steps(_SCALE_SECONDS))
        recent = np.where(np.isnan(recent), last_known(values), recent)
        return np.maximum(recent, max(floor, 1e-12))

    def _relative(
        self, values: FloatArray, origins: IntArray, floor: float
    ) -> tuple[Callable[[FloatArray], FloatArray], FloatArray]:
        """The scale at each origin, and a function mapping a column (already taken at the
        origins' rows) to ``log(column / scale)``."""
        eps = max(floor, 1e-12)
        scale = self._scale(values, floor)[origins]

        def rel(column: FloatArray) -> FloatArray:
            with np.errstate(invalid="ignore", divide="ignore"):
                out: FloatArray = np.log(np.maximum(column, eps) / scale)
            return out

        return rel, scale

    def _lag_columns(
        self, values: FloatArray, origins: IntArray, rel: Callable[[FloatArray], FloatArray]
    ) -> list[FloatArray]:
        """Last value, trailing maxima and means at each origin, relative to the scale."""
        columns = [rel(last_known(values)[origins])]
        columns += [rel(trailing_max(values, self.steps(w))[origins]) for w in _MAX_WINDOWS]
        columns += [rel(trailing_mean(values, self.steps(w))[origins]) for w in _MEAN_WINDOWS]
        return columns

    def _context_columns(
        self,
        series: Series,
        origins: IntArray,
        clock_at: IntArray,
        rel: Callable[[FloatArray], FloatArray],
    ) -> list[FloatArray]:
        """Yesterday's level around the origin, the time of day at ``clock_at`` (sin, cos,
        from the series' real start time) and the recent gap share."""
        values = series.values
        day = self.steps(DAY_SECONDS)
        hour_level = trailing_mean(values, self.steps(3600))
        yesterday = np.full(values.shape[0], np.nan)
        if values.shape[0] > day:
            yesterday[day:] = hour_level[:-day]
        start_second = series.start.hour * 3600 + series.start.minute * 60 + series.start.second
        seconds = (start_second + clock_at * series.step_seconds) % DAY_SECONDS
        angle = 2 * np.pi * seconds / DAY_SECONDS
        gaps = trailing_gap_fraction(values, self.steps(3600))[origins]
        return [rel(yesterday[origins]), np.sin(angle), np.cos(angle), gaps]

    def _features(
        self, series: Series, origins: IntArray, lead: int, width: int, floor: float
    ) -> tuple[FloatArray, FloatArray]:
        """Window-peak feature matrix for the origins and their scale; every column is causal."""
        values = series.values
        rel, scale = self._relative(values, origins, floor)
        columns = self._lag_columns(values, origins, rel)
        # Seasonal lag: the same window yesterday.
        day = self.steps(DAY_SECONDS)
        window_max = trailing_max(values, width)
        shifted = np.full(values.shape[0], np.nan)
        if lead + width <= day and values.shape[0] > day - lead - width:
            start = day - lead - width
            shifted[start:] = window_max[: values.shape[0] - start]
        columns.append(rel(shifted[origins]))
        columns += self._context_columns(series, origins, origins, rel)
        return np.column_stack(columns), scale

    def _step_features(
        self, series: Series, origins: IntArray, steps: IntArray, floor: float
    ) -> tuple[FloatArray, FloatArray]:
        """Per-step feature rows: one per (origin, step) pair; every column is causal."""
        values = series.values
        rel, scale = self._relative(values, origins, floor)
        columns = self._lag_columns(values, origins, rel)
        # Seasonal lag: the 11-minute mean around the target's minute yesterday (known at the
        # origin as long as the step is 5 minutes short of a day).
        day = self.steps(DAY_SECONDS)
        then = origins + steps - day + 5
        known = (then >= 0) & (then <= origins)
        around = np.full(origins.shape[0], np.nan)
        around[known] = trailing_mean(values, 11)[then[known]]
        columns.append(rel(around))
        # The clock of the target step, not of the origin.
        columns += self._context_columns(series, origins, origins + steps, rel)
        columns.append(steps.astype(np.float64))
        return np.column_stack(columns), scale

    def _regressor(self, max_iter: int, learning_rate: float) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss="quantile",
            quantile=self.quantile,
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            early_stopping=False,
            random_state=0,
        )

    def _fit_state(self, series: Series, lead: int, width: int) -> GBMState:
        values = series.values
        floor = self.floor_
        n = values.shape[0]
        stop = self._calibration_start(n, lead, width)
        origins = np.arange(0, stop, max(1, self.stride), dtype=np.int64)
        targets = window_peak_targets(values, lead, width)[origins]
        known = ~np.isnan(targets) & ~np.isnan(values[origins])
        origins, targets = origins[known], targets[known]
        if origins.shape[0] < self.min_training_rows:
            return GBMState(regressor=None, floor=floor)
        features, scale = self._features(series, origins, lead, width, floor)
        if np.isnan(features).all(axis=0).any():
            # A feature never known yet (yesterday's window, under a day of history): the
            # trees could not split on it, nor use it later; the fallback serves until then.
            return GBMState(regressor=None, floor=floor)
        y = np.log(np.maximum(targets, max(floor, 1e-12)) / scale)
        regressor = self._regressor(self.max_iter, self.learning_rate)
        with _limit_threads(self.threads):
            regressor.fit(features, y)
        return GBMState(regressor=regressor, floor=floor)

    def _base(
        self, state: GBMState, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        recent = recent_peak_base(values, origins, self.steps(self.fallback_window_seconds))
        if state.regressor is None:
            return recent, np.ones(origins.shape[0], dtype=np.bool_)
        base = np.full(origins.shape[0], np.nan)
        # Nothing known yet at an origin: no scale, no forecast from the trees.
        usable = ~np.isnan(last_known(values)[origins])
        if usable.any():
            features, scale = self._features(series, origins[usable], lead, width, state.floor)
            with _limit_threads(self.threads):
                predicted = state.regressor.predict(features)
            base[usable] = np.exp(predicted) * scale
        fallback = np.isnan(base)
        return np.where(fallback, recent, base), fallback

    def _fit_step_state(self, series: Series, horizon: int) -> GBMState:
        # One model for every step, the step being a feature: a model per step would cost a
        # fit per step. Each training origin contributes a few steps drawn at random (seeded),
        # so no step is tied to a clock time. The cost of a fit is mostly per tree, not per
        # row: more rows per origin and fewer, faster trees (docs/forecasting.md has the
        # comparison and its command).
        values = series.values
        floor = self.floor_
        stop = min(self._calibration_start(values.shape[0], 0, horizon), values.shape[0] - horizon)
        origins = np.arange(0, max(0, stop), max(1, self.stride), dtype=np.int64)
        origins = origins[~np.isnan(values[origins])]
        # As much history as the window-peak model needs, whatever the rows per origin.
        if origins.shape[0] < self.min_training_rows:
            return GBMState(regressor=None, floor=floor)
        origins = np.repeat(origins, max(1, self.step_rows_per_origin))
        steps = np.random.default_rng(0).integers(1, horizon + 1, size=origins.shape[0])
        targets = values[origins + steps]
        known = ~np.isnan(targets)
        if not known.any():
            return GBMState(regressor=None, floor=floor)
        origins, steps, targets = origins[known], steps[known], targets[known]
        features, scale = self._step_features(series, origins, steps, floor)
        if np.isnan(features).all(axis=0).any():  # as in _fit_state
            return GBMState(regressor=None, floor=floor)
        y = np.log(np.maximum(targets, max(floor, 1e-12)) / scale)
        regressor = self._regressor(self.step_max_iter, self.step_learning_rate)
        with _limit_threads(self.threads):
            regressor.fit(features, y)
        return GBMState(regressor=regressor, floor=floor)

    def _step_base(
        self, state: GBMState, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        window = self.steps(self.fallback_window_seconds)
        recent = recent_peak_path(values, origins, window, horizon)
        if state.regressor is None:
            return recent, np.ones(recent.shape, dtype=np.bool_)
        base = np.full(recent.shape, np.nan)
        usable = ~np.isnan(last_known(values)[origins])
        if usable.any():
            # One row per (origin, step), origin-major so the predictions reshape to the path.
            rows = np.repeat(origins[usable], horizon)
            steps = np.tile(np.arange(1, horizon + 1, dtype=np.int64), int(usable.sum()))
            features, scale = self._step_features(series, rows, steps, state.floor)
            with _limit_threads(self.threads):
                predicted = state.regressor.predict(features)
            base[usable] = (np.exp(predicted) * scale).reshape(-1, horizon)
        fallback = np.isnan(base)
        return np.where(fallback, recent, base), fallback

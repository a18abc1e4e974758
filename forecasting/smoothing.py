"""Exponential smoothing with additive daily seasonality (Holt–Winters without trend).

Written in numpy/plain Python rather than taken from statsmodels (not a dependency). It runs
on bucket means (10 minutes by default) instead of raw minutes: the daily shape does not need
minute resolution, and 144 seasonal slots instead of 1,440 make the recursion fast enough to
re-run on every prediction (a few milliseconds for 14 days) and to grid-search its two
smoothing constants at fit time.

Causality: the forecast at origin ``o`` uses the state after the last bucket that is complete
at ``o``; buckets are aligned to the series start, so appending data never changes the buckets
an earlier origin saw. The very first season initialises each slot the first time it is seen
(running level, slot = value - level) instead of from a look at the whole first day.

Per step, the base is level + the seasonal slot of the step's bucket, both as of the origin;
``alpha`` and ``gamma`` are the same grid search's (it does not depend on the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from peakwise.forecasting.base import IntArray
from peakwise.forecasting.model import BoolArray, FittedWindow, PeakModel
from peakwise.forecasting.naive import DAY_SECONDS
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import recent_peak_base, recent_peak_path


@dataclass(frozen=True)
class SmoothingState:
    alpha: float
    gamma: float
    bucket: int
    """Steps per bucket."""
    season: int
    """Buckets per season; 0 when the history is too short and only the level is smoothed."""


@dataclass(frozen=True)
class SmoothingPath:
    levels: FloatArray
    """Level after each bucket (NaN before the first known bucket)."""
    seasonal: FloatArray
    """Value of the bucket's seasonal slot after the bucket (NaN while the slot is unseen)."""
    squared_error: float
    errors: int


def bucket_means(values: FloatArray, bucket: int) -> FloatArray:
    """Mean of each complete bucket of ``bucket`` steps, ignoring gaps (NaN if all gaps)."""
    full = values.shape[0] // bucket
    if full == 0:
        return np.empty(0)
    blocks = values[: full * bucket].reshape(full, bucket)
    known = ~np.isnan(blocks)
    counts = known.sum(axis=1)
    sums = np.where(known, blocks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means: FloatArray = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means


def smooth(buckets: FloatArray, season: int, alpha: float, gamma: float) -> SmoothingPath:
    """Run the recursion once; gaps leave level and season unchanged."""
    count = buckets.shape[0]
    levels = [math.nan] * count
    written = [math.nan] * count
    slots = [math.nan] * max(season, 1)
    level = math.nan
    squared_error = 0.0
    errors = 0
    # Plain floats in a list: an order of magnitude faster than indexing numpy scalars.
    isnan = math.isnan
    for t, y in enumerate(buckets.tolist()):
        slot = t % season if season else 0
        s = slots[slot] if season else 0.0
        if not isnan(y):
            if isnan(level):
                level = y
            if isnan(s):
                # First visit of this slot: seasonal = what the level does not explain.
                level = level + alpha * (y - level)
                slots[slot] = y - level
            else:
                if season and t >= season:
                    err = y - (level + s)
                    squared_error += err * err
                    errors += 1
                elif not season and t > 0:
                    err = y - level
                    squared_error += err * err
                    errors += 1
                new_level = alpha * (y - s) + (1.0 - alpha) * level
                if season:
                    slots[slot] = gamma * (y - new_level) + (1.0 - gamma) * s
                level = new_level
        levels[t] = level
        written[t] = slots[slot] if season else 0.0
    return SmoothingPath(
        levels=np.asarray(levels),
        seasonal=np.asarray(written),
        squared_error=squared_error,
        errors=errors,
    )


class ExponentialSmoothingPeakForecaster(PeakModel[SmoothingState]):
    """Level + daily seasonal profile, smoothed exponentially; peak = max over the window.

    ``alpha`` (level) and ``gamma`` (season) are chosen from the grids by the one-step-ahead
    squared error on the training buckets. Under two seasons of history the seasonal part is
    dropped (simple exponential smoothing of the level) and ``info_.short_history`` is set.
    """

    name = "exp-smoothing"

    def __init__(
        self,
        bucket_seconds: int = 600,
        season_seconds: int = DAY_SECONDS,
        alphas: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.95),
        gammas: tuple[float, ...] = (0.05, 0.2, 0.5),
        fallback_window_seconds: int = 7200,
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
        self.bucket_seconds = bucket_seconds
        self.season_seconds = season_seconds
        self.alphas = alphas
        self.gammas = gammas
        self.fallback_window_seconds = fallback_window_seconds

    def _fit_state(self, series: Series, lead: int, width: int) -> SmoothingState:
        bucket = self.steps(self.bucket_seconds)
        season = max(1, round(self.season_seconds / (bucket * series.step_seconds)))
        buckets = bucket_means(series.values, bucket)
        if buckets.shape[0] < 2 * season:
            season = 0
        best: tuple[float, float, float] | None = None
        for alpha in self.alphas:
            for gamma in self.gammas if season else (0.0,):
                path = smooth(buckets, season, alpha, gamma)
                if path.errors == 0:
                    continue
                mse = path.squared_error / path.errors
                if best is None or mse < best[0]:
                    best = (mse, alpha, gamma)
        if best is None:
            return SmoothingState(alpha=self.alphas[0], gamma=0.0, bucket=bucket, season=season)
        return SmoothingState(alpha=best[1], gamma=best[2], bucket=bucket, season=season)

    def _calibration_start(self, length: int, lead: int, width: int) -> int:
        # Residuals of the first season come from half-initialised slots; with two seasons
        # or more, calibrate on what the model looks like once warmed up.
        season = self.steps(self.season_seconds)
        return season if length >= 2 * season + lead + width else 0

    @staticmethod
    def _level(
        state: SmoothingState, values: FloatArray, origins: IntArray
    ) -> tuple[SmoothingPath, IntArray, FloatArray]:
        """The smoothing path, the last bucket complete at each origin and the level there."""
        path = smooth(bucket_means(values, state.bucket), state.season, state.alpha, state.gamma)
        last = (origins + 1) // state.bucket - 1
        have = (last >= 0) & (last < path.levels.shape[0])
        level = np.full(origins.shape[0], np.nan)
        level[have] = path.levels[last[have]]
        return path, last, level

    @staticmethod
    def _slot_values(
        path: SmoothingPath, season: int, last: IntArray, target: IntArray
    ) -> FloatArray:
        """Seasonal slot of each ``target`` bucket as of bucket ``last`` (0 where unseen)."""
        # The slot's value as of `last`: written one or more whole seasons before the target.
        seasons_back = (target - last + season - 1) // season
        written_at = target - season * seasons_back
        ok = written_at >= 0
        out = np.zeros(target.shape)
        out[ok] = np.nan_to_num(path.seasonal[written_at[ok]], nan=0.0)
        return out

    def _base(
        self, state: SmoothingState, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        b, m = state.bucket, state.season
        path, last, level = self._level(state, values, origins)
        base = np.full(origins.shape[0], np.nan)
        have = ~np.isnan(level)
        if m:
            first = (origins + lead + 1) // b
            final = (origins + lead + width) // b
            best = np.full(origins.shape[0], -np.inf)
            for k in range(int((final - first).max(initial=0)) + 1):
                target = first + k
                in_window = have & (target <= final)
                slot_value = self._slot_values(path, m, last, target)
                best = np.where(in_window, np.maximum(best, slot_value), best)
            base[have] = level[have] + best[have]
        else:
            base[have] = level[have]
        base = np.maximum(base, 0.0)
        fallback = np.isnan(base)
        recent = recent_peak_base(values, origins, self.steps(self.fallback_window_seconds))
        return np.where(fallback, recent, base), fallback

    def _step_base(
        self, state: SmoothingState, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        path, last, level = self._level(state, values, origins)
        base = np.repeat(level[:, None], horizon, axis=1)
        if state.season:
            target = (origins[:, None] + np.arange(1, horizon + 1)[None, :]) // state.bucket
            base = base + self._slot_values(path, state.season, last[:, None], target)
        base = np.maximum(base, 0.0)
        fallback = np.isnan(base)
        window = self.steps(self.fallback_window_seconds)
        recent = recent_peak_path(values, origins, window, horizon)
        return np.where(fallback, recent, base), fallback

    def _fit_window(self, lead: int, width: int) -> FittedWindow[SmoothingState]:
        fitted = super()._fit_window(lead, width)
        # Without a seasonal profile it is a recent-level model: say so.
        if fitted.state.season == 0:
            return replace(fitted, short_history=True)
        return fitted

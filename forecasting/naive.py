"""The simplest honest forecasters: the same window one season ago, and the recent peak.

Both have no parameters to learn, so their residuals on the whole training history are
out-of-sample and calibrate them directly.

Per step: the recent peak held flat over the horizon, and the value at the same minute one
season ago (the recent peak where that minute is a gap or before the history).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from peakwise.forecasting.base import IntArray
from peakwise.forecasting.model import BoolArray, PeakModel
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    recent_peak_base,
    recent_peak_path,
    trailing_max,
    trailing_mean,
)

DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS


class RecentPeakForecaster(PeakModel[None]):
    """Forecast = recent peak × calibrated margin; the model for brand-new services.

    It needs no seasonality, so it works from the first minute of history, and it reacts to
    level shifts at once, which seasonal models cannot.
    """

    name = "recent-peak"

    def __init__(
        self,
        window_seconds: int = 7200,
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
        self.window_seconds = window_seconds

    def _fit_state(self, series: Series, lead: int, width: int) -> None:
        return None

    def _base(
        self, state: None, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        base = recent_peak_base(series.values, origins, self.steps(self.window_seconds))
        # One form only: nothing to fall back to, so every origin is "primary".
        return base, np.zeros(origins.shape[0], dtype=np.bool_)

    def _step_base(
        self, state: None, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        base = recent_peak_path(series.values, origins, self.steps(self.window_seconds), horizon)
        return base, np.zeros(base.shape, dtype=np.bool_)


class SeasonalNaivePeakForecaster(PeakModel[None]):
    """Forecast = the actual peak of the same window one season ago × calibrated margin.

    ``season_seconds`` is a day or a week. Where that window is not in the history (the first
    season, a gap, or a window longer than the season) it falls back to the recent peak, with
    its own margin, and ``info_.short_history`` says so when that is all it ever had.
    """

    name = "seasonal-naive"

    def __init__(
        self,
        season_seconds: int = DAY_SECONDS,
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
        self.season_seconds = season_seconds
        self.fallback_window_seconds = fallback_window_seconds

    def _model_name(self) -> str:
        if self.season_seconds == DAY_SECONDS:
            return "seasonal-naive-day"
        if self.season_seconds == WEEK_SECONDS:
            return "seasonal-naive-week"
        return f"seasonal-naive-{self.season_seconds}s"

    def _fit_state(self, series: Series, lead: int, width: int) -> None:
        return None

    def _base(
        self, state: None, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        season = self.steps(self.season_seconds)
        seasonal = np.full(origins.shape[0], np.nan)
        # The window one season back ends at o + lead + width - season, which must be known.
        if lead + width <= season:
            window_max = trailing_max(values, width)
            last_step = origins + lead + width - season
            known = last_step >= 0
            seasonal[known] = window_max[last_step[known]]
        fallback = np.isnan(seasonal)
        recent = recent_peak_base(values, origins, self.steps(self.fallback_window_seconds))
        return np.where(fallback, recent, seasonal), fallback

    def _step_base(
        self, state: None, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        season = self.steps(self.season_seconds)
        then = origins[:, None] + np.arange(1, horizon + 1)[None, :] - season
        # A step more than a season ahead would need values after the origin: fallback there.
        known = (then >= 0) & (then <= origins[:, None])
        seasonal = np.full(then.shape, np.nan)
        seasonal[known] = values[then[known]]
        fallback = np.isnan(seasonal)
        window = self.steps(self.fallback_window_seconds)
        recent = recent_peak_path(values, origins, window, horizon)
        return np.where(fallback, recent, seasonal), fallback


class SeasonalRiseForecaster(PeakModel[None]):
    """Forecast = the current level × the rise the same time of day saw on earlier days.

    The base for origin ``o`` is the level now (the mean of the last ``level_seconds``)
    times the median, over the last ``days`` seasons, of how the window peak compared with
    the level at the same time of day: ``peak(o - k·season) / level(o - k·season)``. So it
    follows today's level like the nowcast, and adds the ramp (or the fall) that usually
    comes next, which the nowcast cannot see; it needs no model of the level itself, so a
    service that grows or shifts keeps its forecast. Where no earlier season is known (the
    first day, gaps) the ratio is 1: the level alone, flagged as the fallback.

    Per step: the level × the median ratio of the value ``h`` steps later to the level.
    """

    name = "seasonal-rise"

    def __init__(
        self,
        season_seconds: int = DAY_SECONDS,
        days: int = 7,
        level_seconds: int = 300,
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
        self.season_seconds = season_seconds
        self.days = days
        self.level_seconds = level_seconds
        self.fallback_window_seconds = fallback_window_seconds

    def _fit_state(self, series: Series, lead: int, width: int) -> None:
        return None

    def _rise(
        self,
        level: FloatArray,
        origins: IntArray,
        columns: int,
        ahead: Callable[[IntArray], FloatArray],
    ) -> FloatArray:
        """Median over earlier seasons of ``ahead(j) / level[j]`` at ``j = o - k·season``, per
        origin and column. ``ahead(rows)`` gives, per row, what followed that step (one
        column per horizon step, or one for the window peak), known by ``j + season``."""
        season = self.steps(self.season_seconds)
        ratios = np.full((origins.shape[0], columns, max(1, self.days)), np.nan)
        for k in range(1, self.days + 1):
            then = origins - k * season
            ok = then >= 0
            if ok.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratios[ok, :, k - 1] = ahead(then[ok]) / level[then[ok], None]
        ratios[~np.isfinite(ratios)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no season yet
            rise: FloatArray = np.nanmedian(ratios, axis=2)
        return rise

    def _base(
        self, state: None, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        level = trailing_mean(values, self.steps(self.level_seconds))
        season = self.steps(self.season_seconds)
        # The window peak after each step j, known from step j + lead + width on.
        peaks = np.full(values.shape[0], np.nan)
        if lead + width <= season and values.shape[0] > lead + width:
            peaks[: values.shape[0] - lead - width] = trailing_max(values, width)[lead + width :]
        rise = self._rise(level, origins, 1, lambda rows: peaks[rows][:, None])[:, 0]
        now = level[origins]
        fallback = np.isnan(rise) | np.isnan(now)
        recent = recent_peak_base(values, origins, self.steps(self.fallback_window_seconds))
        base = np.where(fallback, np.where(np.isnan(now), recent, now), now * rise)
        return base, fallback

    def _step_base(
        self, state: None, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        values = series.values
        n = values.shape[0]
        level = trailing_mean(values, self.steps(self.level_seconds))
        season = self.steps(self.season_seconds)
        # The value h steps after step j, for h = 1 … horizon (known by j + h ≤ j + season).
        steps = np.arange(1, horizon + 1)

        def ahead(rows: IntArray) -> FloatArray:
            later = rows[:, None] + steps[None, :]
            out = np.where(later < n, values[np.minimum(later, n - 1)], np.nan)
            out[:, steps > season] = np.nan
            return out

        rise = self._rise(level, origins, horizon, ahead)
        now = level[origins][:, None]
        recent = recent_peak_base(values, origins, self.steps(self.fallback_window_seconds))
        fallback = np.isnan(rise) | np.isnan(now)
        base = np.where(fallback, np.where(np.isnan(now), recent[:, None], now), now * rise)
        return base, fallback

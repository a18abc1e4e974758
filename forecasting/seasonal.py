"""A simple daily-seasonal peak forecaster: yesterday's peak, scaled to today's level.

It is the baseline every other model must beat, and what `peakwise backtest` falls back to.
Per step: the value at the same minute a season ago, scaled the same way, with margins per step
learned (once per horizon, on first use) from the training history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
from sklearn.utils.validation import check_is_fitted

from peakwise.forecasting.base import Estimator, ForecastInfo, IntArray, TrainingHistory
from peakwise.forecasting.model import MAX_STEP_CALIBRATION_ORIGINS
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    step_targets,
    trailing_max,
    trailing_mean,
    valid_origins,
)


def forward_max(values: FloatArray, width: int) -> FloatArray:
    """``out[j] = max(values[j : j + width])`` ignoring gaps; NaN if none known or off the end."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n >= width:
        out[: n - width + 1] = trailing_max(values, width)[width - 1 :]
    return out


class SeasonalPeakForecaster(Estimator, TrainingHistory):
    """Window peak one season ago × (recent level / level one season ago) × a learned margin.

    The margin for quantile q is the q-quantile of actual/base ratios on the training history,
    so the forecast is calibrated on the service's own data. With less than a season of
    history it falls back to the recent maximum with its own learned margin.
    """

    def __init__(
        self,
        season: int = 1440,
        level_window: int = 60,
        max_level_ratio: float = 2.0,
        default_margin: float = 1.25,
        lead: int = 10,
        width: int = 30,
    ) -> None:
        self.season = season
        self.level_window = level_window
        self.max_level_ratio = max_level_ratio
        self.default_margin = default_margin
        self.lead = lead
        self.width = width

    def _bases(
        self, values: FloatArray, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, FloatArray]:
        """Seasonal and recent-level bases for each origin (NaN where not available)."""
        peaks = forward_max(values, width)
        level = trailing_mean(values, self.level_window)
        recent_max = trailing_max(values, self.level_window)
        seasonal = np.full(origins.shape[0], np.nan)
        past = origins + lead + 1 - self.season
        ok = (past >= 0) & (origins - self.season >= 0)
        if ok.any():
            then = level[origins[ok] - self.season]
            now = level[origins[ok]]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(then > 0, now / then, 1.0)
            ratio = np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, self.max_level_ratio)
            seasonal[ok] = peaks[past[ok]] * ratio
        return seasonal, recent_max[origins]

    def _step_bases(
        self, values: FloatArray, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, FloatArray]:
        """Seasonal and recent-level paths, shape ``(len(origins), horizon)`` (NaN: none)."""
        then = origins[:, None] + np.arange(1, horizon + 1)[None, :] - self.season
        # Known at the origin, and a season of level to compare with.
        ok = (then >= 0) & (then <= origins[:, None]) & (origins[:, None] >= self.season)
        seasonal = np.full(then.shape, np.nan)
        if ok.any():
            level = trailing_mean(values, self.level_window)
            rows = np.flatnonzero(ok.any(axis=1))
            with np.errstate(invalid="ignore", divide="ignore"):
                past, now = level[origins[rows] - self.season], level[origins[rows]]
                ratio = np.where(past > 0, now / past, 1.0)
            ratio = np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, self.max_level_ratio)
            scaled = np.full(then.shape, np.nan)
            scaled[rows] = values[np.where(ok[rows], then[rows], 0)] * ratio[:, None]
            seasonal[ok] = scaled[ok]
        recent = trailing_max(values, self.level_window)[origins]
        return seasonal, np.repeat(recent[:, None], horizon, axis=1)

    def fit(self, series: Series) -> Self:
        # Kept for the per-step margins, learned on first use per horizon.
        values = self._keep_history(series).values
        # Margins are learned for the window the forecasts will be asked for.
        lead, width = self.lead, self.width
        origins = np.arange(0, max(0, len(series) - lead - width), dtype=np.int64)
        actual = forward_max(values, width)[origins + lead + 1] if origins.size else np.empty(0)
        seasonal, recent = self._bases(values, origins, lead, width)
        self.seasonal_ratios_ = _ratios(actual, seasonal)
        self.recent_ratios_ = _ratios(actual, recent)
        self.step_ratios_: dict[int, list[tuple[FloatArray, FloatArray]]] = {}
        return self

    def _fit_steps(self, horizon: int) -> list[tuple[FloatArray, FloatArray]]:
        """(seasonal, recent) ratios per step; the baseline calibrates on all its history."""
        values = self._history().values
        origins = np.arange(0, max(0, values.shape[0] - horizon), dtype=np.int64)
        origins = origins[:: max(1, -(-origins.shape[0] // MAX_STEP_CALIBRATION_ORIGINS))]
        actual = step_targets(values, origins, horizon)
        seasonal, recent = self._step_bases(values, origins, horizon)
        return [
            (_ratios(actual[:, h], seasonal[:, h]), _ratios(actual[:, h], recent[:, h]))
            for h in range(horizon)
        ]

    def predict_steps(
        self,
        series: Series,
        origins: IntArray,
        *,
        horizon: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        check_is_fitted(self, "step_ratios_")
        if horizon < 1:
            raise ValueError(f"need horizon ≥ 1, got {horizon}")
        origins = np.asarray(origins, dtype=np.int64)
        valid_origins(origins, len(series))
        if horizon not in self.step_ratios_:
            self.step_ratios_[horizon] = self._fit_steps(horizon)
        ratios = self.step_ratios_[horizon]
        values = series.values[: int(origins.max()) + 1] if origins.size else series.values[:0]
        seasonal, recent = self._step_bases(values, origins, horizon)
        out = np.empty((origins.shape[0], horizon, len(quantiles)))
        for h, (seasonal_ratios, recent_ratios) in enumerate(ratios):
            for k, q in enumerate(quantiles):
                m_seasonal = _margin(seasonal_ratios, q, self.default_margin)
                m_recent = _margin(recent_ratios, q, self.default_margin)
                out[:, h, k] = np.where(
                    np.isnan(seasonal[:, h]), recent[:, h] * m_recent, seasonal[:, h] * m_seasonal
                )
        return out

    def predict_peak(
        self,
        series: Series,
        origins: IntArray,
        *,
        lead: int,
        width: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        check_is_fitted(self, "seasonal_ratios_")
        seasonal, recent = self._bases(series.values, origins, lead, width)
        out = np.empty((origins.shape[0], len(quantiles)))
        for k, q in enumerate(quantiles):
            m_seasonal = _margin(self.seasonal_ratios_, q, self.default_margin)
            m_recent = _margin(self.recent_ratios_, q, self.default_margin)
            out[:, k] = np.where(np.isnan(seasonal), recent * m_recent, seasonal * m_seasonal)
        return out

    @property
    def info_(self) -> ForecastInfo:
        check_is_fitted(self, "seasonal_ratios_")
        return ForecastInfo(
            model="seasonal-peak",
            training_steps=self.training_steps_,
            short_history=self.seasonal_ratios_.size == 0,
        )


def _ratios(actual: FloatArray, base: FloatArray) -> FloatArray:
    ok = ~np.isnan(actual) & ~np.isnan(base) & (base > 0)
    return np.sort(actual[ok] / base[ok])


def _margin(ratios: FloatArray, quantile: float, default: float) -> float:
    # A handful of ratios is noise; below a day of origins use the default margin.
    if ratios.size < 60:
        return default
    return float(np.quantile(ratios, quantile))

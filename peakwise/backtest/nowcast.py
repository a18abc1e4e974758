"""The last observed demand, with a margin scaled to how much demand has been moving lately.

At a horizon of one lead time (minutes), the last observed value is a strong point forecast;
what matters for capacity is the margin. A margin proportional to the level (the ratio
calibration of ``peakwise.forecasting``) is set by the quietest, lowest-demand hours, where
relative jumps are largest, and then costs most at the peak. Here the margin is instead
``c_q × scale``, where ``scale`` is the recent range of demand (highest minus lowest over the
last ``volatility_seconds``) plus a constant (``regularization`` × the history's median
range, so a flat hour does not make the margin vanish), and ``c_q`` is the ``q``-quantile of
``(actual - last) / scale`` over the whole training history: split-conformal calibration
with a locally weighted score. The forecast is ``last + c_q × scale``; its coverage on the
history is ``q`` by construction, and it is wide when demand has been jumpy and narrow when
it has been steady.

The model has nothing to learn but ``c_q`` and the median range, so every residual in the
history is out of sample. It follows the ``PeakForecaster`` contract: the forecast for
origin ``o`` uses ``values[: o + 1]`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np

from peakwise.forecasting.base import ForecastInfo, IntArray
from peakwise.forecasting.calibration import MIN_CALIBRATION_PAIRS, score
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    last_known,
    trailing_max,
    valid_origins,
    window_peak_targets,
)


@dataclass(frozen=True)
class _Fit:
    scores: FloatArray
    """Sorted ``(actual - last) / scale`` over the training history."""
    loss: float | None
    coverage: float | None


def recent_range(values: FloatArray, window: int) -> FloatArray:
    """Highest minus lowest known value over the last ``window`` steps (0 where none known)."""
    spread = trailing_max(values, window) + trailing_max(-values, window)
    out: FloatArray = np.nan_to_num(spread, nan=0.0)
    return out


class NowcastForecaster:
    """``last observed value + c_q × (recent range + typical range)``, conformally calibrated."""

    name = "nowcast"

    def __init__(
        self,
        volatility_seconds: int = 3600,
        regularization: float = 2.0,
        *,
        lead: int = 10,
        width: int = 1,
        quantile: float = 0.99,
        default_margin: float = 1.25,
    ) -> None:
        self.volatility_seconds = volatility_seconds
        self.regularization = regularization
        self.lead = lead
        self.width = width
        self.quantile = quantile
        self.default_margin = default_margin

    def __repr__(self) -> str:
        return (
            f"NowcastForecaster(volatility_seconds={self.volatility_seconds}, "
            f"regularization={self.regularization}, lead={self.lead}, width={self.width}, "
            f"quantile={self.quantile})"
        )

    def fit(self, series: Series) -> Self:
        values = np.asarray(series.values, dtype=np.float64).copy()
        self.training_series_ = Series(series.start, series.step_seconds, values)
        self.window_ = max(1, round(self.volatility_seconds / series.step_seconds))
        ranges = recent_range(values, self.window_)[~np.isnan(values)]
        # The typical range keeps the score's denominator away from zero in flat hours.
        self.typical_range_ = float(np.median(ranges)) if ranges.size else 0.0
        self.fits_: dict[tuple[int, int], _Fit] = {}
        self._fit(self.lead, self.width)
        return self

    def _scale(self, values: FloatArray, origins: IntArray) -> FloatArray:
        ranges = recent_range(values, self.window_)[origins]
        floor = max(self.regularization * self.typical_range_, 1e-9)
        scale: FloatArray = ranges + floor
        return scale

    def _fit(self, lead: int, width: int) -> _Fit:
        if not hasattr(self, "fits_"):
            raise RuntimeError("NowcastForecaster is not fitted; call fit() first")
        key = (lead, width)
        if key in self.fits_:
            return self.fits_[key]
        values = self.training_series_.values
        origins = np.arange(0, max(0, values.shape[0] - lead - width), dtype=np.int64)
        actual = window_peak_targets(values, lead, width)[origins]
        base = last_known(values)[origins]
        scale = self._scale(values, origins)
        known = ~np.isnan(actual) & ~np.isnan(base)
        scores = np.sort((actual[known] - base[known]) / scale[known])
        fitted = _Fit(scores, None, None)
        if scores.shape[0] >= MIN_CALIBRATION_PAIRS:
            margin = float(np.quantile(scores, self.quantile, method="higher"))
            loss, cover = score(actual, base + margin * scale, self.quantile)
            if not np.isnan(loss):
                fitted = _Fit(scores, loss, cover)
        self.fits_[key] = fitted
        return fitted

    def predict_peak(
        self,
        series: Series,
        origins: IntArray,
        *,
        lead: int,
        width: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        origins = np.asarray(origins, dtype=np.int64)
        valid_origins(origins, len(series))
        fitted = self._fit(lead, width)
        out = np.full((origins.shape[0], len(quantiles)), np.nan)
        if origins.size == 0:
            return out
        # Cut at the last origin: nothing later can leak into any forecast.
        values = np.asarray(series.values[: int(origins.max()) + 1], dtype=np.float64)
        base = last_known(values)[origins]
        scale = self._scale(values, origins)
        for k, q in enumerate(quantiles):
            if not 0.0 < q < 1.0:
                raise ValueError(f"quantile must be in (0, 1), got {q}")
            if fitted.scores.shape[0] < MIN_CALIBRATION_PAIRS:
                out[:, k] = base * (self.default_margin if q >= 0.5 else 1.0)
            else:
                margin = float(np.quantile(fitted.scores, q, method="higher"))
                out[:, k] = base + margin * scale
        clipped: FloatArray = np.maximum(out, 0.0)
        return clipped

    @property
    def info_(self) -> ForecastInfo:
        fitted = self._fit(self.lead, self.width)
        series = self.training_series_
        return ForecastInfo(
            model=self.name,
            training_steps=len(series),
            backtest_loss=fitted.loss,
            coverage=fitted.coverage,
            short_history=fitted.scores.shape[0] < MIN_CALIBRATION_PAIRS,
            training_span_seconds=float(len(series) * series.step_seconds),
            quantile=self.quantile,
        )

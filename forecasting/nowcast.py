"""The last observed demand, with a margin scaled to how much demand has been moving lately.

At a horizon of a few minutes the last observed value is a strong point forecast; what
matters for capacity is the margin. The base is the last known value pulled ``peak_weight``
(default 0.3) of the way toward the highest demand of the last ``peak_seconds`` (2 h, the
recent-peak model's window): demand that has just dropped often comes back (a client pausing,
a recovery after an outage), and a base that remembers part of the drop covers that more
cheaply than a margin widened everywhere. With ``peak_weight=0`` the base is the last value.
(What that changes in the backtest is in docs/backtest.md, with the command that measures it.)

A margin proportional to the level (a ratio calibration) is set by the quietest, lowest-demand
hours, where relative jumps are largest, and then costs most at the peak. Here the margin is
``c_q × scale`` instead, where ``scale`` is the recent range of demand (highest minus lowest
over the last ``volatility_seconds``) plus ``regularization`` × the history's median range (so
a flat hour does not make the margin vanish), and ``c_q`` is the ``q``-quantile of
``(actual - base) / scale`` over the training history (``calibration.ScaledCalibration``). The
margin is wide when demand has been jumpy and narrow when it has been steady.

Per step the base is held flat, with one such margin per step
(``ScaledStepCalibration``): the spread grows with the step.

The model learns nothing but the margins and the median range, so every residual in the
history is out of sample. It cannot see a daily spike coming (it only follows the level);
``AutoForecaster`` weighs it against the seasonal models on each service's own history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
from sklearn.utils.validation import check_is_fitted

from peakwise.forecasting.base import Estimator, ForecastInfo, IntArray, TrainingHistory
from peakwise.forecasting.calibration import (
    MIN_CALIBRATION_PAIRS,
    ScaledCalibration,
    ScaledStepCalibration,
    score,
)
from peakwise.forecasting.model import MAX_STEP_CALIBRATION_ORIGINS
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    known_until,
    last_known,
    recent_peak_base,
    recent_range,
    step_targets,
    valid_origins,
    window_peak_targets,
)


@dataclass(frozen=True)
class NowcastWindowFit:
    """What the nowcast learned for one window shape ``(lead, width)``."""

    calibration: ScaledCalibration
    loss: float | None
    """Pinball loss of the target quantile on the training history (out of sample: the model
    learned only this margin there); None without enough pairs."""
    coverage: float | None


class NowcastForecaster(Estimator, TrainingHistory):
    """``last observed value + c_q × (recent range + regularization × typical range)``."""

    name = "nowcast"

    def __init__(
        self,
        volatility_seconds: int = 3600,
        regularization: float = 2.0,
        *,
        lead: int = 10,
        width: int = 1,
        quantile: float = 0.95,
        default_margin: float = 1.25,
        peak_weight: float = 0.3,
        peak_seconds: int = 7200,
    ) -> None:
        self.volatility_seconds = volatility_seconds
        self.regularization = regularization
        self.lead = lead
        self.width = width
        self.quantile = quantile
        self.default_margin = default_margin
        self.peak_weight = peak_weight
        self.peak_seconds = peak_seconds

    def fit(self, series: Series) -> Self:
        values = self._keep_history(series).values
        if not 0.0 <= self.peak_weight <= 1.0:
            raise ValueError(f"peak_weight must be in [0, 1], got {self.peak_weight}")
        self.volatility_steps_ = max(1, round(self.volatility_seconds / series.step_seconds))
        self.peak_steps_ = max(1, round(self.peak_seconds / series.step_seconds))
        ranges = recent_range(values, self.volatility_steps_)[~np.isnan(values)]
        # The typical range keeps the score's denominator away from zero in flat hours.
        self.typical_range_ = float(np.median(ranges)) if ranges.size else 0.0
        self.fits_: dict[tuple[int, int], NowcastWindowFit] = {}
        self.step_fits_: dict[int, ScaledStepCalibration] = {}
        self.fitted_window(self.lead, self.width)
        return self

    def _base(self, values: FloatArray, origins: IntArray) -> FloatArray:
        """The last known value, pulled ``peak_weight`` of the way to the recent peak."""
        last = last_known(values)[origins]
        if self.peak_weight == 0.0:
            return last
        peak = recent_peak_base(values, origins, self.peak_steps_)
        base: FloatArray = (1.0 - self.peak_weight) * last + self.peak_weight * peak
        return base

    def _scale(self, values: FloatArray, origins: IntArray) -> FloatArray:
        ranges = recent_range(values, self.volatility_steps_)[origins]
        scale: FloatArray = ranges + max(self.regularization * self.typical_range_, 1e-9)
        return scale

    def fitted_window(self, lead: int, width: int) -> NowcastWindowFit:
        """The margins for this window shape, learned from the training history if needed."""
        check_is_fitted(self, "fits_")
        if lead < 0 or width < 1:
            raise ValueError(f"need lead ≥ 0 and width ≥ 1, got lead={lead}, width={width}")
        key = (lead, width)
        if key not in self.fits_:
            self.fits_[key] = self._fit_window(lead, width)
        return self.fits_[key]

    def _fit_window(self, lead: int, width: int) -> NowcastWindowFit:
        values = self._history().values
        origins = np.arange(0, max(0, values.shape[0] - lead - width), dtype=np.int64)
        actual = window_peak_targets(values, lead, width)[origins]
        base = self._base(values, origins)
        scale = self._scale(values, origins)
        calibration = ScaledCalibration.from_pairs(actual, base, scale, self.default_margin)
        if calibration.pairs < MIN_CALIBRATION_PAIRS:
            return NowcastWindowFit(calibration, None, None)
        predicted = calibration.apply(base, scale, [self.quantile])[:, 0]
        loss, cover = score(actual, predicted, self.quantile)
        if np.isnan(loss):
            return NowcastWindowFit(calibration, None, None)
        return NowcastWindowFit(calibration, loss, cover)

    def fitted_steps(self, horizon: int) -> ScaledStepCalibration:
        """The per-step margins for this horizon, learned from the training history if needed."""
        check_is_fitted(self, "step_fits_")
        if horizon < 1:
            raise ValueError(f"need horizon ≥ 1, got {horizon}")
        if horizon not in self.step_fits_:
            values = self._history().values
            origins = np.arange(0, max(0, values.shape[0] - horizon), dtype=np.int64)
            # Neighbouring origins' residuals are nearly the same sample (as in PeakModel).
            stride = -(-origins.shape[0] // MAX_STEP_CALIBRATION_ORIGINS)  # ceiling division
            origins = origins[::-1][:: max(1, stride)][::-1]
            actual = step_targets(values, origins, horizon)
            base = np.repeat(self._base(values, origins)[:, None], horizon, axis=1)
            self.step_fits_[horizon] = ScaledStepCalibration.from_pairs(
                actual, base, self._scale(values, origins), self.default_margin
            )
        return self.step_fits_[horizon]

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
        fitted = self.fitted_window(lead, width)
        if origins.size == 0:
            return np.empty((0, len(quantiles)))
        values = known_until(series.values, origins)
        base = self._base(values, origins)
        return fitted.calibration.apply(base, self._scale(values, origins), quantiles)

    def predict_steps(
        self,
        series: Series,
        origins: IntArray,
        *,
        horizon: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        origins = np.asarray(origins, dtype=np.int64)
        valid_origins(origins, len(series))
        fitted = self.fitted_steps(horizon)
        if origins.size == 0:
            return np.empty((0, horizon, len(quantiles)))
        values = known_until(series.values, origins)
        base = np.repeat(self._base(values, origins)[:, None], horizon, axis=1)
        return fitted.apply(base, self._scale(values, origins), quantiles)

    @property
    def info_(self) -> ForecastInfo:
        fitted = self.fitted_window(self.lead, self.width)
        return ForecastInfo(
            model=self.name,
            training_steps=self.training_steps_,
            backtest_loss=fitted.loss,
            coverage=fitted.coverage,
            short_history=fitted.calibration.pairs < MIN_CALIBRATION_PAIRS,
            training_span_seconds=self.training_span_seconds_,
            quantile=self.quantile,
        )

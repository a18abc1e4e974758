"""The shared skeleton of Peakwise's window-peak estimators.

A concrete model only says how to learn its state and how to turn a history into a *base*
forecast per origin; this class adds what they all need:

* scikit-learn conventions (``base.Estimator``): hyperparameters stored unchanged by
  ``__init__``, ``fit`` returns ``self``, learned attributes end in ``_``, ``NotFittedError``
  before ``fit``;
* a fit per window shape: the model is fitted for ``(lead, width)`` given to ``__init__``; when
  ``predict_peak`` asks for another shape it is fitted for that one too, from the stored
  training history, once (margins learned for a 30-minute window do not fit a 1-minute one);
* residual calibration (see ``calibration.py``), separately for the model's main form and for
  its recent-level fallback (too little history, or gaps where the main form needs data); the
  window-peak margin is a ratio to the base or additive and scaled to recent volatility
  (``_volatility``), and with ``margin="auto"`` whichever has the lower pinball loss on the
  calibration residuals;
* per-step forecasts (``predict_steps``): the model gives a base path over the horizon, and a
  ratio calibration per horizon step turns it into quantiles. Like other window shapes, the
  per-step part is fitted from the stored training history the first time a horizon is asked
  for, once (``fit`` itself costs what it did before);
* the metadata in ``info_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Self, TypeVar

import numpy as np
from numpy.typing import NDArray
from sklearn.utils.validation import check_is_fitted

from peakwise.forecasting.base import Estimator, ForecastInfo, IntArray, TrainingHistory
from peakwise.forecasting.calibration import (
    MIN_CALIBRATION_PAIRS,
    RatioCalibration,
    ScaledCalibration,
    StepCalibration,
    demand_floor,
    score,
)
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import (
    known_until,
    recent_peak_base,
    recent_peak_path,
    recent_range,
    step_targets,
    trailing_mean,
    valid_origins,
    window_peak_targets,
)

BoolArray = NDArray[np.bool_]
StateT = TypeVar("StateT")

# Per-step residuals of neighbouring origins are nearly the same sample; a spread-out subset
# this large calibrates as well and keeps the per-step fit (GBM predictions) and memory small.
MAX_STEP_CALIBRATION_ORIGINS = 1000

MARGINS = ("auto", "ratio", "scaled")
"""How a model's window-peak margins are learned (the ``margin`` hyperparameter)."""

# The scale of additive margins: the range of the last hour plus twice the history's median
# range (so a flat hour does not make the margin vanish), that median taken at the last hour's
# level (``PeakModel._volatility``).
VOLATILITY_SECONDS = 3600
RANGE_REGULARIZATION = 2.0

Calibration = RatioCalibration | ScaledCalibration


def calibrated(
    calibration: Calibration, base: FloatArray, scale: FloatArray, quantiles: Sequence[float]
) -> FloatArray:
    """Quantiles from a base forecast by either form of margin, shape ``(len(base), len(q))``."""
    if isinstance(calibration, ScaledCalibration):
        return calibration.apply(base, scale, quantiles)
    return calibration.apply(base, quantiles)


@dataclass(frozen=True)
class FittedWindow(Generic[StateT]):
    """What a model learned for one window shape ``(lead, width)``."""

    state: StateT
    primary: Calibration
    fallback: Calibration
    loss: float | None
    coverage: float | None
    short_history: bool
    form: str = "ratio"
    """``ratio`` (base × margin) or ``scaled`` (base + margin × recent volatility)."""


@dataclass(frozen=True)
class FittedSteps(Generic[StateT]):
    """What a model learned for per-step forecasts over ``horizon`` steps."""

    state: StateT
    primary: StepCalibration
    fallback: StepCalibration
    short_history: bool


class PeakModel(Estimator, TrainingHistory, ABC, Generic[StateT]):
    """Base class: calibrated window-peak quantiles from a model-specific base forecast."""

    name: ClassVar[str] = "peak-model"

    def __init__(
        self,
        *,
        lead: int = 10,
        width: int = 30,
        quantile: float = 0.95,
        floor_fraction: float = 0.05,
        default_margin: float = 1.25,
        margin: str = "auto",
    ) -> None:
        self.lead = lead
        self.width = width
        self.quantile = quantile
        self.floor_fraction = floor_fraction
        self.default_margin = default_margin
        self.margin = margin

    # --- what a concrete model provides -------------------------------------------------
    @abstractmethod
    def _fit_state(self, series: Series, lead: int, width: int) -> StateT:
        """Learn from the training history for this window shape."""

    @abstractmethod
    def _base(
        self, state: StateT, series: Series, origins: IntArray, lead: int, width: int
    ) -> tuple[FloatArray, BoolArray]:
        """Base forecast per origin and whether the fallback produced it.

        Must be causal: the entry for origin ``o`` may depend on ``series.values[: o + 1]``
        only.
        NaN means no forecast is possible (nothing known yet).
        """

    def _fit_step_state(self, series: Series, horizon: int) -> StateT:
        """Learn what per-step forecasts need; by default the state of a one-step window."""
        return self._fit_state(series, 0, 1)

    @abstractmethod
    def _step_base(
        self, state: StateT, series: Series, origins: IntArray, horizon: int
    ) -> tuple[FloatArray, BoolArray]:
        """Base path per origin and step, shape ``(len(origins), horizon)``, and where the
        fallback produced it. Causal like ``_base``; NaN where nothing is known yet.
        """

    def _calibration_start(self, length: int, lead: int, width: int) -> int:
        """First origin whose residual calibrates the model.

        Parameter-free models calibrate on all of their history; models that learn from the
        history override this to keep a held-out tail (split conformal).
        """
        return 0

    def _model_name(self) -> str:
        return self.name

    def _fallback_window_seconds(self) -> float:
        """Window of the recent-peak fallback (models with a fallback have this parameter)."""
        return float(getattr(self, "fallback_window_seconds", 7200))

    # --- fitting and predicting ----------------------------------------------------------
    def fit(self, series: Series) -> Self:
        if self.margin not in MARGINS:
            raise ValueError(f"margin must be one of {MARGINS}, got {self.margin!r}")
        values = self._keep_history(series).values
        self.step_seconds_: int = series.step_seconds
        self.floor_: float = demand_floor(values, self.floor_fraction)
        hour = self.steps(VOLATILITY_SECONDS)
        known = ~np.isnan(values)
        ranges = recent_range(values, hour)[known]
        self.typical_range_: float = float(np.median(ranges)) if ranges.size else 0.0
        levels = trailing_mean(values, hour)[known]
        self.typical_level_: float = float(np.median(levels)) if levels.size else 0.0
        self.fits_: dict[tuple[int, int], FittedWindow[StateT]] = {}
        self.step_fits_: dict[int, FittedSteps[StateT]] = {}
        self.fitted_window(self.lead, self.width)
        return self

    def steps(self, seconds: float) -> int:
        """A duration in steps of the fitted series (at least one)."""
        return max(1, round(seconds / self.step_seconds_))

    def _volatility(self, values: FloatArray, origins: IntArray) -> FloatArray:
        """Per-origin scale of additive margins: the last hour's range plus a share of the
        typical one, at the last hour's level.

        Counting noise grows as the square root of the count, so the typical range is scaled
        by the square root of the last hour's mean over the history's median level. Taken as
        is, a day's typical range was most of the night's level: on a weekly cycle the night's
        forecasts were 1.7 times its demand, against 1.16 by day."""
        hour = self.steps(VOLATILITY_SECONDS)
        ranges = recent_range(values, hour)[origins]
        level = trailing_mean(values, hour)[origins]
        share = np.maximum(level, self.floor_) / max(self.typical_level_, self.floor_, 1e-12)
        typical = np.where(np.isnan(level), 1.0, np.sqrt(share)) * self.typical_range_
        scale: FloatArray = ranges + np.maximum(RANGE_REGULARIZATION * typical, 1e-9)
        return scale

    def fitted_window(self, lead: int, width: int) -> FittedWindow[StateT]:
        """The fit for this window shape, learning it from the training history if needed."""
        check_is_fitted(self, "fits_")
        if lead < 0 or width < 1:
            raise ValueError(f"need lead ≥ 0 and width ≥ 1, got lead={lead}, width={width}")
        key = (lead, width)
        if key not in self.fits_:
            self.fits_[key] = self._fit_window(lead, width)
        return self.fits_[key]

    def _fit_window(self, lead: int, width: int) -> FittedWindow[StateT]:
        training = self._history()
        values = training.values
        state = self._fit_state(training, lead, width)
        n = values.shape[0]
        origins = np.arange(self._calibration_start(n, lead, width), max(0, n - lead - width))
        origins = origins.astype(np.int64)
        actual = window_peak_targets(values, lead, width)[origins]
        if origins.size:
            base, fallback = self._base(state, training, origins, lead, width)
        else:
            base, fallback = np.empty(0), np.empty(0, dtype=np.bool_)
        scale = self._volatility(values, origins)
        # Both forms of margin are learned on the same held-out residuals; with "auto" the
        # one with the lower pinball loss there is kept. Ratio margins transfer across
        # levels; additive ones scaled to recent volatility are not set by the quiet hours.
        forms = ("ratio", "scaled") if self.margin == "auto" else (self.margin,)
        best: FittedWindow[StateT] | None = None
        for form in forms:
            primary: Calibration
            backup: Calibration
            if form == "scaled":
                primary = ScaledCalibration.from_pairs(
                    actual[~fallback], base[~fallback], scale[~fallback], self.default_margin
                )
                backup = ScaledCalibration.from_pairs(
                    actual[fallback], base[fallback], scale[fallback], self.default_margin
                )
            else:
                primary = RatioCalibration.from_pairs(
                    actual[~fallback], base[~fallback], self.floor_, self.default_margin
                )
                backup = RatioCalibration.from_pairs(
                    actual[fallback], base[fallback], self.floor_, self.default_margin
                )
            loss: float | None = None
            cover: float | None = None
            if origins.size:
                predicted = np.where(
                    fallback,
                    calibrated(backup, base, scale, [self.quantile])[:, 0],
                    calibrated(primary, base, scale, [self.quantile])[:, 0],
                )
                raw_loss, raw_cover = score(actual, predicted, self.quantile)
                if not np.isnan(raw_loss):
                    loss, cover = raw_loss, raw_cover
            fitted = FittedWindow(
                state=state,
                primary=primary,
                fallback=backup,
                loss=loss,
                coverage=cover,
                short_history=primary.pairs < MIN_CALIBRATION_PAIRS,
                form=form,
            )
            if best is None or (
                fitted.loss is not None and (best.loss is None or fitted.loss < best.loss)
            ):
                best = fitted
        assert best is not None
        return best

    def fitted_steps(self, horizon: int) -> FittedSteps[StateT]:
        """The per-step fit for this horizon, learning it from the training history if needed."""
        check_is_fitted(self, "step_fits_")
        if horizon < 1:
            raise ValueError(f"need horizon ≥ 1, got {horizon}")
        if horizon not in self.step_fits_:
            self.step_fits_[horizon] = self._fit_steps(horizon)
        return self.step_fits_[horizon]

    def _fit_steps(self, horizon: int) -> FittedSteps[StateT]:
        training = self._history()
        n = len(training)
        state = self._fit_step_state(training, horizon)
        start = self._calibration_start(n, 0, horizon)
        origins = np.arange(start, max(start, n - horizon), dtype=np.int64)
        stride = -(-origins.shape[0] // MAX_STEP_CALIBRATION_ORIGINS)  # ceiling division
        origins = origins[::-1][:: max(1, stride)][::-1]  # keep the newest origin
        actual = step_targets(training.values, origins, horizon)
        if origins.size:
            base, fallback = self._step_base(state, training, origins, horizon)
        else:
            base, fallback = np.empty((0, horizon)), np.empty((0, horizon), dtype=np.bool_)
        primary = StepCalibration.from_pairs(
            np.where(fallback, np.nan, actual), base, self.floor_, self.default_margin
        )
        backup = StepCalibration.from_pairs(
            np.where(fallback, actual, np.nan), base, self.floor_, self.default_margin
        )
        return FittedSteps(
            state=state,
            primary=primary,
            fallback=backup,
            short_history=primary.pairs < MIN_CALIBRATION_PAIRS,
        )

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
        known = Series(series.start, series.step_seconds, values)
        base, fallback = self._step_base(fitted.state, known, origins, horizon)
        if fitted.short_history and fitted.fallback.pairs >= MIN_CALIBRATION_PAIRS:
            # As in predict_peak: an uncalibrated main form yields to the calibrated fallback.
            window = self.steps(self._fallback_window_seconds())
            base = recent_peak_path(values, origins, window, horizon)
            fallback = np.ones(base.shape, dtype=np.bool_)
        main = fitted.primary.apply(base, quantiles)
        backup = fitted.fallback.apply(base, quantiles)
        return np.where(fallback[:, :, None], backup, main)

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
        known = Series(series.start, series.step_seconds, values)
        base, fallback = self._base(fitted.state, known, origins, lead, width)
        if fitted.short_history and fitted.fallback.pairs >= MIN_CALIBRATION_PAIRS:
            # The main form never had enough history to be calibrated (a weekly model with
            # barely a week): trust the calibrated fallback everywhere instead.
            base = recent_peak_base(values, origins, self.steps(self._fallback_window_seconds()))
            fallback = np.ones(origins.shape[0], dtype=np.bool_)
        scale = (
            self._volatility(values, origins) if fitted.form == "scaled" else np.zeros_like(base)
        )
        main = calibrated(fitted.primary, base, scale, quantiles)
        backup = calibrated(fitted.fallback, base, scale, quantiles)
        return np.where(fallback[:, None], backup, main)

    @property
    def info_(self) -> ForecastInfo:
        fitted = self.fitted_window(self.lead, self.width)
        return ForecastInfo(
            model=self._model_name(),
            training_steps=self.training_steps_,
            backtest_loss=fitted.loss,
            coverage=fitted.coverage,
            short_history=fitted.short_history,
            training_span_seconds=self.training_span_seconds_,
            quantile=self.quantile,
        )

"""The contract every demand forecaster follows, and the metadata that travels with a forecast.

Estimators are scikit-learn estimators (``Estimator`` subclasses ``sklearn.base.BaseEstimator``):
hyperparameters in ``__init__`` stored unchanged, so ``get_params``, ``set_params``, ``repr``
and ``sklearn.base.clone`` come from scikit-learn; ``fit`` returns ``self``; learned attributes
end in ``_``; using an estimator before ``fit`` raises scikit-learn's ``NotFittedError``
(``check_is_fitted``); no data is fetched inside.

Indexing convention. An *origin* ``o`` is the index of the last observed step: at origin ``o``
the values ``series.values[: o + 1]`` are known and nothing after them. The *window peak* for
``lead`` and ``width`` is ``max(values[o + lead + 1 : o + lead + width + 1])``, the highest
demand over the ``width`` steps that start ``lead`` steps after the origin. *Step* ``h`` of a
horizon (``h = 1 … horizon``) is ``values[o + h]``: step 1 is the first value not yet known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from peakwise.forecasting.series import FloatArray, Series

IntArray = NDArray[np.int64]


Mode = Literal["forecast", "reactive", "override"]
"""What sizes a service: calibrated forecasts, the reactive rule, or a fixed quantile."""


@dataclass(frozen=True)
class CalibrationInfo:
    """What a service's status and metrics show about its shortfall target."""

    target: float
    """The shortfall target (share of minutes)."""
    mode: Mode
    margin: str
    """The margin in use, for people: ``q0.987`` or ``reactive headroom 23%``."""
    quantile: float | None
    """The forecast quantile in use (None on the reactive rule); with a quantile per time of
    day, the highest of them."""
    headroom: float | None
    """The reactive headroom in use (None on forecasts)."""
    replayed_shortfall: float | None
    """In sample: the shortfall replayed over the calibration span at the margin in use."""
    calibration_seconds: float
    """How much history the margin was calibrated on."""
    achieved_shortfall: float | None
    """Out of sample: share of minutes short under the forecasts served since the earliest
    fit in the achieved window (None before a second fit: nothing served yet)."""
    achieved_seconds: float
    """The span ``achieved_shortfall`` covers (up to ``achieved_seconds``, 7 days)."""
    censored_minutes: int
    """Steps of the history where demand sat at its capacity (counted as short)."""
    note: str = ""
    """Why the margin is what it is when that is not the plain calibration."""
    quantiles_by_time_of_day: tuple[float, ...] = ()
    """The quantile per equal span of the UTC day (``len`` spans from 00:00), when the margin
    was calibrated per time of day; empty when one quantile serves the whole day."""


@dataclass(frozen=True)
class ForecastInfo:
    """What is known about a fitted forecaster's quality; shown in status and used to fall back."""

    model: str
    training_steps: int
    # Rolling-origin pinball loss and coverage of the requested quantile on the service's own
    # history; None until there was enough history to measure them.
    backtest_loss: float | None = None
    coverage: float | None = None
    # True when the model had too little history for seasonality and fell back to recent level.
    short_history: bool = False
    # Seconds of history the model was fitted on (training_steps × step).
    training_span_seconds: float | None = None
    # Quantile the loss and coverage refer to.
    quantile: float | None = None
    # Validation pinball loss of every candidate a selecting model compared, best first.
    candidates: tuple[tuple[str, float], ...] = ()
    # The shortfall target, the margin in use and what it achieved (ShortfallForecaster).
    calibration: CalibrationInfo | None = None


class PeakForecaster(Protocol):
    """Forecasts quantiles of the demand peak over a window ahead of each origin, and of the
    demand at each step of a horizon."""

    def fit(self, series: Series) -> Self:
        """Learn from a history; NaN values are gaps."""
        ...

    def predict_peak(
        self,
        series: Series,
        origins: IntArray,
        *,
        lead: int,
        width: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        """Quantiles of the window peak for each origin, shape ``(len(origins), len(quantiles))``.

        For each origin only ``series.values[: origin + 1]`` may be used, so one call can
        forecast many origins of a replay without looking ahead.
        """
        ...

    def predict_steps(
        self,
        series: Series,
        origins: IntArray,
        *,
        horizon: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        """Quantiles of demand at steps ``1 … horizon`` after each origin, shape
        ``(len(origins), horizon, len(quantiles))``: ``out[i, h - 1, k]`` is the
        ``quantiles[k]``-quantile of ``values[origins[i] + h]``.

        Causal like ``predict_peak``; non-decreasing in the quantile, never negative, NaN where
        nothing is known yet.
        """
        ...

    @property
    def info_(self) -> ForecastInfo:
        """Metadata of the fitted model."""
        ...

    def discard_history(self) -> Self:
        """Let go of the training history kept for fitting other window shapes and horizons
        on first use. What was fitted keeps predicting; anything else then raises. For
        callers that keep many fitted models (the operator keeps one per service)."""
        ...


class Estimator(BaseEstimator):  # type: ignore[misc]  # scikit-learn ships no type hints
    """A Peakwise estimator: scikit-learn's ``BaseEstimator``, named once so the rest of the
    package subclasses a typed class. Before ``fit``, estimators raise ``NotFittedError`` through
    ``sklearn.utils.validation.check_is_fitted``."""


class TrainingHistory:
    """Mixin: the training history a fitted estimator keeps, and how it lets it go.

    Estimators learn the constructor's window shape in ``fit`` and other shapes (or per-step
    horizons) from the same history when first asked, so they keep it (read-only, shared
    with the models a selection fitted) until ``discard_history``.
    """

    training_series_: Series
    training_steps_: int
    training_span_seconds_: float

    def _keep_history(self, series: Series) -> Series:
        self.training_series_ = series.frozen()
        self.training_steps_ = len(series)
        self.training_span_seconds_ = float(len(series) * series.step_seconds)
        return self.training_series_

    def _history(self) -> Series:
        """The training history, for fitting a window shape or horizon on first use."""
        try:
            return self.training_series_
        except AttributeError:
            raise RuntimeError(
                f"{type(self).__name__} discarded its training history; refit it to forecast "
                "a window shape or horizon it has not forecast before"
            ) from None

    def discard_history(self) -> Self:
        self.__dict__.pop("training_series_", None)
        return self


def window_peaks(values: FloatArray, origins: IntArray, lead: int, width: int) -> FloatArray:
    """The actual window peak for each origin (NaN where the window is all gaps or off the end)."""
    out = np.full(origins.shape[0], np.nan)
    n = values.shape[0]
    for i, o in enumerate(origins):
        lo, hi = int(o) + lead + 1, int(o) + lead + width + 1
        if hi <= n:
            window = values[lo:hi]
            if not np.all(np.isnan(window)):
                out[i] = np.nanmax(window)
    return out


def pinball_loss(actual: FloatArray, predicted: FloatArray, quantile: float) -> float:
    """Mean pinball (quantile) loss over the pairs where the actual value is known."""
    mask = ~np.isnan(actual) & ~np.isnan(predicted)
    if not mask.any():
        return float("nan")
    diff = actual[mask] - predicted[mask]
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))

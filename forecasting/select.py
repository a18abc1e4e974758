"""Pick (or blend) the best forecaster for one service by a rolling-origin backtest on its own
history, then calibrate the result on the held-out part (split conformal).

``AutoForecaster`` implements the same ``PeakForecaster`` protocol as the single models, so
``peakwise backtest`` and the operator use it the same way; refitting it (daily in the
backtest) re-runs the selection on the longer history.

Selection, for a window shape ``(lead, width)``:

1. The most recent ``validation_fraction`` of the history (at most ``max_validation_seconds``)
   is held out: every candidate is fitted on what came before and predicts every origin of
   the held-out span, in time order, never shuffled.
2. Candidates are ranked by pinball loss at the target quantile; the inverse-loss blend of the
   best two or three (quantile averaging) is tried too, and the lowest loss wins.
3. The chosen candidates are refitted on the whole history. Each is calibrated by its own
   residuals (the GBM on a held-out tail); averaging calibrated quantiles keeps the blend
   calibrated. With ``recalibrate=True`` the winner's held-out ratios ``actual / forecast``
   replace those margins (split conformal on the validation span); measured on the servegen
   trace that was noisier (two or three days of residuals) and is off by default.

Under ``min_history_seconds`` there is nothing to validate against: the recent-peak model is
used and ``info_.short_history`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from peakwise.forecasting.base import ForecastInfo, IntArray
from peakwise.forecasting.calibration import (
    MIN_CALIBRATION_PAIRS,
    RatioCalibration,
    demand_floor,
    score,
)
from peakwise.forecasting.gbm import QuantileGBMPeakForecaster
from peakwise.forecasting.model import PeakModel
from peakwise.forecasting.naive import (
    DAY_SECONDS,
    WEEK_SECONDS,
    RecentPeakForecaster,
    SeasonalNaivePeakForecaster,
)
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.smoothing import ExponentialSmoothingPeakForecaster
from peakwise.forecasting.windows import valid_origins, window_peak_targets

ModelFactory = Callable[[int, int, float], PeakModel[Any]]

CANDIDATES: dict[str, ModelFactory] = {
    "seasonal-naive-day": lambda lead, width, q: SeasonalNaivePeakForecaster(
        DAY_SECONDS, lead=lead, width=width, quantile=q
    ),
    "seasonal-naive-week": lambda lead, width, q: SeasonalNaivePeakForecaster(
        WEEK_SECONDS, lead=lead, width=width, quantile=q
    ),
    "recent-peak": lambda lead, width, q: RecentPeakForecaster(lead=lead, width=width, quantile=q),
    "exp-smoothing": lambda lead, width, q: ExponentialSmoothingPeakForecaster(
        lead=lead, width=width, quantile=q
    ),
    "quantile-gbm": lambda lead, width, q: QuantileGBMPeakForecaster(
        lead=lead, width=width, quantile=q
    ),
}
"""Every model AutoForecaster can choose from, by name."""

DEFAULT_CANDIDATES = tuple(CANDIDATES)


@dataclass(frozen=True)
class Selection:
    """The outcome of selection for one window shape."""

    models: tuple[PeakModel[Any], ...]
    weights: tuple[float, ...]
    calibration: RatioCalibration | None
    """Held-out margins for the blend; None when the single model's own margins are used."""
    label: str
    loss: float | None
    coverage: float | None
    short_history: bool
    candidates: tuple[tuple[str, float], ...]


class AutoForecaster:
    """The forecaster to use for a service: rolling-origin model selection + conformal margins."""

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        *,
        lead: int = 10,
        width: int = 30,
        quantile: float = 0.95,
        validation_fraction: float = 0.2,
        max_validation_seconds: int = 3 * DAY_SECONDS,
        min_history_seconds: int = 2 * DAY_SECONDS,
        max_blend: int = 3,
        recalibrate: bool = False,
    ) -> None:
        self.candidates = candidates
        self.lead = lead
        self.width = width
        self.quantile = quantile
        self.validation_fraction = validation_fraction
        self.max_validation_seconds = max_validation_seconds
        self.min_history_seconds = min_history_seconds
        self.max_blend = max_blend
        self.recalibrate = recalibrate

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "lead": self.lead,
            "width": self.width,
            "quantile": self.quantile,
            "validation_fraction": self.validation_fraction,
            "max_validation_seconds": self.max_validation_seconds,
            "min_history_seconds": self.min_history_seconds,
            "max_blend": self.max_blend,
            "recalibrate": self.recalibrate,
        }

    def set_params(self, **params: Any) -> Self:
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"AutoForecaster has no parameter {key!r}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"AutoForecaster({args})"

    def fit(self, series: Series) -> Self:
        unknown = [name for name in self.candidates if name not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
        values = np.asarray(series.values, dtype=np.float64).copy()
        self.training_series_ = Series(series.start, series.step_seconds, values)
        self.selections_: dict[tuple[int, int], Selection] = {}
        self.selection(self.lead, self.width)
        return self

    def selection(self, lead: int, width: int) -> Selection:
        """The selection for this window shape, made from the training history if needed."""
        if not hasattr(self, "selections_"):
            raise RuntimeError("AutoForecaster is not fitted; call fit() first")
        key = (lead, width)
        if key not in self.selections_:
            self.selections_[key] = self._select(lead, width)
        return self.selections_[key]

    def _select(self, lead: int, width: int) -> Selection:
        series = self.training_series_
        n = len(series)
        step = series.step_seconds
        validation = min(
            int(self.validation_fraction * n), max(1, round(self.max_validation_seconds / step))
        )
        first = n - lead - width - validation  # first held-out origin
        if n * step < self.min_history_seconds or validation < MIN_CALIBRATION_PAIRS or first < 1:
            model = RecentPeakForecaster(lead=lead, width=width, quantile=self.quantile)
            model.fit(series)
            info = model.info_
            return Selection(
                models=(model,),
                weights=(1.0,),
                calibration=None,
                label=f"{model.name} (short history)",
                loss=info.backtest_loss,
                coverage=info.coverage,
                short_history=True,
                candidates=(),
            )

        train = series.head(first)
        origins = np.arange(first, n - lead - width, dtype=np.int64)
        actual = window_peak_targets(series.values, lead, width)[origins]
        scored: list[tuple[float, str, FloatArray]] = []
        for name in self.candidates:
            candidate = CANDIDATES[name](lead, width, self.quantile).fit(train)
            if candidate.info_.short_history:
                # Its main form (a weekly lag with under two weeks) cannot be validated here,
                # yet would switch on after the refit: leave it out until it can.
                continue
            predicted = candidate.predict_peak(
                series, origins, lead=lead, width=width, quantiles=[self.quantile]
            )[:, 0]
            loss, _ = score(actual, predicted, self.quantile)
            if not np.isnan(loss):
                scored.append((loss, name, predicted))
        scored.sort(key=lambda item: item[0])
        if not scored:  # nothing known in the held-out span: all gaps
            scored = [(float("nan"), "recent-peak", np.full(origins.shape[0], np.nan))]

        # Single best, and inverse-loss blends of the best few: lowest held-out loss wins.
        options: list[tuple[float, tuple[str, ...], tuple[float, ...], FloatArray]] = []
        for size in range(1, min(self.max_blend, len(scored)) + 1):
            top = scored[:size]
            raw = np.array([1.0 / max(loss, 1e-12) for loss, _, _ in top])
            weights = raw / raw.sum()
            blended = np.sum([w * p for w, (_, _, p) in zip(weights, top, strict=True)], axis=0)
            loss, _ = score(actual, blended, self.quantile)
            options.append(
                (loss, tuple(name for _, name, _ in top), tuple(float(w) for w in weights), blended)
            )
        options.sort(key=lambda item: np.inf if np.isnan(item[0]) else item[0])
        loss, names, weights, blended = options[0]

        calibration: RatioCalibration | None = None
        if self.recalibrate:
            floor = demand_floor(train.values, 0.05)
            calibration = RatioCalibration.from_pairs(actual, blended, floor)
            if calibration.pairs < MIN_CALIBRATION_PAIRS:
                calibration = None
        cover = score(actual, blended, self.quantile)[1]

        models = tuple(CANDIDATES[name](lead, width, self.quantile).fit(series) for name in names)
        parts = ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights, strict=True))
        label = names[0] if len(names) == 1 else f"blend({parts})"
        return Selection(
            models=models,
            weights=weights,
            calibration=calibration,
            label=label,
            loss=None if np.isnan(loss) else float(loss),
            coverage=None if np.isnan(cover) else float(cover),
            short_history=False,
            candidates=tuple((name, float(loss)) for loss, name, _ in scored),
        )

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
        chosen = self.selection(lead, width)
        if chosen.calibration is None:
            parts = [
                m.predict_peak(series, origins, lead=lead, width=width, quantiles=quantiles)
                for m in chosen.models
            ]
            blended: FloatArray = np.sum(
                [w * p for w, p in zip(chosen.weights, parts, strict=True)], axis=0
            )
            return blended
        # The blend at the target quantile is the base; held-out ratios give every quantile.
        target = [self.quantile]
        base = np.sum(
            [
                w * m.predict_peak(series, origins, lead=lead, width=width, quantiles=target)[:, 0]
                for w, m in zip(chosen.weights, chosen.models, strict=True)
            ],
            axis=0,
        )
        return chosen.calibration.apply(base, quantiles)

    @property
    def info_(self) -> ForecastInfo:
        chosen = self.selection(self.lead, self.width)
        series = self.training_series_
        return ForecastInfo(
            model=chosen.label,
            training_steps=len(series),
            backtest_loss=chosen.loss,
            coverage=chosen.coverage,
            short_history=chosen.short_history,
            training_span_seconds=float(len(series) * series.step_seconds),
            quantile=self.quantile,
            candidates=chosen.candidates,
        )

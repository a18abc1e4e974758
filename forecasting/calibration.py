"""Residual (split-conformal) calibration of window-peak forecasts.

Every estimator produces a *base* forecast (a level the peak is proportional to). The quantile
``q`` of the peak is ``base × margin_q``, where ``margin_q`` is the empirical ``q``-quantile of
``actual / base`` over origins the model did not learn from. Ratios rather than differences
because demand scales: a margin learned at 1,000 req/s transfers to 2,000 req/s.

A small ``floor`` (a fraction of the service's typical demand) stands in for tiny bases, so one
near-zero blip cannot produce an absurd ratio, and where the base is ~0 the forecast becomes
the ``q``-quantile of the actual peaks themselves (``floor × quantile(actual / floor)``).

``ScaledCalibration`` is the other form: an additive margin in units of a per-origin scale
(recent volatility), used by the nowcast and, where it does better, by every model
(``PeakModel(margin=...)``).

Per-step forecasts (``predict_steps``) are calibrated the same way, one ``RatioCalibration``
per horizon step (``StepCalibration``): the spread of ``actual / base`` grows with the step,
so one margin for the whole horizon would be too wide near the origin and too narrow at the
end.

A calibration keeps its residuals as a ``ConformalQuantiles`` table: every sorted residual when
there are few, else their quantiles at every 0.001. Margins at quantiles with up to three
decimals are exactly those of the full sample; between grid points the next one up is used (on
the side of coverage). A 14-day minute series has ~20,000 residuals (160 kB) per calibration;
the table is 8 kB, which is what lets an operator keep a thousand fitted models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from peakwise.forecasting.base import pinball_loss
from peakwise.forecasting.series import FloatArray

# Fewer pairs than this are noise: use the default margin instead.
MIN_CALIBRATION_PAIRS = 60

QUANTILE_GRID = 1000
"""Residual quantiles are kept at every ``1 / QUANTILE_GRID`` (see ``ConformalQuantiles``)."""

# Quantiles like 0.988 are 987.9999… or 988.0000…1 grid steps: round those to the grid point.
_GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ConformalQuantiles:
    """Finite-sample ("higher") quantiles of a residual sample, kept compactly.

    ``table`` is the sorted sample itself when it has at most ``QUANTILE_GRID + 1`` values,
    else the sample's quantiles at ``0, 1/QUANTILE_GRID, …, 1``.
    """

    table: FloatArray
    pairs: int

    @classmethod
    def of(cls, sample: FloatArray) -> ConformalQuantiles:
        ordered = np.sort(sample)
        if ordered.shape[0] <= QUANTILE_GRID + 1:
            return cls(ordered, int(ordered.shape[0]))
        levels = np.arange(QUANTILE_GRID + 1) / QUANTILE_GRID
        # "higher": a finite-sample conformal quantile should err on the side of coverage.
        return cls(np.quantile(ordered, levels, method="higher"), int(ordered.shape[0]))

    def quantile(self, level: float) -> float:
        if self.pairs == 0:
            raise ValueError("no residuals to take a quantile of")
        if self.pairs == self.table.shape[0]:
            return float(np.quantile(self.table, level, method="higher"))
        return float(self.table[math.ceil(level * QUANTILE_GRID - _GRID_TOLERANCE)])


@dataclass(frozen=True)
class RatioCalibration:
    """Quantiles of ``actual / max(base, floor)`` and how to turn them into margins."""

    ratios: ConformalQuantiles
    floor: float
    default_margin: float = 1.25

    @classmethod
    def from_pairs(
        cls, actual: FloatArray, base: FloatArray, floor: float, default_margin: float = 1.25
    ) -> RatioCalibration:
        usable = ~np.isnan(actual) & ~np.isnan(base)
        denominator = np.maximum(base[usable], floor)
        ok = denominator > 0
        ratios = ConformalQuantiles.of(actual[usable][ok] / denominator[ok])
        return cls(ratios=ratios, floor=floor, default_margin=default_margin)

    @property
    def pairs(self) -> int:
        return self.ratios.pairs

    def margin(self, quantile: float) -> float:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if self.pairs < MIN_CALIBRATION_PAIRS:
            return self.default_margin if quantile >= 0.5 else 1.0
        return self.ratios.quantile(quantile)

    def apply(self, base: FloatArray, quantiles: Sequence[float]) -> FloatArray:
        """Calibrated quantiles, shape ``(len(base), len(quantiles))``; NaN base stays NaN."""
        scaled = np.maximum(base, self.floor)
        out = np.empty((base.shape[0], len(quantiles)))
        for k, q in enumerate(quantiles):
            out[:, k] = np.maximum(scaled * self.margin(q), 0.0)
        return out


@dataclass(frozen=True)
class StepCalibration:
    """One ``RatioCalibration`` per horizon step ``h = 1 … horizon``."""

    steps: tuple[RatioCalibration, ...]
    floor: float

    @classmethod
    def from_pairs(
        cls, actual: FloatArray, base: FloatArray, floor: float, default_margin: float = 1.25
    ) -> StepCalibration:
        """``actual`` and ``base`` of shape ``(origins, horizon)``; NaN pairs are skipped."""
        return cls(
            tuple(
                RatioCalibration.from_pairs(actual[:, h], base[:, h], floor, default_margin)
                for h in range(actual.shape[1])
            ),
            floor,
        )

    @property
    def horizon(self) -> int:
        return len(self.steps)

    @property
    def pairs(self) -> int:
        """Pairs of the least-calibrated step (the weakest margin decides)."""
        return min((step.pairs for step in self.steps), default=0)

    def apply(self, base: FloatArray, quantiles: Sequence[float]) -> FloatArray:
        """Calibrated quantiles, shape ``(origins, horizon, len(quantiles))``; NaN stays NaN."""
        horizon = base.shape[1]
        margins = np.array([[step.margin(q) for q in quantiles] for step in self.steps[:horizon]])
        margins = margins.reshape(horizon, len(quantiles))
        scaled = np.maximum(base, self.floor)
        out: FloatArray = np.maximum(scaled[:, :, None] * margins[None, :, :], 0.0)
        return out


def coverage(actual: FloatArray, predicted: FloatArray) -> float:
    """Share of known actual peaks at or below the forecast."""
    mask = ~np.isnan(actual) & ~np.isnan(predicted)
    if not mask.any():
        return float("nan")
    return float(np.mean(actual[mask] <= predicted[mask]))


def score(actual: FloatArray, predicted: FloatArray, quantile: float) -> tuple[float, float]:
    """(pinball loss, coverage) of one quantile forecast."""
    return pinball_loss(actual, predicted, quantile), coverage(actual, predicted)


def demand_floor(values: FloatArray, fraction: float) -> float:
    """``fraction`` of the mean known demand; 0 for an empty or all-zero history."""
    known = values[~np.isnan(values)]
    if known.size == 0:
        return 0.0
    return float(fraction * max(float(np.mean(known)), 0.0))


@dataclass(frozen=True)
class ScaledCalibration:
    """Additive margins in units of a per-origin scale: the quantile is
    ``base + margin_q × scale``, ``margin_q`` the empirical ``q``-quantile of
    ``(actual - base) / scale`` (split-conformal calibration with a locally weighted score).

    For forecasters whose uncertainty follows something other than the level (the nowcast's
    scale is how much demand has been moving lately); under ``MIN_CALIBRATION_PAIRS`` the
    quantile is ``base × default_margin`` like the ratio calibration's.
    """

    scores: ConformalQuantiles
    default_margin: float = 1.25

    @classmethod
    def from_pairs(
        cls, actual: FloatArray, base: FloatArray, scale: FloatArray, default_margin: float = 1.25
    ) -> ScaledCalibration:
        usable = ~np.isnan(actual) & ~np.isnan(base) & (scale > 0)
        scores = ConformalQuantiles.of((actual[usable] - base[usable]) / scale[usable])
        return cls(scores=scores, default_margin=default_margin)

    @property
    def pairs(self) -> int:
        return self.scores.pairs

    def margin(self, quantile: float) -> float:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        return self.scores.quantile(quantile)

    def apply(self, base: FloatArray, scale: FloatArray, quantiles: Sequence[float]) -> FloatArray:
        """Calibrated quantiles, shape ``base.shape + (len(quantiles),)``; NaN stays NaN."""
        out = np.empty((*base.shape, len(quantiles)))
        for k, q in enumerate(quantiles):
            if self.pairs < MIN_CALIBRATION_PAIRS:
                margin = self.default_margin if q >= 0.5 else 1.0
                out[..., k] = base * margin
            else:
                out[..., k] = base + self.margin(q) * scale
        clipped: FloatArray = np.maximum(out, 0.0)
        return clipped


@dataclass(frozen=True)
class ScaledStepCalibration:
    """One ``ScaledCalibration`` per horizon step ``h = 1 … horizon``."""

    steps: tuple[ScaledCalibration, ...]

    @classmethod
    def from_pairs(
        cls, actual: FloatArray, base: FloatArray, scale: FloatArray, default_margin: float = 1.25
    ) -> ScaledStepCalibration:
        """``actual`` and ``base`` of shape ``(origins, horizon)``, ``scale`` per origin."""
        return cls(
            tuple(
                ScaledCalibration.from_pairs(actual[:, h], base[:, h], scale, default_margin)
                for h in range(actual.shape[1])
            )
        )

    @property
    def pairs(self) -> int:
        """Pairs of the least-calibrated step."""
        return min((step.pairs for step in self.steps), default=0)

    def apply(self, base: FloatArray, scale: FloatArray, quantiles: Sequence[float]) -> FloatArray:
        """Quantiles of shape ``(origins, horizon, len(quantiles))``; ``scale`` per origin."""
        horizon = base.shape[1]
        out = np.empty((*base.shape, len(quantiles)))
        for h, step in enumerate(self.steps[:horizon]):
            out[:, h, :] = step.apply(base[:, h], scale, quantiles)
        return out

"""Pick (or blend) the best forecaster for one service by a rolling-origin backtest on its own
history, then calibrate the result on the held-out part (split conformal).

``AutoForecaster`` implements the same ``PeakForecaster`` protocol as the single models, so
``peakwise backtest`` and the operator use it the same way; refitting it (daily in the
backtest) re-runs the selection on the longer history.

Selection, for a window shape ``(lead, width)``:

1. The most recent ``validation_fraction`` of the history (at most ``max_validation_seconds``)
   is held out: every candidate is fitted on what came before and predicts every origin of
   the held-out span, in time order, never shuffled.
2. Every candidate and every blend of up to ``max_blend`` of them (quantile averaging,
   inverse-score weights) is scored by ``criterion`` (pinball loss at the target quantile)
   on what capacity following it would be: a forecast stays in force until its window has
   passed (the planner holds each target ``lead + width`` steps at least), so the capacity
   for an origin's window is the highest of the last ``hold`` forecasts, and that running
   maximum is what is scored (``hold=1`` scores the forecasts themselves). The lowest score
   wins. A forecast that dips for a minute leaves no capacity short while an earlier one
   still holds, and one that stays high after a jump is charged for every minute it holds
   (docs/forecasting.md shows what that changes on a real trace).
3. The chosen candidates are refitted on the whole history. Each is calibrated by its own
   residuals (the GBM on a held-out tail); averaging calibrated quantiles keeps the blend
   calibrated. With ``recalibrate=True`` the winner's held-out ratios ``actual / forecast``
   replace those margins (split conformal on the validation span); off by default (a few
   days of autocorrelated residuals are a noisy sample; see docs/forecasting.md).

**Warm start.** With ``warm_start=True`` a refit of the same estimator blends each option's new
score with the score it kept from the previous fits, weighted by age: the old score counts
``0.5 ** (elapsed / score_half_life_seconds)``, elapsed being how far the new history's end
is past the previous one's. Consecutive validation spans overlap, and a score at a high
quantile rests on the few largest misses of the span, so one span's ranking is noisy; the
smoothed score is an estimate over more held-out days without refitting more, and the choice
only moves when an option stays better. Blend weights come from the smoothed scores of their
members. A history that ends before the previous one, or a change of candidates, quantile,
criterion or hold, starts the scores afresh, so a warm start never sees past its history's
end. The state is a few dozen floats per window shape (``scores_``) and survives
``discard_history`` and pickling; it only counts if the caller refits the same estimator
object (``peakwise backtest`` does; ``default_forecaster`` turns warm start on).

Under ``min_history_seconds`` there is nothing to validate against: the recent-peak model is
used and ``info_.short_history`` says so.

Per-step forecasts (``predict_steps``) carry the selection over: they use the models chosen
for the constructor's window shape, each with its own per-step calibration. A model good at
window peaks can be poor minute by minute (the value one week ago is a fine peak estimate but a
noisy per-minute one), so the chosen models are ranked again by their per-step pinball loss on
the newest part of the history and the best one, or an inverse-loss blend of the best few, is
kept (the forecasts themselves are scored, not smoothed over refits; averaging quantiles keeps
them monotone). No model is refitted: this costs the chosen models' per-step fits and one
forecast of a few hundred held-out origins.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Self

import numpy as np
from sklearn.utils.validation import check_is_fitted

from peakwise.forecasting.base import (
    Estimator,
    ForecastInfo,
    IntArray,
    PeakForecaster,
    TrainingHistory,
)
from peakwise.forecasting.calibration import (
    MIN_CALIBRATION_PAIRS,
    RatioCalibration,
    demand_floor,
    score,
)
from peakwise.forecasting.gbm import QuantileGBMPeakForecaster
from peakwise.forecasting.naive import (
    DAY_SECONDS,
    WEEK_SECONDS,
    RecentPeakForecaster,
    SeasonalNaivePeakForecaster,
    SeasonalRiseForecaster,
)
from peakwise.forecasting.nowcast import NowcastForecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.smoothing import ExponentialSmoothingPeakForecaster
from peakwise.forecasting.windows import (
    step_targets,
    trailing_max,
    valid_origins,
    window_peak_targets,
)

ModelFactory = Callable[[int, int, float], PeakForecaster]

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
    "nowcast": lambda lead, width, q: NowcastForecaster(lead=lead, width=width, quantile=q),
    "seasonal-rise": lambda lead, width, q: SeasonalRiseForecaster(
        lead=lead, width=width, quantile=q
    ),
}
"""Every model AutoForecaster can choose from, by name."""

DEFAULT_CANDIDATES = tuple(CANDIDATES)

# Per-step losses are averaged over origins × steps: a few hundred origins spread over the
# held-out span rank the models reliably, and keep the GBM's predictions (origins × steps
# rows) cheap.
MAX_STEP_VALIDATION_ORIGINS = 500
# ... taken from the newest 20% of the history (at most 3 days): the GBM's held-out
# calibration tail, so no model is compared on data it was trained on.
STEP_VALIDATION_FRACTION = 0.2
MAX_STEP_VALIDATION_SECONDS = 3 * DAY_SECONDS


@dataclass(frozen=True)
class Selection:
    """The outcome of selection for one window shape."""

    models: tuple[PeakForecaster, ...]
    weights: tuple[float, ...]
    calibration: RatioCalibration | None
    """Held-out margins for the blend; None when the single model's own margins are used."""
    label: str
    loss: float | None
    coverage: float | None
    short_history: bool
    candidates: tuple[tuple[str, float], ...]


def cost_at_coverage(actual: FloatArray, predicted: FloatArray, quantile: float) -> float:
    """What capacity following ``predicted`` would cost if it were scaled to cover exactly a
    ``quantile`` share of the known ``actual`` values: the mean forecast × the ``quantile`` of
    ``actual / forecast``. Lower is better; NaN when nothing is known.

    This compares forecasts the way capacity is judged: cost at a share of covered steps,
    whatever the size of the misses (which pinball loss also weighs).
    """
    known = ~np.isnan(actual) & ~np.isnan(predicted)
    if not known.any():
        return float("nan")
    forecast = predicted[known]
    level = float(np.mean(forecast))
    # A tiny stand-in for zero forecasts, so an idle step cannot make the ratio infinite.
    floor = max(1e-3 * float(np.mean(np.abs(actual[known]))), 1e-12)
    ratios = actual[known] / np.maximum(forecast, floor)
    return max(level, floor) * float(np.quantile(ratios, quantile, method="higher"))


CRITERIA: dict[str, Callable[[FloatArray, FloatArray, float], float]] = {
    "pinball": lambda actual, predicted, q: score(actual, predicted, q)[0],
    "cost-at-coverage": cost_at_coverage,
}
"""How AutoForecaster ranks candidates and blends on the held-out span (lower is better)."""


@dataclass(frozen=True)
class StepSelection:
    """Which of the selected models per-step forecasts blend, for one horizon."""

    models: tuple[PeakForecaster, ...]
    weights: tuple[float, ...]
    label: str
    loss: float | None
    """Per-step pinball loss at the target quantile on the newest part of the history, mean
    over origins and steps; None when there was nothing to compare."""
    coverage: float | None


def blend(weights: Sequence[float] | FloatArray, forecasts: Sequence[FloatArray]) -> FloatArray:
    """The weighted average of forecasts (of the same shape). Averaging calibrated quantiles
    keeps a blend's quantiles ordered."""
    mixed: FloatArray = np.sum([w * f for w, f in zip(weights, forecasts, strict=True)], axis=0)
    return mixed


def inverse_score_weights(scores: Sequence[float]) -> FloatArray:
    """Blend weights proportional to ``1 / score`` (lower scores weigh more), summing to 1."""
    raw = np.array([1.0 / max(value, 1e-12) for value in scores])
    weights: FloatArray = raw / raw.sum()
    return weights


def best_option(
    forecasts: Mapping[str, FloatArray],
    scores: dict[tuple[str, ...], float],
    max_blend: int,
    blend_score: Callable[[tuple[str, ...], FloatArray], float],
) -> tuple[tuple[str, ...], tuple[float, ...], FloatArray]:
    """The one search over candidates and blends: the lowest-scoring candidate, or
    inverse-score blend of up to ``max_blend`` of them: (its members best first, their
    weights, its forecasts).

    ``scores`` holds each candidate's score, keyed ``(name,)``, and gains every blend's,
    keyed by its members in the order of ``forecasts``; ``blend_score`` scores a blend's
    forecasts (NaN leaves it out).
    """
    best: tuple[float, tuple[str, ...], tuple[float, ...], FloatArray] | None = None
    for size in range(1, min(max_blend, len(forecasts)) + 1):
        for option in itertools.combinations(forecasts, size):
            share = inverse_score_weights([scores[(name,)] for name in option])
            mix = blend(share, [forecasts[name] for name in option])
            if size > 1:
                scored = blend_score(option, mix)
                if np.isnan(scored):
                    continue
                scores[option] = scored
            if best is None or scores[option] < best[0]:
                best = (scores[option], option, tuple(float(w) for w in share), mix)
    if best is None:
        raise ValueError("no candidate to choose from")
    _, members, shares, mix = best
    order = sorted(range(len(members)), key=lambda i: scores[(members[i],)])
    return tuple(members[i] for i in order), tuple(shares[i] for i in order), mix


def blend_label(names: Sequence[str], weights: Sequence[float]) -> str:
    """How a choice is shown: the model's name, or ``blend(a 0.60, b 0.40)``."""
    if len(names) == 1:
        return names[0]
    parts = ", ".join(f"{name} {w:.2f}" for name, w in zip(names, weights, strict=True))
    return f"blend({parts})"


class AutoForecaster(Estimator, TrainingHistory):
    """The forecaster to use for a service: rolling-origin model selection + conformal margins.

    ``hold``: origins a forecast stays in force, for scoring the capacity that follows the
    forecasts (their running maximum); None means the window shape's ``lead + width``, the
    least the planner holds a target; 1 scores the forecasts themselves. ``warm_start``: a
    refit blends every option's new score with the one kept from earlier fits, which fades
    with a half-life of ``score_half_life_seconds`` of history (see the module docstring).
    ``info_.candidates`` lists every candidate's pinball loss on the held-out span, in the
    order of their (held, smoothed) scores.
    """

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        *,
        lead: int = 10,
        width: int = 30,
        quantile: float = 0.95,
        validation_fraction: float = 0.3,
        max_validation_seconds: int = 5 * DAY_SECONDS,
        min_history_seconds: int = 2 * DAY_SECONDS,
        max_blend: int = 3,
        recalibrate: bool = False,
        criterion: str = "pinball",
        hold: int | None = None,
        warm_start: bool = False,
        score_half_life_seconds: int = DAY_SECONDS,
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
        self.criterion = criterion
        self.hold = hold
        self.warm_start = warm_start
        self.score_half_life_seconds = score_half_life_seconds

    def fit(self, series: Series) -> Self:
        unknown = [name for name in self.candidates if name not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
        if self.criterion not in CRITERIA:
            known = sorted(CRITERIA)
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {known}")
        if self.hold is not None and self.hold < 1:
            raise ValueError(f"need hold ≥ 1 or None, got {self.hold}")
        until = series.time_at(len(series))
        self._carried = self._carried_scores(until)
        self._keep_history(series)
        self.selections_: dict[tuple[int, int], Selection] = {}
        self.step_selections_: dict[int, StepSelection] = {}
        self.scores_: dict[tuple[int, int], dict[tuple[str, ...], float]] = {}
        """Per window shape, every option's (smoothed) score: a model or a blend by names."""
        self.scores_until_ = until
        """The end of the history the scores were made on."""
        self.scores_setting_ = self._score_setting()
        self.selection(self.lead, self.width)
        return self

    def _score_setting(self) -> tuple[object, ...]:
        """What a score depends on besides the data: scores made otherwise are not carried."""
        return (tuple(self.candidates), self.quantile, self.criterion, self.hold, self.max_blend)

    def _carried_scores(
        self, until: datetime
    ) -> tuple[dict[tuple[int, int], dict[tuple[str, ...], float]], float]:
        """The previous fit's scores and the weight they keep in this one (warm start only)."""
        previous = getattr(self, "scores_", None)
        if not self.warm_start or previous is None:
            return {}, 0.0
        if self.scores_setting_ != self._score_setting() or until < self.scores_until_:
            return {}, 0.0  # other settings, or a history that ends earlier: start afresh
        if self.score_half_life_seconds <= 0:
            return {}, 0.0
        elapsed = (until - self.scores_until_) / timedelta(seconds=self.score_half_life_seconds)
        return previous, float(0.5**elapsed)

    def _hold(self, lead: int, width: int) -> int:
        return lead + width if self.hold is None else self.hold

    def selection(self, lead: int, width: int) -> Selection:
        """The selection for this window shape, made from the training history if needed."""
        check_is_fitted(self, "selections_")
        key = (lead, width)
        if key not in self.selections_:
            self.selections_[key] = self._select(lead, width)
        return self.selections_[key]

    def _validation_steps(
        self, length: int, fraction: float | None = None, seconds: int | None = None
    ) -> int:
        """Steps held out for validation in a history of ``length`` steps."""
        step = self._history().step_seconds
        fraction = self.validation_fraction if fraction is None else fraction
        seconds = self.max_validation_seconds if seconds is None else seconds
        return min(int(fraction * length), max(1, round(seconds / step)))

    def step_selection(self, horizon: int) -> StepSelection:
        """The blend used for per-step forecasts over ``horizon`` steps (chosen on first use)."""
        check_is_fitted(self, "step_selections_")
        if horizon < 1:
            raise ValueError(f"need horizon ≥ 1, got {horizon}")
        if horizon not in self.step_selections_:
            self.step_selections_[horizon] = self._select_steps(horizon)
        return self.step_selections_[horizon]

    def _select_steps(self, horizon: int) -> StepSelection:
        chosen = self.selection(self.lead, self.width)
        if len(chosen.models) == 1:
            return StepSelection(chosen.models, (1.0,), chosen.label, None, None)
        series = self._history()
        n = len(series)
        # The newest part of the history, the GBM's held-out tail: no model learned anything
        # there but its margins, so the forecasts compared are out of sample.
        span = self._validation_steps(n, STEP_VALIDATION_FRACTION, MAX_STEP_VALIDATION_SECONDS)
        first = max(0, n - span - horizon)
        origins = np.arange(first, max(first, n - horizon), dtype=np.int64)
        stride = -(-origins.shape[0] // MAX_STEP_VALIDATION_ORIGINS)
        origins = origins[::-1][:: max(1, stride)][::-1]
        actual = step_targets(series.values, origins, horizon)
        by_label = {m.info_.model: m for m in chosen.models}
        rank = CRITERIA[self.criterion]
        forecasts: dict[str, FloatArray] = {}
        scores: dict[tuple[str, ...], float] = {}
        for label, model in by_label.items():
            predicted = model.predict_steps(
                series, origins, horizon=horizon, quantiles=[self.quantile]
            )[:, :, 0]
            ranked = rank(actual, predicted, self.quantile)
            if not np.isnan(ranked):
                forecasts[label], scores[(label,)] = predicted, ranked
        if not forecasts:  # nothing known to compare with: keep the window-peak blend
            return StepSelection(chosen.models, chosen.weights, chosen.label, None, None)
        names, weights, blended = best_option(
            forecasts,
            scores,
            self.max_blend,
            lambda _, mix: rank(actual, mix, self.quantile),
        )
        loss, cover = score(actual, blended, self.quantile)
        return StepSelection(
            models=tuple(by_label[name] for name in names),
            weights=weights,
            label=blend_label(names, weights),
            loss=float(loss),
            coverage=cover,
        )

    def _select(self, lead: int, width: int) -> Selection:
        series = self._history()
        n = len(series)
        step = series.step_seconds
        validation = self._validation_steps(n)
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
        rank = CRITERIA[self.criterion]
        hold = self._hold(lead, width)

        def held(predicted: FloatArray) -> FloatArray:
            # The capacity that follows the forecasts: each is in force for ``hold`` origins.
            return trailing_max(predicted, hold) if hold > 1 else predicted

        old_scores, kept = self._carried
        old = old_scores.get((lead, width), {})

        def smoothed(option: tuple[str, ...], new: float) -> float:
            return kept * old[option] + (1.0 - kept) * new if option in old else new

        def blend_score(option: tuple[str, ...], mix: FloatArray) -> float:
            return smoothed(option, rank(actual, held(mix), self.quantile))

        forecasts: dict[str, FloatArray] = {}
        losses: dict[str, float] = {}
        scores: dict[tuple[str, ...], float] = {}
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
            ranked = rank(actual, held(predicted), self.quantile)
            if not np.isnan(loss) and not np.isnan(ranked):
                losses[name] = loss
                forecasts[name] = predicted
                scores[(name,)] = smoothed((name,), ranked)
        # Best first; ties keep the candidates' order. Options are keyed by their members in
        # the candidates' order, so a blend keeps its score when the ranking changes.
        ranking = sorted(forecasts, key=lambda name: scores[(name,)])
        if not ranking:  # nothing known in the held-out span: all gaps
            names: tuple[str, ...] = ("recent-peak",)
            weights: tuple[float, ...] = (1.0,)
            blended = np.full(origins.shape[0], np.nan)
        else:
            names, weights, blended = best_option(forecasts, scores, self.max_blend, blend_score)
        self.scores_[(lead, width)] = scores
        loss, cover = score(actual, blended, self.quantile)

        calibration: RatioCalibration | None = None
        if self.recalibrate:
            floor = demand_floor(train.values, 0.05)
            calibration = RatioCalibration.from_pairs(actual, blended, floor)
            if calibration.pairs < MIN_CALIBRATION_PAIRS:
                calibration = None

        models = tuple(CANDIDATES[name](lead, width, self.quantile).fit(series) for name in names)
        return Selection(
            models=models,
            weights=weights,
            calibration=calibration,
            label=blend_label(names, weights),
            loss=None if np.isnan(loss) else float(loss),
            coverage=None if np.isnan(cover) else float(cover),
            short_history=False,
            candidates=tuple((name, losses[name]) for name in ranking),
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
            return blend(
                chosen.weights,
                [
                    m.predict_peak(series, origins, lead=lead, width=width, quantiles=quantiles)
                    for m in chosen.models
                ],
            )
        # The blend at the target quantile is the base; held-out ratios give every quantile.
        target = [self.quantile]
        base = blend(
            chosen.weights,
            [
                m.predict_peak(series, origins, lead=lead, width=width, quantiles=target)[:, 0]
                for m in chosen.models
            ],
        )
        return chosen.calibration.apply(base, quantiles)

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
        # ``recalibrate`` margins are window-peak ratios; per step each model's own apply.
        chosen = self.step_selection(horizon)
        return blend(
            chosen.weights,
            [
                m.predict_steps(series, origins, horizon=horizon, quantiles=quantiles)
                for m in chosen.models
            ],
        )

    @property
    def info_(self) -> ForecastInfo:
        chosen = self.selection(self.lead, self.width)
        return ForecastInfo(
            model=chosen.label,
            training_steps=self.training_steps_,
            backtest_loss=chosen.loss,
            coverage=chosen.coverage,
            short_history=chosen.short_history,
            training_span_seconds=self.training_span_seconds_,
            quantile=self.quantile,
            candidates=chosen.candidates,
        )

    def discard_history(self) -> Self:
        kept = [s.models for s in self.selections_.values()]
        kept += [s.models for s in self.step_selections_.values()]
        for models in kept:
            for model in models:
                model.discard_history()
        return super().discard_history()


def default_forecaster(lead: int, width: int, quantile: float) -> AutoForecaster:
    """The forecaster Peakwise uses for a service, in the operator and in ``peakwise
    backtest`` alike: an unfitted ``AutoForecaster`` over every candidate for this window
    shape (``lead`` and ``width`` in steps) and quantile, scoring what capacity following
    each option would be, warm-started: refit the same object, and each refit's choice
    weighs the scores of the previous ones."""
    return AutoForecaster(lead=lead, width=width, quantile=quantile, warm_start=True)

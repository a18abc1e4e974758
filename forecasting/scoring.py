"""Rolling-origin evaluation of the forecasters on a trace (what ``forecast-eval`` runs).

The evaluation replays a trace the way the operator would see it: from ``first_day`` on, each
model is refitted once a day on everything before that day (expanding window, time order) and
forecasts every minute of the day, each origin seeing only data up to itself. Scores are
measured over all those origins, against the actual window peaks, and (with ``horizon``) for
the per-step forecasts against the actual value at every step of the horizon.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peakwise.forecasting.base import IntArray, PeakForecaster, pinball_loss
from peakwise.forecasting.calibration import coverage
from peakwise.forecasting.select import CANDIDATES, default_forecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import step_targets, window_peak_targets

Factory = Callable[[int, int, float], PeakForecaster]


def default_models() -> dict[str, Factory]:
    """Every candidate on its own, the selecting AutoForecaster (``default_forecaster``, as the
    operator uses it), and the older baseline."""
    from peakwise.forecasting.seasonal import SeasonalPeakForecaster

    models: dict[str, Factory] = dict(CANDIDATES)
    models["seasonal-peak (baseline)"] = lambda lead, width, q: SeasonalPeakForecaster(
        lead=lead, width=width
    )
    models["auto (selected)"] = default_forecaster  # as the operator uses it
    return models


@dataclass(frozen=True)
class StepScore:
    """How the per-step quantile forecasts (``predict_steps``) did, step by step."""

    horizon: int
    pinball_loss: FloatArray
    """Pinball loss of the quantile forecast at steps 1 … horizon (index ``h - 1``)."""
    coverage: FloatArray
    """Share of actual values at or below the quantile forecast, per step."""
    fit_seconds: float
    """Mean time of the first per-step forecast after a refit (the per-step part is fitted
    then, on first use)."""
    predict_seconds: float
    """Time of forecasting the whole horizon for one origin from the full history."""

    @property
    def mean_loss(self) -> float:
        return float(np.nanmean(self.pinball_loss))

    @property
    def mean_coverage(self) -> float:
        return float(np.nanmean(self.coverage))


@dataclass(frozen=True)
class ModelScore:
    name: str
    pinball_loss: float
    coverage: float
    mae_median: float
    """Mean absolute error of the median (q = 0.5) forecast of the window peak."""
    fit_seconds: float
    """Mean time of one refit (on an expanding history)."""
    predict_seconds: float
    """Mean time of forecasting one origin from the full history (what the operator does)."""
    models_chosen: tuple[str, ...]
    forecast: FloatArray
    """The quantile forecast for every origin (NaN before the evaluation span)."""
    median: FloatArray
    steps: StepScore | None = None
    """Per-step scores, when ``evaluate`` was given a ``horizon``."""


def evaluate(
    series: Series,
    models: dict[str, Factory],
    *,
    lead: int,
    width: int,
    quantile: float,
    first_origin: int,
    refit_every: int,
    horizon: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ModelScore]:
    """Rolling-origin scores of each model over origins ``first_origin`` onwards; with
    ``horizon``, also of its per-step forecasts over that many steps (same origins, scored
    where the step is inside the trace). Each model is made once and refitted at every
    refit, as the operator and the backtest keep one per service (a warm-started selection
    carries its scores from one refit to the next)."""
    n = len(series)
    actual = window_peak_targets(series.values, lead, width)
    scored: list[ModelScore] = []
    last_origin = n - lead - width  # later origins have no complete window to score
    if first_origin >= last_origin:
        raise ValueError("the trace is too short for this evaluation span, lead and width")
    for name, factory in models.items():
        forecast = np.full(n, np.nan)
        median = np.full(n, np.nan)
        fit_times: list[float] = []
        chosen: list[str] = []
        model = factory(lead, width, quantile)
        steps = _StepTally(horizon, quantile) if horizon else None
        for start in range(first_origin, last_origin, refit_every):
            stop = min(last_origin, start + refit_every)
            began = time.perf_counter()
            model.fit(series.head(start))
            fit_times.append(time.perf_counter() - began)
            chosen.append(model.info_.model)
            origins = np.arange(start, stop, dtype=np.int64)
            out = model.predict_peak(
                series.head(stop), origins, lead=lead, width=width, quantiles=[0.5, quantile]
            )
            median[start:stop], forecast[start:stop] = out[:, 0], out[:, 1]
            if steps:
                steps.add(model, series, origins)
        # The operator's call: one origin, the whole history; best of a few to skip hiccups.
        predict_times = []
        for _ in range(5):
            began = time.perf_counter()
            model.predict_peak(
                series, np.array([n - 1]), lead=lead, width=width, quantiles=[quantile]
            )
            predict_times.append(time.perf_counter() - began)
        span = slice(first_origin, last_origin)
        known = ~np.isnan(actual[span]) & ~np.isnan(median[span])
        errors = np.abs(actual[span][known] - median[span][known])
        scored.append(
            ModelScore(
                name=name,
                pinball_loss=pinball_loss(actual[span], forecast[span], quantile),
                coverage=coverage(actual[span], forecast[span]),
                mae_median=float(errors.mean()) if errors.size else float("nan"),
                fit_seconds=float(np.mean(fit_times)),
                predict_seconds=float(np.min(predict_times)),
                models_chosen=tuple(chosen),
                forecast=forecast,
                median=median,
                steps=steps.score(model, series) if steps else None,
            )
        )
        if progress:
            progress(name)
    return scored


class _StepTally:
    """Per-step loss and coverage summed over the refit periods of one model."""

    def __init__(self, horizon: int, quantile: float) -> None:
        self.horizon = horizon
        self.quantile = quantile
        self.loss = np.zeros(horizon)
        self.covered = np.zeros(horizon)
        self.count = np.zeros(horizon)
        self.fit_times: list[float] = []

    def add(self, model: PeakForecaster, series: Series, origins: IntArray) -> None:
        known = series.head(int(origins.max()) + 1)
        # The first per-step forecast after a refit fits the per-step part: time it alone.
        began = time.perf_counter()
        model.predict_steps(known, origins[:1], horizon=self.horizon, quantiles=[self.quantile])
        self.fit_times.append(time.perf_counter() - began)
        predicted = model.predict_steps(
            known, origins, horizon=self.horizon, quantiles=[self.quantile]
        )[:, :, 0]
        actual = step_targets(series.values, origins, self.horizon)
        ok = ~np.isnan(actual) & ~np.isnan(predicted)
        diff = np.where(ok, actual - predicted, 0.0)
        loss = np.maximum(self.quantile * diff, (self.quantile - 1.0) * diff)
        self.loss += loss.sum(axis=0)
        self.covered += (ok & (actual <= predicted)).sum(axis=0)
        self.count += ok.sum(axis=0)

    def score(self, model: PeakForecaster, series: Series) -> StepScore:
        predict_times = []
        for _ in range(5):
            began = time.perf_counter()
            model.predict_steps(
                series, np.array([len(series) - 1]), horizon=self.horizon, quantiles=[self.quantile]
            )
            predict_times.append(time.perf_counter() - began)
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(self.count > 0, self.loss / self.count, np.nan)
            cover = np.where(self.count > 0, self.covered / self.count, np.nan)
        return StepScore(
            horizon=self.horizon,
            pinball_loss=loss,
            coverage=cover,
            fit_seconds=float(np.mean(self.fit_times)),
            predict_seconds=float(np.min(predict_times)),
        )


def format_table(scores: Sequence[ModelScore], quantile: float, unit: str) -> str:
    header = (
        f"{'model':<26} {'pinball':>9} {'vs naive':>9} {'cover q' + format(quantile, 'g'):>10} "
        f"{'MAE p50':>9} {'fit s':>7} {'pred ms':>8}"
    )
    naive = next((s for s in scores if s.name == "seasonal-naive-day"), None)
    lines = [header, "-" * len(header)]
    for s in scores:
        versus = (
            f"{100 * (s.pinball_loss / naive.pinball_loss - 1):+8.0f}%"
            if naive and naive.pinball_loss > 0
            else f"{'':>9}"
        )
        lines.append(
            f"{s.name:<26} {s.pinball_loss:>9.2f} {versus} {100 * s.coverage:>9.1f}% "
            f"{s.mae_median:>9.2f} {s.fit_seconds:>7.3f} {1000 * s.predict_seconds:>8.1f}"
        )
    lines.append(f"(pinball loss and MAE in {unit}; fit = mean of the daily refits)")
    return "\n".join(lines)


STEPS_SHOWN = (1, 10, 30, 60)
"""Steps of the horizon the per-step table shows one by one (those within the horizon)."""


def format_steps_table(scores: Sequence[ModelScore], quantile: float, unit: str) -> str:
    """Per-step loss and coverage: the mean over the horizon and at a few steps."""
    with_steps = [s for s in scores if s.steps is not None]
    if not with_steps:
        return ""
    horizon = max(s.steps.horizon for s in with_steps if s.steps is not None)
    shown = [h for h in STEPS_SHOWN if h <= horizon]
    at = "".join(f" {'@' + str(h):>7}" for h in shown)
    header = (
        f"{'model':<26} {'loss avg':>8}{at} {'cover avg':>9}{at.replace('  @', ' c@')} "
        f"{'fit s':>7} {'pred ms':>8}"
    )
    lines = [
        f"Per-step forecasts over a {horizon}-step horizon, q={quantile:g}: pinball loss and "
        "coverage averaged over the steps and at steps " + ", ".join(map(str, shown)),
        header,
        "-" * len(header),
    ]
    for s in with_steps:
        st = s.steps
        assert st is not None
        losses = "".join(f" {st.pinball_loss[h - 1]:>7.2f}" for h in shown)
        covers = "".join(f" {100 * st.coverage[h - 1]:>6.1f}%" for h in shown)
        lines.append(
            f"{s.name:<26} {st.mean_loss:>8.2f}{losses} {100 * st.mean_coverage:>8.1f}%{covers} "
            f"{st.fit_seconds:>7.3f} {1000 * st.predict_seconds:>8.1f}"
        )
    lines.append(
        f"(loss in {unit}; fit = mean time of the first per-step forecast after a refit, "
        "when the per-step part is fitted; pred = the whole horizon for one origin)"
    )
    return "\n".join(lines)


def plot_day(
    path: str | Path,
    series: Series,
    scores: Sequence[ModelScore],
    *,
    day: int,
    lead: int,
    width: int,
    quantile: float,
) -> Path:
    """Forecast band (median to quantile) vs the actual window peak over one day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_per_day = round(86_400 / series.step_seconds)
    lo, hi = day * steps_per_day, min(len(series), (day + 1) * steps_per_day)
    if lo >= hi:
        raise ValueError(f"day {day} is not in the trace")
    actual = window_peak_targets(series.values, lead, width)
    hours = (np.arange(lo, hi) - lo) * series.step_seconds / 3600
    shown = [s for s in scores if s.name in ("auto (selected)", "seasonal-naive-day")] or list(
        scores[:1]
    )
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 3.2 * len(shown)), sharex=True)
    for ax, s in zip(np.atleast_1d(axes), shown, strict=True):
        ax.fill_between(
            hours,
            s.median[lo:hi],
            s.forecast[lo:hi],
            color="#4c72b0",
            alpha=0.3,
            label=f"forecast p50–p{round(100 * quantile)}",
        )
        ax.plot(hours, actual[lo:hi], color="black", lw=0.8, label="actual window peak")
        ax.plot(hours, series.values[lo:hi], color="grey", lw=0.5, alpha=0.6, label="demand")
        ax.set_title(f"{s.name}: day {day}, lead {lead} steps, window {width} steps")
        ax.set_ylabel("demand / s")
        ax.legend(loc="upper left", fontsize=8)
    np.atleast_1d(axes)[-1].set_xlabel("hour of day (origin)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

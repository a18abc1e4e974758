"""Rolling-origin evaluation of the forecasters on a trace (what ``forecast-eval`` runs).

The evaluation replays a trace the way the operator would see it: from ``first_day`` on, each
model is refitted once a day on everything before that day (expanding window, time order) and
forecasts every minute of the day, each origin seeing only data up to itself. Scores are
measured over all those origins, against the actual window peaks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peakwise.forecasting.base import PeakForecaster, pinball_loss
from peakwise.forecasting.calibration import coverage
from peakwise.forecasting.select import CANDIDATES, AutoForecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.windows import window_peak_targets

Factory = Callable[[int, int, float], PeakForecaster]


def default_models() -> dict[str, Factory]:
    """Every candidate on its own, the selecting AutoForecaster, and the older baseline."""
    from peakwise.forecasting.seasonal import SeasonalPeakForecaster

    models: dict[str, Factory] = dict(CANDIDATES)
    models["seasonal-peak (baseline)"] = lambda lead, width, q: SeasonalPeakForecaster(
        lead=lead, width=width
    )
    models["auto (selected)"] = lambda lead, width, q: AutoForecaster(
        lead=lead, width=width, quantile=q
    )
    return models


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


def evaluate(
    series: Series,
    models: dict[str, Factory],
    *,
    lead: int,
    width: int,
    quantile: float,
    first_origin: int,
    refit_every: int,
    progress: Callable[[str], None] | None = None,
) -> list[ModelScore]:
    """Rolling-origin scores of each model over origins ``first_origin`` onwards."""
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
        model: PeakForecaster | None = None
        for start in range(first_origin, last_origin, refit_every):
            stop = min(last_origin, start + refit_every)
            began = time.perf_counter()
            model = factory(lead, width, quantile).fit(series.head(start))
            fit_times.append(time.perf_counter() - began)
            chosen.append(model.info_.model)
            origins = np.arange(start, stop, dtype=np.int64)
            out = model.predict_peak(
                series.head(stop), origins, lead=lead, width=width, quantiles=[0.5, quantile]
            )
            median[start:stop], forecast[start:stop] = out[:, 0], out[:, 1]
        assert model is not None
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
            )
        )
        if progress:
            progress(name)
    return scored


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

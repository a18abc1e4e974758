"""Tables and a plot of forecaster scores (``peakwise forecast-eval`` and the benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from peakwise.backtest.forecast_scores import ModelScore
from peakwise.forecasting.series import Series
from peakwise.forecasting.windows import window_peak_targets
from peakwise.reports.tables import new_table, render


def format_table(scores: Sequence[ModelScore], quantile: float, unit: str) -> str:
    """Window-peak scores: pinball loss, change against seasonal-naive, coverage, MAE of the
    median forecast, mean refit and one-origin predict times."""
    table = new_table(
        ("model", "pinball", "vs naive", f"cover q{quantile:g}", "MAE p50", "fit s", "pred ms")
    )
    naive = next((s for s in scores if s.name == "seasonal-naive-day"), None)
    for s in scores:
        versus = (
            f"{100 * (s.pinball_loss / naive.pinball_loss - 1):+.0f}%"
            if naive and naive.pinball_loss > 0
            else ""
        )
        table.add_row(
            s.name,
            f"{s.pinball_loss:.2f}",
            versus,
            f"{100 * s.coverage:.1f}%",
            f"{s.mae_median:.2f}",
            f"{s.fit_seconds:.3f}",
            f"{1000 * s.predict_seconds:.1f}",
        )
    return render(table) + f"\n(pinball loss and MAE in {unit}; fit = mean of the daily refits)"


STEPS_SHOWN = (1, 10, 30, 60)
"""Steps of the horizon the per-step table shows one by one (those within the horizon)."""


def format_steps_table(scores: Sequence[ModelScore], quantile: float, unit: str) -> str:
    """Per-step loss and coverage: the mean over the horizon and at a few steps."""
    with_steps = [s for s in scores if s.steps is not None]
    if not with_steps:
        return ""
    horizon = max(s.steps.horizon for s in with_steps if s.steps is not None)
    shown = [h for h in STEPS_SHOWN if h <= horizon]
    table = new_table(
        (
            "model",
            "loss avg",
            *(f"@{h}" for h in shown),
            "cover avg",
            *(f"c@{h}" for h in shown),
            "fit s",
            "pred ms",
        )
    )
    for s in with_steps:
        st = s.steps
        assert st is not None
        table.add_row(
            s.name,
            f"{st.mean_loss:.2f}",
            *(f"{st.pinball_loss[h - 1]:.2f}" for h in shown),
            f"{100 * st.mean_coverage:.1f}%",
            *(f"{100 * st.coverage[h - 1]:.1f}%" for h in shown),
            f"{st.fit_seconds:.3f}",
            f"{1000 * st.predict_seconds:.1f}",
        )
    head = (
        f"Per-step forecasts over a {horizon}-step horizon, q={quantile:g}: pinball loss and "
        "coverage averaged over the steps and at steps " + ", ".join(map(str, shown))
    )
    foot = (
        f"(loss in {unit}; fit = mean time of the first per-step forecast after a refit, "
        "when the per-step part is fitted; pred = the whole horizon for one origin)"
    )
    return f"{head}\n{render(table)}\n{foot}"


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

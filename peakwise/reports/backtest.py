"""What a backtest shows: the table, the per-minute CSVs and the plot (``peakwise backtest``)."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import numpy as np

from peakwise.backtest.run import BacktestResult, PolicyRun
from peakwise.reports.tables import new_table, render

CSV_COLUMNS = (
    "timestamp",
    "demand",
    "forecast",
    "capacity",
    "replicas_reserved",
    "replicas_spot",
    "replicas_on_demand",
    "cost_usd",
)


def table(result: BacktestResult, unit: str = "units/s") -> str:
    """The policies side by side: cost, cost against the oracle, shortfall, unserved demand."""
    rows = new_table(("policy", "cost", "× oracle", "under-prov.", "unserved", "actions", "notes"))
    for s in result.summaries:
        rows.add_row(
            s.name,
            f"${s.cost:,.0f}",
            f"{s.cost_vs_oracle:.2f}",
            f"{s.under_provisioned:.2%}",
            f"{s.unserved:.3%}",
            f"{s.actions}",
            s.note,
        )
    measured = len(result.runs[0].demand) - result.warmup_minutes
    target = (
        f"; shortfall target {result.target:.2%} of minutes"
        if result.target is not None
        else "; fixed forecast.quantile"
    )
    head = (
        f"Measured {measured:,} minutes after a {result.warmup_minutes:,}-minute warm-up; "
        f"demand in {unit}; lead time {result.lead_minutes} min{target}."
    )
    return head + "\n" + render(rows)


def calibration_summary(result: BacktestResult) -> str:
    """How Peakwise met its target: the margin it ended on, when forecasts took over."""
    if not result.calibrations:
        return ""
    peakwise = result.summary("peakwise")
    first, last = result.calibrations[0][1], result.calibrations[-1][1]
    goal = (
        f"target {first.target:.2%} of minutes short"
        if result.target is not None
        else "fixed forecast.quantile (no target)"
    )
    handover = next((t for t, c in result.calibrations if c.mode == "forecast"), None)
    if result.target is None:
        how = "forecasts at that quantile throughout"
    elif handover is None:
        how = "the reactive rule throughout (forecasts never proved cheaper)"
    elif handover == 0:
        how = "forecasts throughout"
    else:
        how = f"the reactive rule until minute {handover:,}, then forecasts"
    line = (
        f"Peakwise: {goal}, {peakwise.under_provisioned:.2%} achieved; {how}; "
        f"{len(result.calibrations)} fits; margin at the end: {last.margin}"
    )
    return line + (f" ({last.note})." if last.note.startswith("too little") else ".")


def write_csvs(result: BacktestResult, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for run in result.runs:
        path = out / f"{run.name}.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for t in range(len(run.demand)):
                stamp = result.start + timedelta(minutes=t)
                writer.writerow(
                    (
                        stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        _num(run.demand[t]),
                        _num(run.forecast[t]),
                        _num(run.capacity[t]),
                        int(run.replicas["reserved"][t]),
                        int(run.replicas["spot"][t]),
                        int(run.replicas["onDemand"][t]),
                        f"{run.cost[t]:.4f}",
                    )
                )
        paths.append(path)
    return paths


def _num(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.3f}"


def _busiest_day(run: PolicyRun, warmup: int) -> tuple[int, int]:
    day = 1440
    n = len(run.demand)
    if n <= day:
        return 0, n
    sums = [
        np.nansum(run.demand[s : s + day]) for s in range(warmup - warmup % day, n - day + 1, day)
    ]
    first = warmup - warmup % day + day * int(np.argmax(sums))
    return first, min(n, first + day)


def plot(result: BacktestResult, path: str | Path, unit: str = "units/s") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {r.name: r for r in result.runs}
    pw = runs["peakwise"]
    minutes = np.arange(len(pw.demand))
    hours = minutes / 60.0
    fig, axes = plt.subplots(3, 1, figsize=(13, 11), gridspec_kw={"height_ratios": [2, 2, 1.4]})
    lo, hi = _busiest_day(pw, result.warmup_minutes)

    for ax, (a, b), title in (
        (axes[0], (0, len(minutes)), "Whole trace"),
        (axes[1], (lo, hi), f"Busiest day (hours {lo // 60}–{hi // 60})"),
    ):
        x = hours[a:b]
        per_replica = pw.capacity[a:b] / np.maximum(
            pw.replicas["reserved"][a:b] + pw.replicas["spot"][a:b] + pw.replicas["onDemand"][a:b],
            1,
        )
        stack = [pw.replicas[t][a:b] * per_replica for t in ("reserved", "spot", "onDemand")]
        ax.stackplot(
            x,
            *stack,
            labels=["Peakwise capacity: reserved", "spot", "on-demand"],
            colors=["#4c72b0", "#55a868", "#dd8452"],
            alpha=0.45,
            step="post",
        )
        ax.plot(
            x,
            runs["reactive-tuned"].capacity[a:b],
            color="#8172b2",
            lw=0.9,
            ls="--",
            label="reactive-tuned capacity",
            drawstyle="steps-post",
        )
        ax.plot(x, pw.demand[a:b], color="black", lw=0.8, label="demand")
        ax.plot(x, pw.forecast[a:b], color="#c44e52", lw=0.8, alpha=0.8, label="forecast peak")
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xlabel("hours from start")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, ncol=3)

    colors = {
        "static-peak": "#937860",
        "reactive": "#8c8c8c",
        "reactive-tuned": "#8172b2",
        "hpa-70%": "#64b5cd",
        "reactive-tiered-tuned": "#da8bc3",
        "peakwise": "#c44e52",
        "oracle": "#4c72b0",
    }
    for run in result.runs:
        axes[2].plot(hours, np.cumsum(run.cost), label=run.name, color=colors.get(run.name), lw=1.2)
    axes[2].set_title("Cumulative cost")
    axes[2].set_ylabel("USD")
    axes[2].set_xlabel("hours from start")
    axes[2].legend(fontsize=8, ncol=5)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

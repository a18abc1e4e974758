"""``peakwise forecast-eval``: score the forecasters on a trace (see ``forecast_scores.py``).

Only the standard library is imported here, so registering the subcommand costs the
``peakwise`` CLI nothing; numpy and scikit-learn load when the command runs.
"""

from __future__ import annotations

import argparse
import sys

MODEL_NAMES = (
    "seasonal-naive-day",
    "seasonal-naive-week",
    "recent-peak",
    "exp-smoothing",
    "quantile-gbm",
    "nowcast",
    "seasonal-rise",
    "seasonal-peak (baseline)",
    "auto (selected)",
)
"""What ``--models`` accepts: the keys of ``scoring.default_models()``."""


def add_forecast_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``peakwise forecast-eval`` on the CLI's subparsers."""
    p = sub.add_parser(
        "forecast-eval",
        help="score the demand forecasters on a trace (rolling origin)",
        description="Rolling-origin evaluation on a per-minute trace: each model is refitted "
        "daily on the history before the day and forecasts every minute of it. Prints, per "
        "model, the pinball loss and coverage of the quantile forecast of the window peak, "
        "the MAE of the median forecast, and fit and predict times; then the same origins' "
        "per-step forecasts (the demand at each step of --step-horizon): pinball loss and "
        "coverage averaged over the steps and at steps 1, 10, 30 and 60.",
    )
    p.add_argument("--trace", required=True, help="CSV: timestamp,requests,input_tokens,...")
    p.add_argument("--horizon", default="30m", help="width of the peak window (default 30m)")
    p.add_argument("--lead", default="10m", help="time from origin to window (default 10m)")
    p.add_argument("--quantile", type=float, default=0.95, help="quantile (default 0.95)")
    p.add_argument(
        "--step-horizon",
        default="60m",
        help="horizon of the per-step forecasts scored (default 60m; 0m: skip them)",
    )
    p.add_argument(
        "--column",
        default="requests",
        choices=["requests", "input_tokens", "output_tokens", "tokens"],
        help="which trace column is the demand (default requests; read as a rate per second)",
    )
    p.add_argument(
        "--zero-gap-minutes",
        type=int,
        default=10,
        help="runs of at least this many zero minutes are missing data (default 10; 0: never)",
    )
    p.add_argument(
        "--start-day",
        type=int,
        default=7,
        help="first evaluated day; earlier days are history only (default 7)",
    )
    p.add_argument(
        "--models",
        help="comma-separated subset of: " + ", ".join(MODEL_NAMES),
    )
    p.add_argument("--plot", help="PNG file: forecast band vs actual for one day")
    p.add_argument("--day", type=int, help="day to plot (default: the last full day)")
    p.set_defaults(run=run_forecast_eval)


def run_forecast_eval(args: argparse.Namespace) -> int:
    from peakwise.api.common import parse_duration
    from peakwise.backtest.forecast_scores import default_models, evaluate
    from peakwise.reports.forecasts import format_steps_table, format_table, plot_day
    from peakwise.trace import TraceError, read_trace

    try:
        trace = read_trace(
            args.trace, args.column, zero_is_gap_min_run=args.zero_gap_minutes or None
        )
        step = trace.series.step_seconds
        lead = round(parse_duration(args.lead).total_seconds() / step)
        width = max(1, round(parse_duration(args.horizon).total_seconds() / step))
        step_horizon = round(parse_duration(args.step_horizon).total_seconds() / step)
        if not 0.0 < args.quantile < 1.0:
            raise ValueError(f"--quantile must be in (0, 1), got {args.quantile}")
        models = default_models()
        if args.models:
            wanted = [m.strip() for m in args.models.split(",")]
            unknown = [m for m in wanted if m not in models]
            if unknown:
                raise ValueError(f"unknown models {unknown}; choose from {list(models)}")
            models = {m: models[m] for m in wanted}
        series = trace.series
        steps_per_day = round(86_400 / step)
        first = args.start_day * steps_per_day
        scores = evaluate(
            series,
            models,
            lead=lead,
            width=width,
            quantile=args.quantile,
            first_origin=first,
            refit_every=steps_per_day,
            horizon=step_horizon or None,
            progress=lambda name: print(f"  scored {name}", file=sys.stderr),
        )
    except (TraceError, ValueError) as err:
        print(f"peakwise forecast-eval: {err}", file=sys.stderr)
        return 2
    days = (len(series) - first) / steps_per_day
    print(
        f"{trace.source}: {len(series)} steps, {trace.gap_minutes} gap minutes; "
        f"evaluated {days:.1f} days from day {args.start_day}, refit daily; "
        f"lead {lead}, window {width} steps, q={args.quantile:g}"
    )
    print(format_table(scores, args.quantile, trace.unit))
    if step_horizon:
        print()
        print(format_steps_table(scores, args.quantile, trace.unit))
    auto = next((s for s in scores if s.name == "auto (selected)"), None)
    if auto:
        print("auto chose, per day: " + "; ".join(auto.models_chosen))
    if args.plot:
        day = args.day if args.day is not None else len(series) // steps_per_day - 1
        out = plot_day(
            args.plot, series, scores, day=day, lead=lead, width=width, quantile=args.quantile
        )
        print(f"plot: {out}")
    return 0

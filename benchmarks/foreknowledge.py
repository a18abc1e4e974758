"""How much a forecast could still save: policies told the future, against the oracle.

    python benchmarks/foreknowledge.py [--only NAME,...]

For every trace of `benchmarks/all_traces.py` with a week or more (on-demand config, 20
replicas at the peak, 10-minute lead), it replays through the planner's hold rule
(``shortfall.held_capacity``) forecasts that know what is coming:

* the demand of the minute itself, one lead time ahead (a perfect forecast: what is left is
  whole replicas and the hold rule);
* the mean of the 15 or 61 minutes around that minute (a forecast that knows the level, not
  the minute's noise), times the least ratio margin whose replay is within the 0.5% target;

and prints each one's mean capacity over the oracle's, beside Peakwise's and the
hindsight-tuned reactive policy's cost over the oracle. Then the minutes Peakwise was short,
in runs (a run: short minutes at most 3 apart), and how many of them fall in runs of 8 minutes
or more, the length of a jump that capacity a lead time away cannot meet.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

import all_traces
import numpy as np
from scipy.ndimage import uniform_filter1d

from peakwise.backtest.config import load_config, with_replicas_at_peak
from peakwise.forecasting.series import FloatArray
from peakwise.forecasting.shortfall import BoolArray, HoldRule, held_capacity
from peakwise.forecasting.target import hold_rule
from peakwise.forecasting.windows import window_peak_targets
from peakwise.reports.tables import new_table, render

TARGET = 0.005
MARGINS = np.linspace(1.0, 2.0, 201)
LONG_RUN = 8


def short_runs(short: BoolArray) -> list[int]:
    """Lengths of the runs of short minutes (indices at most 3 apart belong to one run)."""
    at = np.flatnonzero(short)
    if at.size == 0:
        return []
    return [len(run) for run in np.split(at, np.flatnonzero(np.diff(at) > 3) + 1)]


def over_oracle(
    forecasts: FloatArray, demand: FloatArray, measured: BoolArray, rule: HoldRule, oracle: float
) -> float:
    """Mean capacity the forecasts hold over the oracle's, at the least ratio margin whose
    replay is within the target."""
    capacity = held_capacity(forecasts[:, None] * MARGINS[None, :], rule)
    short = (demand[measured, None] > capacity[measured] + 1e-9).mean(axis=0)
    within = np.flatnonzero(short <= TARGET)
    k = int(within[0]) if within.size else len(MARGINS) - 1
    return float(capacity[measured, k].mean()) / oracle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated trace names")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    table = new_table(
        (
            "trace",
            "perfect",
            "15-min mean",
            "61-min mean",
            "peakwise",
            "reactive-tuned",
            "peakwise short",
            "in runs ≥ 8 min",
        )
    )
    for case in all_traces.cases(only):
        if len(case.series) < 7 * all_traces.DAY or case.tiered:
            continue
        result, _, _ = all_traces.run(case, TARGET)
        runs = {r.name: r for r in result.runs}
        config = all_traces.with_target(load_config(case.config), TARGET)
        config = with_replicas_at_peak(config, case.series, case.replicas_at_peak)
        lead = timedelta(minutes=result.lead_minutes)
        rule = hold_rule(config.deployment.spec, lead, timedelta(minutes=1))
        demand = case.series.values
        known = np.nan_to_num(demand, nan=float(np.nanmean(demand)))
        measured = np.arange(len(demand)) >= result.warmup_minutes
        measured &= ~np.isnan(demand)
        oracle = float(runs["oracle"].capacity[measured].mean())

        ahead = np.minimum(np.arange(len(demand)) + rule.lead + 1, len(demand) - 1)
        perfect = held_capacity(window_peak_targets(known, rule.lead, 1)[:, None], rule)[:, 0]
        means = [uniform_filter1d(known, width, mode="nearest")[ahead] for width in (15, 61)]
        peakwise = runs["peakwise"]
        lengths = short_runs((demand > peakwise.capacity + 1e-9) & measured)
        table.add_row(
            case.name,
            f"{float(perfect[measured].mean()) / oracle:.3f}",
            *(f"{over_oracle(m, demand, measured, rule, oracle):.3f}" for m in means),
            f"{result.summary('peakwise').cost_vs_oracle:.3f}",
            f"{result.summary('reactive-tuned').cost_vs_oracle:.3f}",
            f"{sum(lengths)} min in {len(lengths)} runs",
            f"{sum(n for n in lengths if n >= LONG_RUN)} min",
        )
        print(f"  {case.name}: done", file=sys.stderr, flush=True)
    print("Over the oracle: capacity (policies told the future), cost (Peakwise, reactive-tuned)")
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much a forecast could still save: policies told the future, against the oracle.

    python benchmarks/foreknowledge.py [--only NAME,...]

For every trace of `benchmarks/all_traces.py` with a week or more (on-demand config, 20
replicas at the peak, 10-minute lead), it replays through the planner's hold rule
(``shortfall.held_capacity``) forecasts that know what is coming:

* the demand of the minute itself, one lead time ahead (a perfect forecast: what is left is
  whole replicas and the hold rule);
* the mean of the 15 or 61 minutes around that minute (a forecast that knows the level, not
  the minute's noise), times the least ratio margin whose replay is short no more often than
  Peakwise was (the shortfall the reactive policy is tuned to);
* for the synthetic families, what a forecaster that knew the generator's state would expect
  (``peakwise.trace.family_level``): the cycle one lead time ahead (each day's drift, trend and
  step included), the slow wobble as it is now decayed over the lead time, the bursts as they
  are now; times the least ratio margin, the same way. Causal but for the cycle, which it
  is told: about the best a forecast of these traces could do, not a proof of it;

and prints each one's mean ready capacity over the oracle's, beside Peakwise's and the
hindsight-tuned reactive policy's (as the backtest replayed them; their cost over the oracle's
is a little higher, a node being paid for while it boots). Then the minutes Peakwise was short,
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
from peakwise.trace import (
    FAMILY_PEAKS,
    TRACE_FAMILIES,
    WOBBLE_PERSISTENCE,
    WOBBLE_STEP,
    family_level,
)

TARGET = 0.005
MARGINS = np.linspace(1.0, 2.0, 201)
LONG_RUN = 8
POLICIES = ("peakwise", "reactive-tuned")


def short_runs(short: BoolArray) -> list[int]:
    """Lengths of the runs of short minutes (indices at most 3 apart belong to one run)."""
    at = np.flatnonzero(short)
    if at.size == 0:
        return []
    return [len(run) for run in np.split(at, np.flatnonzero(np.diff(at) > 3) + 1)]


def process_forecast(name: str, lead: int) -> FloatArray | None:
    """Demand (units/s) `lead` minutes after each origin as the generator's state expects it,
    for a synthetic family of the default seed and length (None for other traces)."""
    if name not in TRACE_FAMILIES:
        return None
    level = family_level(name)
    n = level.level.shape[0]
    ahead = np.minimum(np.arange(n) + lead, n - 1)
    decay = WOBBLE_PERSISTENCE**lead
    # The wobble's variance over the lead time: the mean of its exp is exp(variance / 2).
    variance = WOBBLE_STEP**2 * (1 - decay**2) / (1 - WOBBLE_PERSISTENCE**2)
    relative = level.offset + level.cycle[ahead] * np.exp(decay * level.wobble + variance / 2)
    out: FloatArray = FAMILY_PEAKS[name] / 60.0 * (relative + level.bursts)
    return out


def least_margin_capacity(
    forecasts: FloatArray, demand: FloatArray, measured: BoolArray, rule: HoldRule, shortfall: float
) -> FloatArray:
    """The capacity the forecasts hold at the least ratio margin whose replay is short no more
    often than `shortfall`."""
    capacity = held_capacity(forecasts[:, None] * MARGINS[None, :], rule)
    short = (demand[measured, None] > capacity[measured] + 1e-9).mean(axis=0)
    within = np.flatnonzero(short <= shortfall + 1e-12)
    k = int(within[0]) if within.size else len(MARGINS) - 1
    out: FloatArray = capacity[:, k]
    return out


def by_hour(
    name: str, start_hour: int, measured: BoolArray, demand: FloatArray, held: dict[str, FloatArray]
) -> str:
    """Per UTC hour: each policy's capacity above the oracle's (% of the oracle's total over
    the measured minutes) and its short minutes."""
    oracle = held["oracle"]
    total = float(oracle[measured].sum())
    hours = (start_hour + np.arange(demand.shape[0]) // 60) % 24
    policies = [p for p in held if p != "oracle"]
    table = new_table(("hour", *(f"{p} +%" for p in policies), *(f"{p} short" for p in policies)))
    for hour in range(24):
        rows = measured & (hours == hour)
        table.add_row(
            f"{hour:02d}",
            *(f"{100 * float((held[p][rows] - oracle[rows]).sum()) / total:.2f}" for p in policies),
            *(str(int((demand[rows] > held[p][rows] + 1e-9).sum())) for p in policies),
        )
    return f"{name}: capacity above the oracle's by hour of day (UTC)\n{render(table)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated trace names")
    parser.add_argument(
        "--by-hour", action="store_true", help="also each trace's excess capacity by hour of day"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    held_columns = ("perfect", "15-min mean", "61-min mean", "knows the process", *POLICIES)
    table = new_table(("trace", *held_columns, "peakwise short", "in runs ≥ 8 min"))
    hourly: list[str] = []
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
        # At Peakwise's shortfall, as the tuned reactive policy is.
        shortfall = result.summary("peakwise").under_provisioned

        ahead = np.minimum(np.arange(len(demand)) + rule.lead + 1, len(demand) - 1)
        perfect = held_capacity(window_peak_targets(known, rule.lead, 1)[:, None], rule)[:, 0]
        told = {
            f"{width}-min mean": least_margin_capacity(
                uniform_filter1d(known, width, mode="nearest")[ahead],
                demand,
                measured,
                rule,
                shortfall,
            )
            for width in (15, 61)
        }
        expected = process_forecast(case.name, rule.lead + 1)
        if expected is not None:
            told["knows the process"] = least_margin_capacity(
                expected, demand, measured, rule, shortfall
            )
        held = {"perfect": perfect, **told} | {p: runs[p].capacity for p in (*POLICIES, "oracle")}
        oracle = float(held["oracle"][measured].mean())
        lengths = short_runs((demand > held["peakwise"] + 1e-9) & measured)
        table.add_row(
            case.name,
            *(
                f"{float(held[p][measured].mean()) / oracle:.3f}" if p in held else ""
                for p in held_columns
            ),
            f"{sum(lengths)} min in {len(lengths)} runs",
            f"{sum(n for n in lengths if n >= LONG_RUN)} min",
        )
        if args.by_hour:
            keep = ("knows the process", *POLICIES, "oracle")
            chosen = {p: held[p] for p in keep if p in held}
            hourly.append(by_hour(case.name, case.series.start.hour, measured, demand, chosen))
        print(f"  {case.name}: done", file=sys.stderr, flush=True)
    print("Mean ready capacity over the oracle's, measured minutes (target 0.5% short)")
    print(render(table))
    for text in hourly:
        print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

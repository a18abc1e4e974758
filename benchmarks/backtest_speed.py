"""A 14-day per-minute trace through every backtest policy: how long, and the table; and what
calibrating the margin to the shortfall target adds to one 14-day refit.

Uses the ServeGen trace from ../shared/traces when it is there (with the on-demand config,
throughput set so the peak needs 20 replicas), else a synthetic one.

    python benchmarks/backtest_speed.py [--config examples/backtest/tiered.yaml]

Prints wall and CPU time of this process: the machine is shared, wall time is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from peakwise.backtest.config import load_config, with_replicas_at_peak
from peakwise.backtest.run import BacktestOptions, run_backtest
from peakwise.forecasting.select import default_forecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.target import hold_rule, selection_quantile, service_forecaster
from peakwise.planner import PoolState
from peakwise.planner.capacity import lead_time
from peakwise.reports.backtest import calibration_summary, table
from peakwise.trace import demand_from_table, read_trace, synthesize_trace

REPO = Path(__file__).resolve().parents[1]
SERVEGEN = REPO.parent / "shared" / "traces" / "servegen_m-mid_per_minute.csv"
REPEATS = 3


def timed(work: object) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def calibration_cost(series: Series, config_path: str, replicas: int) -> None:
    """One refit on the whole trace, with and without the calibration (cold, best of 3)."""
    config = with_replicas_at_peak(load_config(config_path), series, replicas)
    spec = config.deployment.spec
    lead = lead_time(spec, [PoolState(p.metadata.name, p.spec) for p in config.pools])
    rule = hold_rule(spec, lead, timedelta(minutes=1))
    quantile = selection_quantile(spec.slo.shortfall_minutes, spec.forecast.quantile)
    plain, calibrated = [], []
    for _ in range(REPEATS):
        plain.append(timed(lambda: default_forecaster(rule.lead, 1, quantile).fit(series)))
        model = service_forecaster(spec, rule, 1, default_forecaster(rule.lead, 1, quantile))
        calibrated.append(timed(lambda fresh=model: fresh.fit(series)))
    extra_wall = [c[0] - p[0] for c, p in zip(calibrated, plain, strict=True)]
    extra_cpu = [c[1] - p[1] for c, p in zip(calibrated, plain, strict=True)]
    days = len(series) / 1440
    print(
        f"one refit on {days:.0f} days: forecaster alone {min(p[0] for p in plain):.2f} s wall "
        f"({min(p[1] for p in plain):.2f} s CPU), with the shortfall calibration "
        f"{min(c[0] for c in calibrated):.2f} s wall ({min(c[1] for c in calibrated):.2f} s CPU)"
    )
    print(
        f"calibration adds {statistics.median(extra_wall):.2f} s wall, "
        f"{statistics.median(extra_cpu):.2f} s CPU (median of {REPEATS}; target <= 0.5 s)"
        f" -> {model.info_.calibration.margin if model.info_.calibration else ''}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples/backtest/on-demand.yaml"))
    parser.add_argument("--replicas-at-peak", type=int, default=20)
    parser.add_argument("--spot-interruptions", type=float, default=0.0)
    args = parser.parse_args()

    started = time.perf_counter()
    if SERVEGEN.exists():
        trace = read_trace(SERVEGEN, implausible_zeros_as_gaps=True)
        series, label = trace.series, SERVEGEN.name
    else:
        series = demand_from_table(synthesize_trace(14, 1)).series
        label = "synthetic 14-day trace"
    read = time.perf_counter() - started
    config = with_replicas_at_peak(load_config(args.config), series, args.replicas_at_peak)
    options = BacktestOptions(spot_interruptions_per_node_hour=args.spot_interruptions)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_backtest(series, config, options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{label}: {len(series):,} minutes; config {Path(args.config).name}; "
        f"{args.replicas_at_peak} replicas at the peak"
    )
    print(table(result, "requests/s"))
    print(calibration_summary(result))
    print(
        f"read the trace in {read:.2f} s; all policies replayed in {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU (target <= 30 s)"
    )
    calibration_cost(series, args.config, args.replicas_at_peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())

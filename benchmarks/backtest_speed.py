"""A 14-day per-minute trace through every backtest policy: how long, and the table.

Uses the ServeGen trace from ../shared/traces when it is there (with the on-demand config,
throughput set so the peak needs 20 replicas), else a synthetic one.

    python benchmarks/backtest_speed.py [--config examples/backtest/tiered.yaml]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from peakwise.backtest.config import load_config, with_replicas_at_peak
from peakwise.backtest.run import BacktestOptions, run_backtest
from peakwise.reports.backtest import table
from peakwise.trace import demand_from_table, read_trace, synthesize_trace

REPO = Path(__file__).resolve().parents[1]
SERVEGEN = REPO.parent / "shared" / "traces" / "servegen_m-mid_per_minute.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "examples/backtest/on-demand.yaml"))
    parser.add_argument("--replicas-at-peak", type=int, default=20)
    parser.add_argument("--spot-interruptions", type=float, default=0.0)
    args = parser.parse_args()

    started = time.perf_counter()
    if SERVEGEN.exists():
        trace = read_trace(SERVEGEN, zero_is_gap_min_run=10)
        series, label = trace.series, SERVEGEN.name
    else:
        series = demand_from_table(synthesize_trace(14, 1)).series
        label = "synthetic 14-day trace"
    read = time.perf_counter() - started
    config = with_replicas_at_peak(load_config(args.config), series, args.replicas_at_peak)
    options = BacktestOptions(spot_interruptions_per_node_hour=args.spot_interruptions)
    started = time.perf_counter()
    result = run_backtest(series, config, options)
    elapsed = time.perf_counter() - started
    print(
        f"{label}: {len(series):,} minutes; config {Path(args.config).name}; "
        f"{args.replicas_at_peak} replicas at the peak"
    )
    print(table(result, "requests/s"))
    print(f"read the trace in {read:.2f} s; all policies replayed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

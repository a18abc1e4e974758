"""`peakwise backtest` on the servegen trace with the simple seasonal forecaster and with
AutoForecaster: does the better forecast show up in cost and shortfall?

    python benchmarks/forecasting_backtest.py [--config examples/backtest/on-demand.yaml]

Both runs use the same trace, config and options; only the Peakwise policy's forecaster
differs (the other policies do not forecast, so their rows are identical).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from peakwise.backtest.config import load_config, with_replicas_at_peak
from peakwise.backtest.run import BacktestOptions, run_backtest
from peakwise.forecasting.base import PeakForecaster
from peakwise.forecasting.seasonal import SeasonalPeakForecaster
from peakwise.forecasting.select import default_forecaster
from peakwise.reports.backtest import table
from peakwise.trace import read_trace

REPO = Path(__file__).resolve().parents[1]
SERVEGEN = REPO.parent / "shared" / "traces" / "servegen_m-mid_per_minute.csv"


def seasonal(lead: int, width: int, quantile: float) -> PeakForecaster:
    return SeasonalPeakForecaster(lead=lead, width=width)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "examples/backtest/on-demand.yaml"))
    parser.add_argument("--replicas-at-peak", type=int, default=20)
    args = parser.parse_args()
    series = read_trace(SERVEGEN, zero_is_gap_min_run=10).series
    config = with_replicas_at_peak(load_config(args.config), series, args.replicas_at_peak)
    for name, factory in (
        ("SeasonalPeakForecaster", seasonal),
        ("AutoForecaster", default_forecaster),
    ):
        started = time.perf_counter()
        result = run_backtest(series, config, BacktestOptions(), forecaster=factory)
        elapsed = time.perf_counter() - started
        print(f"\n== forecaster: {name} ({elapsed:.1f} s for all policies)")
        print(table(result, "requests/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forecast quality and cost on the servegen trace: the figures issue 3 asks for.

    python benchmarks/forecasting_servegen.py [--trace FILE] [--lead 10 --width 30 --quantile 0.95]

Prints the rolling-origin table (days 7-13, daily refit on an expanding history) for every
model, whether the targets hold, then fit time on the full 14 days, predict time for one
origin, and the memory a fitted AutoForecaster holds. Timings are wall-clock on whatever the
machine is doing; run it twice on a busy box.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from peakwise.forecasting.scoring import default_models, evaluate, format_table
from peakwise.forecasting.select import AutoForecaster
from peakwise.trace import read_trace

TRACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
TRACE = TRACES / "servegen_m-mid_per_minute.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--lead", type=int, default=10, help="steps (minutes)")
    parser.add_argument("--width", type=int, default=30, help="steps (minutes)")
    parser.add_argument("--quantile", type=float, default=0.95)
    parser.add_argument("--start-day", type=int, default=7)
    args = parser.parse_args()
    # The README: the trace's zero minutes (hour-long runs) are missing data, not idle time.
    trace = read_trace(args.trace, "requests", zero_is_gap_min_run=10)
    series = trace.series
    lead, width, q = args.lead, args.width, args.quantile
    print(f"{trace.source}: {len(series)} minutes, {trace.gap_minutes} gap minutes")

    scores = evaluate(
        series,
        default_models(),
        lead=lead,
        width=width,
        quantile=q,
        first_origin=args.start_day * 1440,
        refit_every=1440,
    )
    print(format_table(scores, q, trace.unit))
    by_name = {s.name: s for s in scores}
    auto, naive = by_name["auto (selected)"], by_name["seasonal-naive-day"]
    smoothing = by_name["exp-smoothing"]
    gain = 1 - auto.pinball_loss / naive.pinball_loss
    print("auto chose, per day: " + "; ".join(auto.models_chosen))
    print(f"target: loss ≥25% below seasonal-naive: {100 * gain:.0f}% below -> {gain >= 0.25}")
    print(
        f"target: loss below exp-smoothing: {auto.pinball_loss:.2f} vs "
        f"{smoothing.pinball_loss:.2f} -> {auto.pinball_loss < smoothing.pinball_loss}"
    )
    print(
        f"target: coverage in 92-98%: {100 * auto.coverage:.1f}% -> {0.92 <= auto.coverage <= 0.98}"
    )

    # Fit on all 14 days, best and median of three (the machine may be busy).
    fit_times = []
    for _ in range(3):
        began = time.perf_counter()
        model = AutoForecaster(lead=lead, width=width, quantile=q).fit(series)
        fit_times.append(time.perf_counter() - began)
    print(
        f"fit on {len(series)} steps: best {min(fit_times):.2f} s, "
        f"median {float(np.median(fit_times)):.2f} s  (target < 2 s) -> {model.info_.model}"
    )
    origin = np.array([len(series) - 1])
    predict_times = []
    for _ in range(20):
        began = time.perf_counter()
        model.predict_peak(series, origin, lead=lead, width=width, quantiles=[q])
        predict_times.append(time.perf_counter() - began)
    print(
        f"predict one origin from 14 days: median {1000 * float(np.median(predict_times)):.1f} ms"
        f", best {1000 * min(predict_times):.1f} ms  (target < 50 ms)"
    )

    # Memory: what a fitted service keeps, and the peak while fitting it.
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    kept = AutoForecaster(lead=lead, width=width, quantile=q).fit(series)
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pickled = len(pickle.dumps(kept))
    print(
        f"memory per fitted service: {(retained - baseline) / 2**20:.1f} MiB retained "
        f"({pickled / 2**20:.1f} MiB pickled), {(peak - baseline) / 2**20:.1f} MiB peak while "
        "fitting  (target < 150 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

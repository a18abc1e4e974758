"""The operator's commitment advice at fleet scale, in one process: memory and CPU.

    python benchmarks/advice_memory.py                  # every GPU type, concurrently
    python benchmarks/advice_memory.py --gpu-type bench-g0 --tracemalloc

The fleet of ``benchmarks/operator_scale.py`` (its 20 pools and 1,000 InferenceDeployments
over 20 distinct queries; 980 of them on five GPU types), with each query's 14 days on the
Prometheus adapter's grid from an in-process source (synthetic traces, scaled as the
operator benchmark's queries scale them). Runs ``operator.advice.compute_advice`` for each
GPU type, in threads as the operator's pool timers do, and prints the process' peak RSS
before and after, the wall and CPU time, and each type's advice. No cluster: the operator
benchmark measures the same computation inside the running operator.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import operator_scale as bench

from peakwise.forecasting.series import Series
from peakwise.operator.advice import compute_advice
from peakwise.operator.indexes import Snapshot
from peakwise.trace import synthesize_trace

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
QUERY = re.compile(r'service="(bench-\d+)"\}\) / 60 \* (\d+)')


class SyntheticHistory:
    """The benchmark's backfilled series (``synth-trace`` seeds and peaks), per query."""

    def __init__(self, series: int) -> None:
        self.start = NOW - timedelta(days=16)
        self.base = {
            f"bench-{i}": synthesize_trace(
                17, i + 1, start=self.start, peak_requests_per_minute=1500 + 700 * i
            ).requests
            for i in range(series)
        }

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        found = QUERY.search(query)
        if found is None:
            raise ValueError(f"not a benchmark query: {query}")
        values = self.base[found.group(1)] / 60 * int(found.group(2))
        at = round((start - self.start).total_seconds() / 60)
        steps = round((end - start).total_seconds() / 60) + 1
        return Series(start, step_seconds, np.array(values[at : at + steps]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--deployments", type=int, default=1000)
    p.add_argument("--gpu-type", action="append", help="only these types (default: all)")
    p.add_argument("--tracemalloc", action="store_true", help="also print traced peak memory")
    args = p.parse_args()
    shape = argparse.Namespace(
        deployments=args.deployments,
        namespaces=50,
        enforce=20,
        queries=20,
        series=4,
        history="14d",
    )
    deployments = {}
    for doc in bench.deployments(shape):
        deployments[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
    pools = {doc["metadata"]["name"]: doc for doc in bench.pools(20, 5)}
    snapshot = Snapshot(
        deployments=deployments, pools=pools, budgets={}, children={}, pool_nodes={}
    )
    types = args.gpu_type or sorted({doc["spec"]["gpuType"] for doc in pools.values()})
    source = SyntheticHistory(shape.series)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.tracemalloc:
        tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(len(types)) as pool:
        advice = list(pool.map(lambda t: compute_advice(source, t, snapshot, NOW), types))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for a in advice:
        print(f"{a.gpu_type}: {a.message}")
    print(
        f"{len(types)} GPU type(s), {args.deployments} services: {wall:.1f} s wall, "
        f"{cpu:.1f} s CPU; peak RSS {before:.0f} MiB before, {after:.0f} MiB after"
    )
    if args.tracemalloc:
        print(f"traced peak {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

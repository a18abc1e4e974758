"""What makes the fleet backtest fast changes none of its results: the CSVs written a column
at a time, and the command's timings split by stage; and its workers run one BLAS thread."""

from __future__ import annotations

import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from peakwise.backtest.fleet import (
    Fleet,
    FleetOptions,
    FleetResult,
    parse_fleet,
    run_fleet_backtest,
)
from peakwise.cli.fleet import StageClock, _executor
from peakwise.forecasting.series import Series
from peakwise.reports.backtest import CSV_COLUMNS
from peakwise.reports.fleet import write_fleet_csvs
from peakwise.trace import synthesize_family

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"
START = datetime(2024, 1, 1, tzinfo=UTC)
PEAKS = {"assistant": 3000, "assistant-70b": 400, "helpdesk": 1200, "embedder": 6000}


def _fleet() -> Fleet:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    fleet = parse_fleet(docs)
    keep = tuple(d for d in fleet.deployments if d.metadata.name in PEAKS)
    return replace(fleet, deployments=keep)


def _demand(fleet: Fleet) -> dict[tuple[str, str], Series]:
    out = {}
    for i, infd in enumerate(fleet.deployments):
        name = infd.metadata.name
        table = synthesize_family("weekly", 2, seed=i + 1, peak_requests_per_minute=PEAKS[name])
        values = (table.output_tokens if name == "assistant-70b" else table.requests) / 60.0
        values = values[: 1440 + 360].copy()
        values[700:730] = np.nan  # a gap: held demand, NaN in the CSVs
        out[(infd.metadata.namespace or "default", name)] = Series(START, 60, values)
    return out


OPTIONS = FleetOptions(warmup=timedelta(hours=6), spot_interruptions_per_node_hour=0.05)


@pytest.fixture(scope="module")
def replayed() -> tuple[Fleet, dict[tuple[str, str], Series], FleetResult]:
    fleet = _fleet()
    demand = _demand(fleet)
    return fleet, demand, run_fleet_backtest(fleet, demand, OPTIONS)


def _csv_row_by_row(result: FleetResult, out: Path) -> None:
    """The CSVs as they were written before: one row at a time, numpy scalars formatted."""
    stamps = [
        (result.start + timedelta(minutes=t)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for t in range(result.minutes)
    ]

    def num(value: float) -> str:
        return "" if np.isnan(value) else f"{value:.3f}"

    for run in result.runs:
        for (namespace, name), s in run.services.items():
            folder = out / namespace / name
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"{run.name}.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(CSV_COLUMNS)
                for t in range(result.minutes):
                    writer.writerow(
                        (
                            stamps[t],
                            num(s.demand[t]),
                            num(s.forecast[t]),
                            num(s.capacity[t]),
                            int(s.replicas["reserved"][t]),
                            int(s.replicas["spot"][t]),
                            int(s.replicas["onDemand"][t]),
                            f"{s.cost[t]:.4f}",
                        )
                    )
    totals = [run.total_cost() for run in result.runs]
    with (out / "fleet-cost.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("timestamp", *(f"{run.name}_usd" for run in result.runs)))
        for t in range(result.minutes):
            writer.writerow((stamps[t], *(f"{c[t]:.4f}" for c in totals)))


def test_the_csvs_are_the_same_bytes_as_row_by_row(replayed: Any, tmp_path: Path) -> None:
    _, _, result = replayed
    paths = write_fleet_csvs(result, tmp_path / "columns")
    _csv_row_by_row(result, tmp_path / "rows")
    assert len(paths) == len(result.runs) * len(result.services) + 1
    for path in paths:
        twin = tmp_path / "rows" / path.relative_to(tmp_path / "columns")
        assert path.read_bytes() == twin.read_bytes(), path
    # The gap is in them, as empty fields.
    text = (tmp_path / "columns" / "chat" / "assistant" / "peakwise.csv").read_text()
    assert "Z,," in text


def test_the_csvs_written_by_worker_processes_are_the_same(replayed: Any, tmp_path: Path) -> None:
    _, _, result = replayed
    inline = write_fleet_csvs(result, tmp_path / "inline")
    # As the command writes them: one job per policy on its spawned workers.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        pooled = write_fleet_csvs(result, tmp_path / "pooled", pool)
    assert [p.relative_to(tmp_path / "pooled") for p in pooled] == [
        p.relative_to(tmp_path / "inline") for p in inline
    ]
    for path in inline:
        twin = tmp_path / "pooled" / path.relative_to(tmp_path / "inline")
        assert path.read_bytes() == twin.read_bytes(), path


def test_the_commands_timings_split_the_replay_by_its_progress_stages() -> None:
    seen: list[str] = []
    clock = StageClock(lambda stage, _fraction: seen.append(stage))
    for i in range(3):
        clock.update(f"forecast {i + 1}/3 services", (i + 1) / 3)
    clock.update("replay the fleet", 0.0)
    clock.update("replay the fleet", 1.0)
    clock.update("baselines", 0.5)
    clock.update("baselines", 1.0)
    stages = clock.stages()
    assert len(seen) == 7  # every report still reaches the progress bar
    assert [name for name, _, _ in stages] == [
        "forecasts",
        "peakwise replay",
        "baselines",
        "advice",
    ]
    assert all(wall >= 0 and cpu >= 0 for _, wall, cpu in stages)


def _blas_threads(info: list[dict[str, Any]]) -> dict[str, int]:
    return {lib["filepath"]: lib["num_threads"] for lib in info if lib["user_api"] == "blas"}


def test_the_commands_workers_run_one_blas_thread_each() -> None:
    # This process (numpy and scipy loaded, no limit set) runs a thread per core.
    here = _blas_threads(threadpool_info())
    assert here
    if (multiprocessing.cpu_count() or 1) > 1:
        assert max(here.values()) > 1
    executor = _executor(2)
    assert executor is not None
    with executor:
        there = [executor.submit(threadpool_info).result() for _ in range(4)]
    for info in there:
        threads = _blas_threads(info)
        # numpy's and scipy's OpenBLAS (the forecasters and the planner use both), loaded
        # and limited before any job runs.
        assert len(threads) == len(here)
        assert set(threads.values()) == {1}

"""What makes the fleet replay fast changes none of its results: the planner's memo of
slices and options, and the CSVs written a column at a time."""

from __future__ import annotations

import csv
import importlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from peakwise.backtest.fleet import (
    Fleet,
    FleetOptions,
    FleetResult,
    FleetRun,
    parse_fleet,
    run_fleet_backtest,
)
from peakwise.cli.fleet import StageClock
from peakwise.forecasting.series import Series
from peakwise.planner import plan as planner_plan
from peakwise.reports.backtest import CSV_COLUMNS
from peakwise.reports.fleet import write_fleet_csvs
from peakwise.trace import synthesize_family

plan_module = importlib.import_module("peakwise.planner.plan")
"""The planner's module (the package exports its `plan` function under the same name)."""
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


def _same_runs(a: FleetRun, b: FleetRun) -> None:
    assert a.name == b.name
    assert (a.interruptions, a.budget_limited, a.service_notes, a.note) == (
        b.interruptions,
        b.budget_limited,
        b.service_notes,
        b.note,
    )
    np.testing.assert_array_equal(a.unattributed, b.unattributed)
    assert a.services.keys() == b.services.keys()
    for key, s in a.services.items():
        t = b.services[key]
        for field in ("demand", "forecast", "capacity", "cost", "billed"):
            np.testing.assert_array_equal(getattr(s, field), getattr(t, field), err_msg=field)
        assert (s.planned is None) == (t.planned is None)
        if s.planned is not None and t.planned is not None:
            np.testing.assert_array_equal(s.planned, t.planned)
        assert s.replicas.keys() == t.replicas.keys()
        for tier in s.replicas:
            np.testing.assert_array_equal(s.replicas[tier], t.replicas[tier])


def test_the_replay_is_the_same_without_the_planners_memo(
    replayed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, demand, fast = replayed
    made = []

    def fresh() -> Any:
        # A new, empty memo every round: every slice and option rebuilt, as before it.
        made.append(1)
        return plan_module._Memo()

    monkeypatch.setattr(plan_module, "_local_memo", fresh)
    slow = run_fleet_backtest(fleet, demand, OPTIONS)
    assert len(made) >= 2 * fast.minutes  # Peakwise and the oracle planned every minute
    assert [r.name for r in slow.runs] == [r.name for r in fast.runs]
    for a, b in zip(fast.runs, slow.runs, strict=True):
        _same_runs(a, b)
    assert slow.summaries == fast.summaries


def test_the_memo_is_used_only_for_the_objects_it_was_made_from() -> None:
    fleet = _fleet()
    from peakwise.planner import DemandForecast, DeploymentState, PlanInput, PoolState

    def request(pools: tuple[PoolState, ...], specs: list[Any]) -> PlanInput:
        states = tuple(
            DeploymentState(
                d.metadata.namespace or "default",
                d.metadata.name,
                spec,
                DemandForecast(40.0, 0.99),
            )
            for d, spec in zip(fleet.deployments, specs, strict=True)
        )
        return PlanInput(START, states, pools, ())

    pools = tuple(PoolState(p.metadata.name, p.spec) for p in fleet.pools)
    specs = [d.spec for d in fleet.deployments]
    first = planner_plan(request(pools, specs))
    # Pools with less room, and specs with a new profile, in new objects: planned afresh.
    smaller = tuple(
        PoolState(p.name, p.spec.model_copy(update={"max_nodes": 1}))
        if p.spec.capacity_type != "reserved"
        else p
        for p in pools
    )
    tight = planner_plan(request(smaller, specs))
    memo = plan_module._Memo()
    assert tight == _unmemoized(request(smaller, specs), memo)
    assert tight != first
    slower = [
        s.model_copy(
            update={
                "gpu_profiles": [
                    q.model_copy(update={"throughput_per_replica": q.throughput_per_replica / 2})
                    for q in s.gpu_profiles
                ]
            }
        )
        for s in specs
    ]
    half = planner_plan(request(pools, slower))
    assert half == _unmemoized(request(pools, slower), plan_module._Memo())
    assert half != first
    assert planner_plan(request(pools, specs)) == first


def _unmemoized(request: Any, memo: Any) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan_module, "_local_memo", lambda: memo)
        return planner_plan(request)


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

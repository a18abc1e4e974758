"""The fleet backtest: parsing a fleet, the joint replay, budgets, no lookahead, the outputs."""

from __future__ import annotations

import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from peakwise.backtest import fleet as fleet_module
from peakwise.backtest.config import ConfigError
from peakwise.backtest.fleet import (
    FLEET,
    Fleet,
    FleetOptions,
    FleetResult,
    parse_fleet,
    run_fleet_backtest,
)
from peakwise.forecasting.series import Series
from peakwise.reports.backtest import CSV_COLUMNS
from peakwise.reports.fleet import fleet_tables, token_table, write_fleet_csvs
from peakwise.reports.fleet_html import render_report
from peakwise.trace import synthesize_family

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet"
START = datetime(2024, 1, 1, tzinfo=UTC)


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_example_fleet_parses() -> None:
    fleet = parse_fleet(_documents())
    assert len(fleet.pools) == 5
    assert fleet.namespaces() == ["chat", "search", "support"]
    assert len(fleet.deployments) == 6
    assert fleet.budget("chat") is not None and fleet.budget("support") is None


def test_a_bad_object_is_an_error_in_manifests_and_left_out_from_a_cluster() -> None:
    docs = _documents()
    bad = next(d for d in docs if d["kind"] == "InferenceDeployment")
    bad = {**bad, "spec": {**bad["spec"], "replicas": {"min": 5, "max": 2}}}
    docs = [
        bad if d["kind"] == "InferenceDeployment" and d["metadata"] == bad["metadata"] else d
        for d in docs
    ]
    with pytest.raises(ConfigError, match=r"InferenceDeployment chat/assistant: .*replicas.min"):
        parse_fleet(docs, "fleet.yaml")
    fleet = parse_fleet(docs, "the cluster", strict=False)
    assert len(fleet.deployments) == 5
    assert any(s.startswith("InferenceDeployment chat/assistant:") for s in fleet.skipped)


def test_a_service_no_pool_can_run_is_named() -> None:
    docs = _documents()
    lost = next(d for d in docs if d["kind"] == "InferenceDeployment")
    docs.append(
        {
            **lost,
            "metadata": {"name": "nowhere", "namespace": "chat"},
            "spec": {
                **lost["spec"],
                "gpuProfiles": [{"gpuType": "tpu-v5", "throughputPerReplica": 1}],
            },
        }
    )
    with pytest.raises(ConfigError, match="chat/nowhere: no pool offers its GPU types"):
        parse_fleet(docs)


PEAKS = {
    "assistant": 3000,
    "assistant-70b": 400,
    "query-rewriter": 600,
    "embedder": 6000,
    "summarizer": 600,
    "helpdesk": 1200,
}


def _demand(fleet: Fleet, days: float) -> dict[tuple[str, str], Series]:
    out = {}
    for i, infd in enumerate(fleet.deployments):
        name = infd.metadata.name
        table = synthesize_family("weekly", 2, seed=i + 1, peak_requests_per_minute=PEAKS[name])
        values = (table.output_tokens if name == "assistant-70b" else table.requests) / 60.0
        out[(infd.metadata.namespace or "default", name)] = Series(
            START, 60, values[: int(days * 1440)]
        )
    return out


@pytest.fixture(scope="module")
def small() -> tuple[Fleet, dict[tuple[str, str], Series], FleetResult]:
    """Three services of the example fleet (two namespaces, shared H100 pools) over 1.5 days."""
    fleet = parse_fleet(_documents())
    keep = [
        d
        for d in fleet.deployments
        if d.metadata.name in ("assistant", "assistant-70b", "helpdesk")
    ]
    fleet = Fleet(fleet.pools, tuple(keep), fleet.budgets)
    demand = _demand(fleet, 1.5)
    options = FleetOptions(
        warmup=timedelta(hours=12),
        spot_interruptions_per_node_hour=0.02,
        reserved_prices={"3y": 42.5},
    )
    return fleet, demand, run_fleet_backtest(fleet, demand, options)


def test_every_policy_is_replayed_and_the_fleet_is_the_sum_of_its_namespaces(small: Any) -> None:
    fleet, _, result = small
    names = [r.name for r in result.runs]
    assert names == [
        "static-peak",
        "reactive",
        "reactive-tuned",
        "hpa-70%",
        "reactive-tiered-tuned",
        "peakwise",
        "oracle",
    ]
    for run in result.runs:
        fleet_cost = result.summary(FLEET, run.name).cost
        namespaces = sum(result.summary(ns, run.name).cost for ns in fleet.namespaces())
        idle = float(run.unattributed[result.warmup_minutes :].sum())
        assert fleet_cost == pytest.approx(namespaces + idle)
    oracle = result.summary(FLEET, "oracle")
    assert oracle.under_provisioned == 0.0
    peakwise = result.summary(FLEET, "peakwise")
    assert peakwise.cost < result.summary(FLEET, "static-peak").cost
    # Reserved nodes are billed to the policies that use the reserved pool, used or not.
    reserved_bill = 2 * 42.5 / 60.0
    total = result.run("peakwise").total_cost()
    assert total.min() >= reserved_bill - 1e-9


def test_peakwise_fills_the_shared_reserved_nodes_first(small: Any) -> None:
    _, _, result = small
    run = result.run("peakwise")
    reserved = sum(s.replicas["reserved"] for s in run.services.values())
    # 2 committed nodes of 8 H100s: the fleet's reserved replicas never exceed 16 GPUs' worth,
    # and they are in use most of the time.
    assert reserved.max() <= 16
    assert (reserved > 0).mean() > 0.9


def test_the_hard_budget_holds_peakwise_under_its_hourly_cap() -> None:
    fleet = parse_fleet(_documents())
    keep = [d for d in fleet.deployments if d.metadata.namespace == "chat"]
    budget = next(b for b in fleet.budgets if b.metadata.namespace == "chat")
    tight = budget.model_copy(
        update={
            "spec": budget.spec.model_copy(
                update={
                    "limits": budget.spec.limits.model_copy(
                        update={"hourly": 60.0, "monthly": None}
                    )
                }
            )
        }
    )
    fleet = Fleet(fleet.pools, tuple(keep), (tight,))
    demand = _demand(fleet, 1.2)
    result = run_fleet_backtest(fleet, demand, FleetOptions(warmup=timedelta(hours=6)))
    peakwise = result.summary("chat", "peakwise")
    static = result.summary("chat", "static-peak")
    assert static.minutes_over_cap > 0
    assert peakwise.budget_limited_minutes > 0
    # The planner keeps what it costs its plans at (replicas at their share of a node)
    # within the Hard cap every minute ...
    assert peakwise.peak_planned_hourly is not None
    assert peakwise.peak_planned_hourly <= 60.0 + 1e-6
    # ... while whole nodes are billed (planner.billing), so the bill, counted as the
    # operator accrues it, is higher where replicas leave nodes part-empty; never lower.
    assert peakwise.peak_billed_hourly >= peakwise.peak_planned_hourly - 1e-6
    assert static.peak_planned_hourly is None


def test_decisions_see_no_later_demand(small: Any) -> None:
    fleet, demand, result = small
    cut = 1200
    shorter = {k: Series(s.start, 60, s.values[:cut]) for k, s in demand.items()}
    options = FleetOptions(
        warmup=timedelta(hours=12),
        spot_interruptions_per_node_hour=0.02,
        reserved_prices={"3y": 42.5},
    )
    head = run_fleet_backtest(fleet, shorter, options)
    for key in fleet.keys:
        full, short = result.run("peakwise").services[key], head.run("peakwise").services[key]
        for tier in ("reserved", "spot", "onDemand"):
            assert (full.replicas[tier][:cut] == short.replicas[tier]).all(), (key, tier)
        assert np.allclose(full.capacity[:cut], short.capacity)


def test_a_process_pool_gives_the_same_result(small: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pool, each service's forecasts are fitted a span at a time, its model carried from
    one worker's job to the next while the replay follows: the same targets and plans as one
    pass in this process. Spans of 6 hours here, so a service's model travels several times."""
    fleet, demand, result = small
    options = FleetOptions(
        warmup=timedelta(hours=12),
        spot_interruptions_per_node_hour=0.02,
        reserved_prices={"3y": 42.5},
    )
    monkeypatch.setattr(fleet_module, "FORECAST_SPAN", 360)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = run_fleet_backtest(fleet, demand, options, executor=pool)
    assert [(s.scope, s.policy, round(s.cost, 6)) for s in pooled.summaries] == [
        (s.scope, s.policy, round(s.cost, 6)) for s in result.summaries
    ]
    for key, alone in result.run("peakwise").services.items():
        spanned = pooled.run("peakwise").services[key]
        assert np.array_equal(spanned.forecast, alone.forecast, equal_nan=True), key
        assert np.array_equal(spanned.capacity, alone.capacity), key
    assert [len(c) for c in pooled.calibrations.values()] == [
        len(c) for c in result.calibrations.values()
    ]


def test_tokens_are_priced_per_million_served(small: Any) -> None:
    _, _, result = small
    (cost,) = result.token_costs()  # assistant-70b counts its demand in tokens
    assert cost.key == ("chat", "assistant-70b")
    run = result.run("peakwise").services[cost.key]
    w = result.warmup_minutes
    asked = float(np.nansum(run.demand[w:]) * 60.0)
    assert 0.97 * asked <= cost.tokens_served <= asked
    assert cost.per_million == pytest.approx(float(run.cost[w:].sum()) / (cost.tokens_served / 1e6))
    assert "dearer to self-host" in token_table([cost], 0.01)
    assert "cheaper to self-host" in token_table([cost], 1000.0)


def test_the_outputs_tables_csvs_and_report(small: Any, tmp_path: Path) -> None:
    fleet, _, result = small
    text = fleet_tables(result)
    for ns in fleet.namespaces():
        assert f"Namespace {ns}:" in text
    assert "Fleet: 3 services" in text
    paths = write_fleet_csvs(result, tmp_path)
    assert len(paths) == 3 * len(result.runs) + 1
    with (tmp_path / "chat" / "assistant" / "peakwise.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + result.minutes
    page = render_report(result, api_price=0.6)
    assert page.count('<img class="plot"') == 1 + len(result.advice) + 3 * len(fleet.namespaces())
    assert "http://" not in page and "https://" not in page  # nothing to fetch: viewable offline

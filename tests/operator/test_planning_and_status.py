from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from test_children import DEPLOYMENTS, POOLS

from peakwise.api.costbudget import CostBudget
from peakwise.operator.forecasts import ForecastResult
from peakwise.operator.planning import (
    Observed,
    enforced_pool_nodes,
    key_of,
    plan_enforce_first,
    plan_input,
)
from peakwise.operator.status import budget_status, deployment_status, wire
from peakwise.planner import DemandForecast, Plan, plan
from peakwise.planner.budget import hours_left_in_month

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def _observed(peak: float | None) -> Observed:
    forecast = (
        ForecastResult(DemandForecast(peak, 0.95, model="m"), None, peak)
        if peak is not None
        else ForecastResult(None, None, None, "prometheus unreachable")
    )
    return Observed(
        now=NOW,
        deployments=list(DEPLOYMENTS.values()),
        pools=list(POOLS.values()),
        budgets=[],
        children={("chat", "assistant"): {"h100-reserved": 3}},
        forecasts={("chat", "assistant"): forecast},
    )


def test_plan_input_holds_what_runs_when_prometheus_is_down() -> None:
    request = plan_input(_observed(None))
    result = plan(request)
    assistant = result.deployments[("chat", "assistant")]
    # Enforce mode, no forecast: the three running replicas are held, not dropped.
    assert assistant.total == 3
    status = wire(
        deployment_status(
            DEPLOYMENTS["assistant"],
            assistant,
            None,
            _observed(None).forecasts[("chat", "assistant")],
            {"h100-reserved": 3},
            POOLS,
            NOW,
        )
    )
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Forecasting"]["status"] == "False"
    assert "prometheus unreachable" in conditions["Degraded"]["message"]
    assert conditions["Degraded"]["status"] == "True"


def test_status_reports_plan_cost_and_history() -> None:
    observed = _observed(400.0)
    result = plan(plan_input(observed))
    assistant = result.deployments[("chat", "assistant")]
    status = wire(
        deployment_status(
            DEPLOYMENTS["assistant"],
            assistant,
            result.namespaces["chat"],
            observed.forecasts[("chat", "assistant")],
            {"h100-reserved": 3},
            POOLS,
            NOW,
            lead=timedelta(minutes=7),
        )
    )
    assert status["desiredReplicas"] == assistant.total
    assert status["replicas"] == 3
    assert status["forecast"]["peak"] == 400.0
    assert status["recentTargets"][-1]["demand"] == pytest.approx(400.0)
    assert status["tiers"].startswith("reserved=")
    assert status["selector"] == "peakwise.dev/inference-deployment=assistant"
    assert status["forecast"]["leadTime"] == "7m"


def test_pool_targets_count_only_enforce_deployments() -> None:
    result = plan(plan_input(_observed(4000.0)))
    recommend_only = [
        d.model_copy(update={"spec": d.spec.model_copy(update={"mode": "Recommend"})})
        for d in DEPLOYMENTS.values()
    ]
    targets = enforced_pool_nodes(result, recommend_only, POOLS)
    # Nothing is enforced: every pool stays at its floor (minNodes, or its reserved nodes).
    for name, pool in POOLS.items():
        floor = max(pool.spec.min_nodes, pool.spec.reserved_nodes)
        assert targets[name] == floor
    enforced = enforced_pool_nodes(result, list(DEPLOYMENTS.values()), POOLS)
    assert sum(enforced.values()) > sum(targets.values())
    for name, pool in POOLS.items():
        assert enforced[name] <= pool.spec.max_nodes


def test_budget_accrues_and_rolls_over_with_the_month() -> None:
    budget = CostBudget.model_validate(
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "CostBudget",
            "metadata": {"name": "b", "namespace": "chat"},
            "spec": {"limits": {"hourly": 100, "monthly": 100000}, "alertThresholds": [0.8, 1.0]},
            "status": {
                "periodStart": "2026-03-01T00:00:00Z",
                "spend": 500.0,
                "lastAccrualTime": (NOW - timedelta(hours=2)).isoformat(),
            },
        }
    )
    status = budget_status(budget, 90.0, NOW, None)
    assert status.spend == pytest.approx(680.0)
    assert status.state == "Warning"  # 90/h is 90% of the hourly limit
    assert status.projected_spend == pytest.approx(680.0 + 90.0 * hours_left_in_month(NOW))
    april = datetime(2026, 4, 1, 0, 30, tzinfo=UTC)
    rolled = budget_status(budget, 10.0, april, None)
    assert rolled.spend == pytest.approx(5.0)  # only the 30 minutes of April count
    assert wire(rolled)["periodStart"].startswith("2026-04-01")


def test_recommendations_take_nothing_from_enforced_deployments() -> None:
    demand = 4000.0
    observed = _observed(demand)
    observed.forecasts = {
        key_of(d): ForecastResult(DemandForecast(demand, 0.95), None, demand)
        for d in DEPLOYMENTS.values()
    }
    request = plan_input(observed)
    joint = plan(request)
    first = plan_enforce_first(request)
    enforced = [d for d in DEPLOYMENTS.values() if d.spec.mode == "Enforce"]
    alone = plan(
        replace(
            request, deployments=tuple(s for s in request.deployments if s.spec.mode == "Enforce")
        )
    )
    for d in enforced:
        key = key_of(d)
        # What runs is planned as if the recommendations did not exist...
        assert dict(first.deployments[key].replicas) == dict(alone.deployments[key].replicas)
    # ...and every Recommend deployment still gets a plan to show.
    for d in DEPLOYMENTS.values():
        assert key_of(d) in first.deployments

    def reserved(p: Plan) -> int:
        return sum(p.deployments[key_of(d)].replicas_by_tier["reserved"] for d in enforced)

    # The recommendations no longer crowd the enforced ones out of the reserved nodes.
    assert reserved(first) > reserved(joint)


def test_accrual_never_moves_backwards() -> None:
    accrued = (NOW - timedelta(minutes=1)).isoformat()
    budget = CostBudget.model_validate(
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "CostBudget",
            "metadata": {"name": "b", "namespace": "chat"},
            "spec": {"limits": {"hourly": 100}},
            "status": {
                "periodStart": "2026-03-01T00:00:00Z",
                "spend": 50.0,
                "lastAccrualTime": accrued,
            },
        }
    )
    # A clock ten minutes behind the last accrual: nothing accrues, nothing moves back.
    skewed = budget_status(budget, 60.0, NOW - timedelta(minutes=11), None)
    assert skewed.spend == pytest.approx(50.0)
    assert skewed.last_accrual_time == NOW - timedelta(minutes=1)
    # The next accrual on a right clock counts the minute since the last one, once.
    after = budget.model_copy(update={"status": skewed})
    right = budget_status(after, 60.0, NOW, None)
    assert right.spend == pytest.approx(51.0)

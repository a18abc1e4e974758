"""From what the operator observed to the planner's input, and from the plan to status.

Pure: objects and counts in, PlanInput and status patches out. The handlers call these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from peakwise.api.common import Condition
from peakwise.api.costbudget import CostBudget
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import profile_for
from peakwise.operator.forecasts import ForecastResult
from peakwise.planner import (
    BudgetState,
    DeploymentPlan,
    DeploymentState,
    Plan,
    PlanInput,
    PoolState,
    plan,
)
from peakwise.planner.budget import hours_left_in_month
from peakwise.planner.capacity import nodes_needed
from peakwise.planner.types import NamespacePlan

Key = tuple[str, str]


@dataclass(frozen=True)
class PoolObservation:
    nodes: int = 0
    ready_nodes: int = 0
    allocatable_gpus: int = 0


@dataclass
class Observed:
    """Everything one planning round looks at."""

    now: datetime
    deployments: Sequence[InferenceDeployment]
    pools: Sequence[GPUNodePool]
    budgets: Sequence[CostBudget]
    children: Mapping[Key, Mapping[str, int]] = field(default_factory=dict)
    """Replicas per pool asked of each deployment's children (their spec.replicas)."""
    forecasts: Mapping[Key, ForecastResult] = field(default_factory=dict)
    pool_nodes: Mapping[str, PoolObservation] = field(default_factory=dict)
    interrupted_at: Mapping[str, datetime] = field(default_factory=dict)
    """Latest spot interruption per pool seen by this process (status keeps it across restarts)."""


def key_of(infd: InferenceDeployment) -> Key:
    return (infd.metadata.namespace or "default", infd.metadata.name)


def _current(infd: InferenceDeployment, children: Mapping[str, int]) -> dict[str, int]:
    if infd.spec.mode == "Enforce":
        return {pool: n for pool, n in children.items() if n > 0}
    # In Recommend mode nothing runs for it: "current" is the last recommendation.
    status = infd.status
    return (
        {p.pool: p.desired_replicas for p in status.pools if p.desired_replicas} if status else {}
    )


def _recovering(pool: GPUNodePool, observed: Observed) -> bool:
    """Interrupted less than a provisioning time ago: new spot nodes would come too late."""
    if pool.spec.capacity_type != "spot":
        return False
    times = [observed.interrupted_at.get(pool.metadata.name)]
    if pool.status and pool.status.last_interruption_time:
        times.append(pool.status.last_interruption_time)
    latest = max((t for t in times if t is not None), default=None)
    return latest is not None and observed.now - latest < pool.spec.provisioning_time


def plan_input(observed: Observed, solver: str = "milp") -> PlanInput:
    deployments = []
    for infd in observed.deployments:
        key = key_of(infd)
        result = observed.forecasts.get(key)
        history = tuple(
            (t.time, t.demand) for t in (infd.status.recent_targets if infd.status else [])
        )
        deployments.append(
            DeploymentState(
                namespace=key[0],
                name=key[1],
                spec=infd.spec,
                forecast=result.forecast if result else None,
                current=_current(infd, observed.children.get(key, {})),
                demand_history=history,
            )
        )
    pools = tuple(
        PoolState(
            p.metadata.name,
            p.spec,
            nodes=observed.pool_nodes.get(p.metadata.name, PoolObservation()).nodes,
            interruption_rate=p.status.interruption_rate if p.status else 0.0,
            recovering=_recovering(p, observed),
        )
        for p in observed.pools
    )
    budgets = tuple(
        BudgetState(
            b.metadata.namespace or "default",
            b.spec,
            spend=b.status.spend if b.status else 0.0,
            hours_left_in_period=hours_left_in_month(observed.now),
        )
        for b in observed.budgets
    )
    return PlanInput(observed.now, tuple(deployments), pools, budgets, solver=solver)


def condition(
    previous: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """A condition, keeping lastTransitionTime while its status does not change."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.type == type_), None)
    since = (
        old.last_transition_time
        if old and old.status == value and old.last_transition_time
        else now
    )
    return Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:1000],
        last_transition_time=since,
        observed_generation=generation,
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def deployment_status(
    infd: InferenceDeployment,
    planned: DeploymentPlan,
    namespace: NamespacePlan | None,
    result: ForecastResult | None,
    ready: Mapping[str, int],
    pools: Mapping[str, GPUNodePool],
    now: datetime,
    currency: str = "USD",
) -> dict[str, Any]:
    """The status patch of one InferenceDeployment (camelCase, no nulls)."""
    previous = infd.status.conditions if infd.status else []
    generation = infd.metadata.generation
    enforce = infd.spec.mode == "Enforce"
    pool_rows = []
    for name in sorted(set(planned.replicas) | {p for p, n in ready.items() if n}):
        pool = pools.get(name)
        if pool is None:
            continue
        pool_rows.append(
            {
                "pool": name,
                "capacityType": pool.spec.capacity_type,
                "gpuType": pool.spec.gpu_type,
                "replicas": ready.get(name, 0),
                "desiredReplicas": planned.replicas.get(name, 0),
            }
        )
    ready_total = sum(ready.values())
    forecast_ok = result is not None and result.forecast is not None
    forecast_problem = result.problem if result else "no forecast yet"
    budget_state = "Within"
    if planned.budget_limited:
        budget_state = "Limited"
    elif namespace and namespace.reasons:
        budget_state = "Warning"
    shortfall = planned.capacity + 1e-9 < planned.demand_target
    degraded_reasons = []
    if not forecast_ok:
        degraded_reasons.append(f"holding capacity: {forecast_problem}")
    if shortfall and not planned.budget_limited:
        degraded_reasons.append(
            f"planned capacity {planned.capacity:,.1f}/s is short of {planned.demand_target:,.1f}/s"
        )
    conditions = [
        condition(
            previous,
            "Ready",
            (not enforce) or ready_total >= planned.total,
            "Recommending"
            if not enforce
            else ("AllReady" if ready_total >= planned.total else "Starting"),
            (
                "Recommend mode: nothing is scaled; status shows the plan"
                if not enforce
                else f"{ready_total} of {planned.total} replicas ready"
            ),
            now,
            generation,
        ),
        forecasting_condition(previous, result, now, generation),
        condition(
            previous,
            "BudgetLimited",
            planned.budget_limited,
            "HardBudget" if planned.budget_limited else "WithinBudget",
            "; ".join(r for r in planned.reasons if "budget" in r.lower())
            or "the namespace budget does not limit this deployment",
            now,
            generation,
        ),
        condition(
            previous,
            "Degraded",
            bool(degraded_reasons),
            "Degraded" if degraded_reasons else "Healthy",
            "; ".join(degraded_reasons) or "forecasting and planning normally",
            now,
            generation,
        ),
    ]
    forecast: dict[str, Any] = {}
    if result and result.forecast:
        forecast.update(
            peak=round(result.forecast.peak, 3),
            quantile=result.forecast.quantile,
            model=result.forecast.model,
        )
        if result.forecast.peak_at:
            forecast["peakAt"] = result.forecast.peak_at.isoformat()
    if result and result.info:
        if result.info.backtest_loss is not None:
            forecast["backtestLoss"] = result.info.backtest_loss
        if result.info.coverage is not None:
            forecast["coverage"] = result.info.coverage
    tiers = planned.replicas_by_tier
    return {
        "observedGeneration": generation,
        "conditions": conditions,
        "replicas": ready_total,
        "desiredReplicas": planned.total,
        "selector": f"peakwise.dev/inference-deployment={infd.metadata.name}",
        "tiers": f"reserved={tiers['reserved']} spot={tiers['spot']} onDemand={tiers['onDemand']}",
        "pools": pool_rows,
        "forecast": forecast,
        "cost": {
            "hourly": round(planned.hourly_cost, 4),
            "reservedHourly": round(planned.reserved_hourly, 4),
            "currency": currency,
        },
        "budgetState": budget_state,
        "lastPlanTime": now.isoformat(),
        "recentTargets": [
            {"time": t.isoformat(), "demand": round(v, 6)} for t, v in planned.demand_history
        ],
    }


def forecasting_condition(
    previous: Sequence[Condition],
    result: ForecastResult | None,
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """True when the model's forecast alone sizes the service; else the reason why not."""
    if result is None or result.forecast is None:
        problem = result.problem if result else "no forecast yet"
        return condition(previous, "Forecasting", False, "NoForecast", problem, now, generation)
    if result.fallback:
        reason = "ModelPending" if result.forecast.provisional else "ReactiveFallback"
        return condition(previous, "Forecasting", False, reason, result.fallback, now, generation)
    info = result.info
    message = f"model {info.model if info else result.forecast.model}"
    if info and info.backtest_loss is not None and info.coverage is not None:
        message += (
            f", backtest coverage {info.coverage:.1%} of q={result.forecast.quantile:g}"
            f" (pinball loss {info.backtest_loss:,.4g})"
        )
    if info and info.short_history:
        message += "; short history: sized from the recent level until seasonality is learnt"
    return condition(previous, "Forecasting", True, "Forecasting", message, now, generation)


def enforced_pool_nodes(
    plan: Plan, deployments: Sequence[InferenceDeployment], pools: Mapping[str, GPUNodePool]
) -> dict[str, int]:
    """Nodes each pool needs for the replicas of Enforce-mode deployments only."""
    by_pool: dict[str, dict[int, int]] = {}
    for infd in deployments:
        if infd.spec.mode != "Enforce":
            continue
        planned = plan.deployments.get(key_of(infd))
        if planned is None:
            continue
        for pool_name, n in planned.replicas.items():
            pool = pools.get(pool_name)
            profile = profile_for(infd, pool) if pool else None
            if profile is None:
                continue
            counts = by_pool.setdefault(pool_name, {})
            counts[profile.gpus_per_replica] = counts.get(profile.gpus_per_replica, 0) + n
    out = {}
    for name, pool in pools.items():
        needed = nodes_needed(by_pool.get(name, {}), pool.spec.gpus_per_node)
        floor = pool.spec.min_nodes
        if pool.spec.capacity_type == "reserved":
            floor = max(floor, pool.spec.reserved_nodes)
        out[name] = min(max(needed, floor), pool.spec.max_nodes)
    return out


def plan_enforce_first(request: PlanInput) -> Plan:
    """Plan Enforce-mode deployments on their own, then everything for the recommendations.

    What runs is planned without the Recommend-mode deployments, so a recommendation never
    takes reserved capacity, pool room or budget from a deployment that is really scaled.
    A Recommend-mode deployment's status shows what it would get planned with all the others.
    """
    enforced = tuple(d for d in request.deployments if d.spec.mode == "Enforce")
    real = plan(replace(request, deployments=enforced))
    if len(enforced) == len(request.deployments):
        return real
    everything = plan(request)
    deployments = {**everything.deployments, **real.deployments}
    return replace(real, deployments=deployments)

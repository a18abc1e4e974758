"""The status of every kind, built from the plan as the API's pydantic status models.

Pure: objects, plans and observations in; `*Status` models out. The handlers dump them by
alias (camelCase, as the CRDs define them) and write them only when they differ from what the
object already carries (`changed_fields`), so a steady round writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from peakwise.api.common import Condition, ConditionStatus, format_duration
from peakwise.api.costbudget import CostBudget, CostBudgetStatus
from peakwise.api.gpunodepool import GPUNodePool, GPUNodePoolStatus
from peakwise.api.inferencedeployment import (
    CostStatus,
    DemandTarget,
    ForecastStatus,
    InferenceDeployment,
    InferenceDeploymentStatus,
    PoolReplicas,
    SLOStatus,
    TimeOfDayQuantile,
)
from peakwise.operator.forecasts import ForecastResult
from peakwise.planner import DeploymentPlan
from peakwise.planner.budget import hours_left_in_month, month_start
from peakwise.planner.tenancy import EffectiveBudget
from peakwise.planner.types import NamespacePlan

MESSAGE_LIMIT = 1000
"""Longest condition or Event message written (the API server's own limit is larger)."""


def condition(
    previous: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> Condition:
    """A condition, keeping lastTransitionTime while its status does not change."""
    value: ConditionStatus = "True" if status else "False"
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
        message=message[:MESSAGE_LIMIT],
        last_transition_time=since,
        observed_generation=generation,
    )


def wire(status: BaseModel) -> dict[str, Any]:
    """What is written: camelCase keys, no nulls, JSON types (as the CRD schema has them)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- InferenceDeployment ---------------------------------------------------------------------


def budget_state(planned: DeploymentPlan, namespace: NamespacePlan | None) -> str:
    if planned.budget_limited:
        return "Limited"
    return "Warning" if namespace and namespace.reasons else "Within"


def deployment_status(
    infd: InferenceDeployment,
    planned: DeploymentPlan,
    namespace: NamespacePlan | None,
    result: ForecastResult | None,
    ready: Mapping[str, int],
    pools: Mapping[str, GPUNodePool],
    now: datetime,
    currency: str = "USD",
    lead: timedelta | None = None,
    unbudgeted: str = "",
) -> InferenceDeploymentStatus:
    """The status of one InferenceDeployment after a round. `unbudgeted`: why its namespace
    has no budget in force (then an Enforce-mode service is planned but not scaled)."""
    previous = infd.status.conditions if infd.status else []
    generation = infd.metadata.generation
    enforce = infd.spec.mode == "Enforce"
    rows = [
        PoolReplicas(
            pool=name,
            capacity_type=pools[name].spec.capacity_type,
            gpu_type=pools[name].spec.gpu_type,
            replicas=ready.get(name, 0),
            desired_replicas=planned.replicas.get(name, 0),
        )
        for name in sorted(set(planned.replicas) | {p for p, n in ready.items() if n})
        if name in pools
    ]
    ready_total = sum(ready.values())
    forecast_ok = result is not None and result.forecast is not None
    forecast_problem = result.problem if result else "no forecast yet"
    shortfall = planned.capacity + 1e-9 < planned.demand_target
    degraded = []
    if not forecast_ok:
        degraded.append(f"holding capacity: {forecast_problem}")
    if shortfall and not planned.budget_limited:
        degraded.append(
            f"planned capacity {planned.capacity:,.1f}/s is short of {planned.demand_target:,.1f}/s"
        )
    all_ready = ready_total >= planned.total
    if enforce and unbudgeted:
        ready_condition = condition(
            previous, "Ready", False, "NoBudget", unbudgeted, now, generation
        )
        limited = condition(
            previous, "BudgetLimited", True, "NoBudget", unbudgeted, now, generation
        )
    else:
        ready_condition = condition(
            previous,
            "Ready",
            (not enforce) or all_ready,
            "Recommending" if not enforce else ("AllReady" if all_ready else "Starting"),
            (
                "Recommend mode: nothing is scaled; status shows the plan"
                if not enforce
                else f"{ready_total} of {planned.total} replicas ready"
            ),
            now,
            generation,
        )
        limited = condition(
            previous,
            "BudgetLimited",
            planned.budget_limited,
            "HardBudget" if planned.budget_limited else "WithinBudget",
            "; ".join(r for r in planned.reasons if "budget" in r.lower())
            or "the namespace budget does not limit this deployment",
            now,
            generation,
        )
    conditions = [
        ready_condition,
        forecasting_condition(previous, result, now, generation),
        limited,
        condition(
            previous,
            "Degraded",
            bool(degraded),
            "Degraded" if degraded else "Healthy",
            "; ".join(degraded) or "forecasting and planning normally",
            now,
            generation,
        ),
    ]
    tiers = planned.replicas_by_tier
    return InferenceDeploymentStatus(
        observed_generation=generation,
        conditions=conditions,
        replicas=ready_total,
        desired_replicas=planned.total,
        selector=f"peakwise.dev/inference-deployment={infd.metadata.name}",
        tiers=f"reserved={tiers['reserved']} spot={tiers['spot']} onDemand={tiers['onDemand']}",
        pools=rows,
        forecast=forecast_status(result, lead),
        slo=slo_status(result, infd.spec.slo.shortfall_minutes),
        cost=CostStatus(
            hourly=round(planned.hourly_cost, 4),
            reserved_hourly=round(planned.reserved_hourly, 4),
            currency=currency,
        ),
        budget_state="NoBudget" if enforce and unbudgeted else budget_state(planned, namespace),
        last_plan_time=now,
        recent_targets=[
            DemandTarget(time=t, demand=round(v, 6)) for t, v in planned.demand_history
        ],
    )


def forecast_status(result: ForecastResult | None, lead: timedelta | None) -> ForecastStatus:
    forecast = result.forecast if result else None
    info = result.info if result else None
    return ForecastStatus(
        peak=round(forecast.peak, 3) if forecast else None,
        peak_at=forecast.peak_at if forecast else None,
        quantile=forecast.quantile if forecast else None,
        model=forecast.model if forecast else "",
        backtest_loss=info.backtest_loss if info else None,
        coverage=info.coverage if info else None,
        lead_time=format_duration(lead) if lead is not None else "",
    )


def slo_status(result: ForecastResult | None, target: float) -> SLOStatus:
    """The shortfall target and how the service meets it, from its calibration."""
    calibration = result.calibration if result else None
    if calibration is None:
        return SLOStatus(shortfall_target=target)
    window = timedelta(seconds=round(calibration.achieved_seconds / 60) * 60)
    return SLOStatus(
        shortfall_target=calibration.target,
        achieved_shortfall=calibration.achieved_shortfall,
        achieved_window=format_duration(window) if calibration.achieved_seconds else "",
        margin=calibration.margin,
        mode=calibration.mode.capitalize(),
        censored_minutes=calibration.censored_minutes,
        quantiles_by_time_of_day=time_of_day_quantiles(calibration.quantiles_by_time_of_day),
    )


def time_of_day_quantiles(quantiles: Sequence[float]) -> list[TimeOfDayQuantile]:
    """One entry per equal span of the UTC day, from 00:00 (the calibration's buckets)."""
    if not quantiles:
        return []
    span = 24 * 60 // len(quantiles)
    return [
        TimeOfDayQuantile(start=f"{i * span // 60:02d}:{i * span % 60:02d}", quantile=q)
        for i, q in enumerate(quantiles)
    ]


def forecasting_condition(
    previous: Sequence[Condition],
    result: ForecastResult | None,
    now: datetime,
    generation: int | None,
) -> Condition:
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
    if result.stale:  # the old model still sizes the service, but say it is old
        return condition(previous, "Forecasting", True, "ModelStale", result.stale, now, generation)
    return condition(previous, "Forecasting", True, "Forecasting", message, now, generation)


def invalid_status(
    previous: Sequence[Condition], reason: str, message: str, now: datetime, generation: int | None
) -> InferenceDeploymentStatus:
    """What an object that cannot be planned shows: Degraded with why, nothing else changed."""
    return InferenceDeploymentStatus(
        observed_generation=generation,
        conditions=[condition(previous, "Degraded", True, reason, message, now, generation)],
    )


# --- GPUNodePool -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolObservation:
    """A pool's nodes as the watch sees them."""

    nodes: int = 0
    ready_nodes: int = 0
    allocatable_gpus: int = 0


INTERRUPTION_MEMORY = timedelta(hours=1)
"""How long an interruption weighs in a pool's smoothed interruption rate."""


def decayed_interruption_rate(
    rate: float, seen: int, nodes: int, elapsed: timedelta, memory: timedelta = INTERRUPTION_MEMORY
) -> float:
    """Interruptions per node-hour, exponentially smoothed: the old rate fades over `memory`,
    and the `seen` new interruptions count against the nodes that could have been hit."""
    fade = math.exp(-max(0.0, elapsed / memory))
    return rate * fade + seen / max(nodes + seen, 1)


@dataclass(frozen=True)
class PoolScaling:
    """What the round did to a pool's size: nothing, asked the provider, or failed."""

    desired: int
    asked: bool = False
    error: str = ""
    error_reason: str = ""


def pool_status(
    pool: GPUNodePool,
    observed: PoolObservation,
    scaling: PoolScaling,
    interruptions_seen: int,
    elapsed: timedelta,
    now: datetime,
) -> GPUNodePoolStatus:
    """The status of one pool after a round."""
    old = pool.status
    previous = old.conditions if old else []
    generation = pool.metadata.generation
    if scaling.error:
        degraded = condition(
            previous, "Degraded", True, scaling.error_reason, scaling.error, now, generation
        )
    elif scaling.asked:
        degraded = condition(
            previous,
            "Degraded",
            False,
            "Scaling",
            f"asked for {scaling.desired} nodes",
            now,
            generation,
        )
    else:
        degraded = condition(
            previous,
            "Degraded",
            False,
            "Steady",
            "the pool has what the plan needs",
            now,
            generation,
        )
    all_ready = observed.ready_nodes >= observed.nodes
    ready = condition(
        previous,
        "Ready",
        all_ready,
        "NodesReady" if all_ready else "NodesStarting",
        f"{observed.ready_nodes} of {observed.nodes} nodes ready",
        now,
        generation,
    )
    rate = decayed_interruption_rate(
        old.interruption_rate if old else 0.0, interruptions_seen, observed.nodes, elapsed
    )
    last = old.last_interruption_time if old else None
    return GPUNodePoolStatus(
        observed_generation=generation,
        conditions=[degraded, ready],
        nodes=observed.nodes,
        ready_nodes=observed.ready_nodes,
        desired_nodes=scaling.desired,
        allocatable_gpus=observed.allocatable_gpus,
        interruptions_observed=(old.interruptions_observed if old else 0) + interruptions_seen,
        interruption_rate=round(rate, 6),
        last_interruption_time=now if interruptions_seen else last,
    )


# --- CostBudget ------------------------------------------------------------------------------


def budget_status(
    budget: CostBudget,
    rate: float,
    now: datetime,
    planned: NamespacePlan | None,
    effective: EffectiveBudget | None = None,
) -> CostBudgetStatus:
    """Accrue spend since the last accrual at `rate` $/h; roll over at the month's start.

    Accrual only moves forward: a clock behind the last accrual (another replica's, or this
    machine's after a correction) accrues nothing and leaves `lastAccrualTime` where it was,
    so no interval is ever counted twice.
    """
    old = budget.status
    since = old.last_accrual_time if old and old.last_accrual_time else now
    now = max(now, since)
    period = month_start(now)
    spend = old.spend if old and old.period_start and old.period_start >= period else 0.0
    since = max(since, period)
    spend += rate * max(0.0, (now - since).total_seconds()) / 3600.0
    projected = spend + rate * hours_left_in_month(now)
    limits = budget.spec.limits
    shares = []
    if limits.hourly:
        shares.append(rate / limits.hourly)
    if limits.monthly:
        shares.append(projected / limits.monthly)
    share = max(shares, default=0.0)
    thresholds = sorted(budget.spec.alert_thresholds)
    if share > 1.0 + 1e-9:
        state = "Exceeded"
    elif thresholds and share >= thresholds[0]:
        state = "Warning"
    else:
        state = "Within"
    crossed = [t for t in thresholds if share >= t]
    message = (
        f"spending {rate:,.2f} {budget.spec.currency}/h; {spend:,.2f} so far this month, "
        f"{projected:,.2f} projected"
    )
    if crossed:
        message += f"; at {share:.0%} of a limit (alert threshold {crossed[-1]:.0%})"
    previous = old.conditions if old else []
    gen = budget.metadata.generation
    return CostBudgetStatus(
        observed_generation=gen,
        period_start=period,
        spend=round(spend, 6),
        projected_spend=round(projected, 4),
        hourly_spend=round(rate, 4),
        hourly_headroom=round(limits.hourly - rate, 4) if limits.hourly else None,
        limited_deployments=list(planned.limited) if planned is not None else [],
        last_accrual_time=now,
        state=state,
        conditions=[
            condition(previous, "Exceeded", state == "Exceeded", state, message, now, gen),
            condition(previous, "Warning", state != "Within", state, message, now, gen),
            condition(previous, "Ready", True, "Accruing", message, now, gen),
            in_force_condition(previous, budget, effective, now),
        ],
    )


def in_force_condition(
    previous: Sequence[Condition],
    budget: CostBudget,
    effective: EffectiveBudget | None,
    now: datetime,
) -> Condition:
    """Whether the planner applies this CostBudget as written: with several in a namespace
    the strictest of each limit applies, and this condition says so on every one of them."""
    gen = budget.metadata.generation
    if effective is None:
        message = "no InferenceDeployment in the namespace yet"
        return condition(previous, "InForce", True, "AsWritten", message, now, gen)
    if budget.metadata.name in effective.ignored:
        return condition(previous, "InForce", False, "Merged", effective.reason, now, gen)
    applied = f"applied ({effective.source})"
    return condition(previous, "InForce", True, "AsWritten", applied, now, gen)


# --- writing only what changed ---------------------------------------------------------------


def changed_fields(
    new: Mapping[str, Any], live: Mapping[str, Any] | None, ignore: Sequence[str] = ()
) -> list[str]:
    """The top-level status fields of `new` whose value differs from the `live` status (the
    object as the watch last saw it), leaving out `ignore`. Empty: nothing to write."""
    live = live or {}
    return [k for k, v in new.items() if k not in ignore and live.get(k) != v]

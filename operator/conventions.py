"""The conditions KEDA and HPA users look for, and what a targetRef adds to status.

Pure: the round's results in, conditions and `TargetStatus` out. `status.deployment_status`
builds Ready, Forecasting, BudgetLimited and Degraded; these are added beside them:

- `ScalingActive` (HPA's ScalingActive, KEDA's Active): Peakwise writes replicas this round
  (Enforce, not suspended, no autoscaler owns the target).
- `Fallback` (KEDA's Fallback): the model's forecast alone does not size the service (no
  forecast: capacity held; no model yet; the reactive rule).
- `ScalingLimited` (HPA's ScalingLimited): the plan is held at `replicas.min` or
  `replicas.max`, or cut by a Hard budget.
- `TargetFound`, `Placement` (targetRef): the workload exists and can be read; its pods may
  land on every pool the plan may use.
- `RetentionShort`: Prometheus keeps less history than `forecast.history` asks for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

from peakwise.api.common import Condition, format_duration
from peakwise.api.inferencedeployment import InferenceDeployment, TargetStatus
from peakwise.operator.forecasts import ForecastResult
from peakwise.operator.scale_target import TargetObservation, TargetPlan
from peakwise.operator.status import condition
from peakwise.planner import DeploymentPlan


def scaling_active(
    previous: Sequence[Condition],
    infd: InferenceDeployment,
    target: TargetPlan | None,
    now: datetime,
) -> Condition:
    spec, gen = infd.spec, infd.metadata.generation
    if target is not None:
        active = target.replicas is not None and not spec.suspend
        ref = spec.target_ref
        what = f"{ref.kind} {ref.name}" if ref else "the target"
        message = target.why_not or f"Peakwise sets the replicas of {what} through /scale"
        if spec.suspend and target.replicas is not None:
            message = f"suspended: pinned at {target.replicas} replicas"
        return condition(previous, "ScalingActive", active, target.reason, message, now, gen)
    if spec.mode != "Enforce":
        return condition(
            previous, "ScalingActive", False, "Recommending", "Recommend mode", now, gen
        )
    if spec.suspend:
        message = (
            f"suspended: pinned at {spec.suspend_replicas} replicas"
            if spec.suspend_replicas is not None
            else "suspended: children keep their size"
        )
        return condition(previous, "ScalingActive", False, "Suspended", message, now, gen)
    return condition(
        previous,
        "ScalingActive",
        True,
        "Scaling",
        "Peakwise sizes the child Deployments and their pools",
        now,
        gen,
    )


def fallback(
    previous: Sequence[Condition], result: ForecastResult | None, now: datetime, gen: int | None
) -> Condition:
    """KEDA's Fallback: True while the service is not sized by its model's forecast alone."""
    if result is None or result.forecast is None:
        problem = result.problem if result else "no forecast yet"
        return condition(
            previous,
            "Fallback",
            True,
            "HoldingCapacity",
            f"no forecast ({problem}): the replicas running now are held, never fewer",
            now,
            gen,
        )
    if result.fallback:
        reason = "ModelPending" if result.forecast.provisional else "ReactiveFallback"
        return condition(previous, "Fallback", True, reason, result.fallback, now, gen)
    return condition(
        previous, "Fallback", False, "Forecast", "the forecast sizes the service", now, gen
    )


def scaling_limited(
    previous: Sequence[Condition],
    infd: InferenceDeployment,
    planned: DeploymentPlan,
    now: datetime,
) -> Condition:
    """The HPA's ScalingLimited: the plan wanted more or fewer than it may have."""
    gen, bounds = infd.metadata.generation, infd.spec.replicas
    if planned.budget_limited:
        return condition(
            previous,
            "ScalingLimited",
            True,
            "BudgetLimited",
            "a Hard budget cut the plan (see BudgetLimited)",
            now,
            gen,
        )
    if planned.clamped:
        return condition(
            previous,
            "ScalingLimited",
            True,
            "TooManyReplicas",
            f"the demand needs more than replicas.max ({bounds.max})",
            now,
            gen,
        )
    per_replica = planned.capacity / planned.total if planned.total else 0.0
    needed = math.ceil(planned.demand_target / per_replica - 1e-9) if per_replica > 0 else 0
    if planned.total and planned.total == bounds.min and needed < planned.total:
        return condition(
            previous,
            "ScalingLimited",
            True,
            "TooFewReplicas",
            f"held at replicas.min ({bounds.min}); the demand needs {needed}",
            now,
            gen,
        )
    return condition(
        previous,
        "ScalingLimited",
        False,
        "DesiredWithinRange",
        "the plan is within replicas.min and replicas.max",
        now,
        gen,
    )


def retention_short(
    previous: Sequence[Condition],
    infd: InferenceDeployment,
    retention: timedelta | None,
    now: datetime,
) -> Condition | None:
    """A warning when Prometheus keeps less than forecast.history (None: retention unknown)."""
    if retention is None:
        return None
    history, gen = infd.spec.forecast.history, infd.metadata.generation
    short = retention < history
    message = (
        f"Prometheus keeps {format_duration(retention)} of samples, less than forecast.history "
        f"{format_duration(history)}: the model learns from {format_duration(retention)} only"
        if short
        else f"Prometheus keeps {format_duration(retention)}, enough for forecast.history"
    )
    reason = "RetentionShorterThanHistory" if short else "RetentionCoversHistory"
    return condition(previous, "RetentionShort", short, reason, message, now, gen)


def target_conditions(
    previous: Sequence[Condition],
    infd: InferenceDeployment,
    observed: TargetObservation | None,
    placement: Sequence[str],
    now: datetime,
) -> list[Condition]:
    """TargetFound and Placement of a targetRef."""
    gen = infd.metadata.generation
    if observed is None:
        return [condition(previous, "TargetFound", False, "NotRead", "not read yet", now, gen)]
    found = condition(
        previous,
        "TargetFound",
        observed.found,
        "Found" if observed.found else "TargetMissing",
        (
            f"{observed.kind} {observed.name}: {observed.replicas} replicas, "
            f"{observed.ready_replicas} ready"
            if observed.found
            else observed.problem
        ),
        now,
        gen,
    )
    if not observed.found:
        return [found]
    place = condition(
        previous,
        "Placement",
        not placement,
        "PodsFitPools" if not placement else "PlacementMissing",
        "; ".join(placement) or "the pods select and tolerate every pool the plan may use",
        now,
        gen,
    )
    return [found, place]


def target_status(observed: TargetObservation | None) -> TargetStatus | None:
    if observed is None:
        return None
    return TargetStatus(
        kind=observed.kind,
        name=observed.name,
        replicas=observed.replicas,
        ready_replicas=observed.ready_replicas,
        group_size=observed.group_size,
        gpus_per_replica=observed.group_gpus,
        scaled_by=list(observed.scaled_by),
    )


def apportion(total: int, planned: dict[str, int], order: Sequence[str]) -> dict[str, int]:
    """`total` ready replicas of a target spread over pools: the planned ones first."""
    out: dict[str, int] = {}
    left = total
    for pool, n in planned.items():
        take = min(n, left)
        if take:
            out[pool] = take
            left -= take
    if left and order:
        first = next((p for p in out), order[0])
        out[first] = out.get(first, 0) + left
    return out

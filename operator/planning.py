"""From what the operator observed to the planner's input, and the plan to pool sizes.

Pure: objects and counts in, PlanInput and node counts out. The controller calls these once
per planning round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import profile_for
from peakwise.operator.forecasts import ForecastResult
from peakwise.operator.status import PoolObservation
from peakwise.planner import (
    BudgetState,
    DeploymentState,
    Plan,
    PlanInput,
    PoolState,
    TenancyPolicy,
    plan,
)
from peakwise.planner.billing import PoolUsage
from peakwise.planner.budget import hours_left_in_month
from peakwise.planner.capacity import nodes_needed

Key = tuple[str, str]


@dataclass
class Observed:
    """Everything one planning round looks at."""

    now: datetime
    deployments: Sequence[InferenceDeployment]
    pools: Sequence[GPUNodePool]
    budgets: Sequence[BudgetState]
    """The budget in force per namespace (tenancy.effective_budgets), spend included."""
    children: Mapping[Key, Mapping[str, int]] = field(default_factory=dict)
    """Replicas per pool asked of each deployment's children (their spec.replicas)."""
    forecasts: Mapping[Key, ForecastResult] = field(default_factory=dict)
    pool_nodes: Mapping[str, PoolObservation] = field(default_factory=dict)
    interrupted_at: Mapping[str, datetime] = field(default_factory=dict)
    """Latest spot interruption per pool seen by this process (status keeps it across restarts)."""
    histories: Mapping[Key, tuple[tuple[datetime, float], ...]] | None = None
    """Recent demand targets per deployment as the last round left them; None: from status."""
    tenancy: TenancyPolicy = field(default_factory=TenancyPolicy)
    """The platform's rules (unbudgeted namespaces, priorities, reserved shares)."""


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
        if observed.histories is not None:
            history = observed.histories.get(key, ())
        else:
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
    hours_left = hours_left_in_month(observed.now)
    budgets = tuple(replace(b, hours_left_in_period=hours_left) for b in observed.budgets)
    return PlanInput(
        observed.now, tuple(deployments), pools, budgets, solver=solver, policy=observed.tenancy
    )


def _gpus_by_pool(
    plan: Plan,
    deployments: Sequence[InferenceDeployment],
    pools: Mapping[str, GPUNodePool],
    held: Mapping[Key, Mapping[str, int]],
) -> dict[str, dict[Key, tuple[int, int]]]:
    """Per pool, per deployment that really runs: (replicas, GPUs each) of its plan, or of
    its children where they are held."""
    out: dict[str, dict[Key, tuple[int, int]]] = {}
    for infd in deployments:
        key = key_of(infd)
        if key in held:
            replicas = dict(held[key])
        elif infd.spec.mode == "Enforce" and key in plan.deployments:
            replicas = dict(plan.deployments[key].replicas)
        else:
            continue
        for pool_name, n in replicas.items():
            pool = pools.get(pool_name)
            profile = profile_for(infd, pool) if pool else None
            if profile is not None and n > 0:
                out.setdefault(pool_name, {})[key] = (n, profile.gpus_per_replica)
    return out


def pool_usage(
    pools: Mapping[str, GPUNodePool],
    snapshot: Any,
    plan: Plan,
    deployments: Sequence[InferenceDeployment],
) -> list[PoolUsage]:
    """What billing needs of each pool: nodes that exist, GPUs scheduled and planned per
    namespace (`snapshot` is the round's indexes.Snapshot)."""
    planned = _gpus_by_pool(plan, deployments, pools, {})
    out = []
    for name, pool in pools.items():
        wanted: dict[str, int] = {}
        for (ns, _), (n, gpus) in planned.get(name, {}).items():
            wanted[ns] = wanted.get(ns, 0) + n * gpus
        out.append(
            PoolUsage(
                name=name,
                spec=pool.spec,
                nodes=snapshot.pool_nodes.get(name, PoolObservation()).nodes,
                scheduled_gpus=dict(snapshot.scheduled_gpus.get(name, {})),
                planned_gpus=wanted,
            )
        )
    return out


def enforced_pool_nodes(
    plan: Plan,
    deployments: Sequence[InferenceDeployment],
    pools: Mapping[str, GPUNodePool],
    held: Mapping[Key, Mapping[str, int]] | None = None,
) -> dict[str, int]:
    """Nodes each pool needs for the replicas that really run: those Enforce-mode
    deployments are planned, and the children `held` at their size."""
    by_pool: dict[str, dict[int, int]] = {}
    for pool_name, members in _gpus_by_pool(plan, deployments, pools, held or {}).items():
        counts = by_pool.setdefault(pool_name, {})
        for n, gpus in members.values():
            counts[gpus] = counts.get(gpus, 0) + n
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

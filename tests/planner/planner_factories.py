"""Small builders for planner inputs, so tests say only what matters to them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.planner import (
    BudgetState,
    DemandForecast,
    DeploymentState,
    Plan,
    PlanInput,
    PoolState,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def pool(
    name: str,
    capacity_type: str = "onDemand",
    price: float = 40.0,
    *,
    gpu: str = "h100",
    gpus_per_node: int = 8,
    max_nodes: int = 10,
    reserved: int = 0,
    interruption_rate: float = 0.0,
    **extra: Any,
) -> PoolState:
    spec = GPUNodePoolSpec.model_validate(
        {
            "gpuType": gpu,
            "gpusPerNode": gpus_per_node,
            "capacityType": capacity_type,
            "pricePerNodeHour": price,
            "maxNodes": max_nodes,
            "reservedNodes": reserved,
            "provider": {"kwok": {}},
            **extra,
        }
    )
    return PoolState(name, spec, interruption_rate=interruption_rate)


def deployment(
    name: str,
    peak: float | None,
    *,
    namespace: str = "team",
    priority: int = 100,
    throughput: float = 100.0,
    profiles: list[dict[str, Any]] | None = None,
    min_replicas: int = 1,
    max_replicas: int = 100,
    floor: int | None = None,
    spot_fraction: float = 0.6,
    on_demand_min: int = 0,
    utilization: float = 1.0,
    current: dict[str, int] | None = None,
    history: tuple[tuple[datetime, float], ...] = (),
    **extra: Any,
) -> DeploymentState:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "priority": priority,
            "template": {},
            "gpuProfiles": profiles
            or [{"gpuType": "h100", "gpusPerReplica": 1, "throughputPerReplica": throughput}],
            "demand": {"query": "demand", "targetUtilization": utilization},
            "replicas": {"min": min_replicas, "max": max_replicas}
            | ({"floor": floor} if floor is not None else {}),
            "capacity": {
                "spot": {"maxFraction": spot_fraction},
                "onDemand": {"minReplicas": on_demand_min},
            },
            "forecast": {"leadTime": "10m"},
            **extra,
        }
    )
    forecast = None if peak is None else DemandForecast(peak, 0.95, model="test")
    return DeploymentState(namespace, name, spec, forecast, current or {}, history)


def budget(
    namespace: str = "team", hourly: float = 100.0, enforcement: str = "Hard", **extra: Any
) -> BudgetState:
    spec = CostBudgetSpec.model_validate(
        {"limits": {"hourly": hourly}, "enforcement": enforcement, **extra}
    )
    return BudgetState(namespace, spec)


def describe(request: PlanInput) -> str:
    """The problem in a few lines, for a failing example."""
    lines = [f"solver {request.solver}"]
    for d in request.deployments:
        spec = d.spec
        profiles = [
            (p.gpu_type, p.gpus_per_replica, p.throughput_per_replica) for p in spec.gpu_profiles
        ]
        lines.append(
            f"{d.key} peak={d.forecast.peak if d.forecast else None} min={spec.replicas.min} "
            f"max={spec.replicas.max} prio={spec.priority} spot<={spec.capacity.spot.max_fraction} "
            f"od>={spec.capacity.on_demand.min_replicas} load={spec.model_load_time} {profiles}"
        )
    for p in request.pools:
        spec = p.spec
        lines.append(
            f"pool {p.name} {spec.capacity_type} {spec.gpu_type} {spec.gpus_per_node}/node "
            f"${spec.price_per_node_hour} max={spec.max_nodes} rate={p.interruption_rate}"
        )
    for b in request.budgets:
        lines.append(f"budget {b.namespace} {b.spec.limits.hourly} {b.spec.enforcement}")
    return "\n".join(lines)


def assert_plan_keeps_the_rules(request: PlanInput, result: Plan) -> None:
    """Hard budgets hold, replicas.max holds, minimums break only for a reason, replicas run
    only on pools of a GPU type they accept, and pools have the nodes their replicas need."""
    caps = {b.namespace: b for b in request.budgets}
    for ns, planned in result.namespaces.items():
        b = caps.get(ns)
        if b is not None and b.spec.enforcement == "Hard" and b.spec.limits.hourly is not None:
            assert planned.hourly_cost <= b.spec.limits.hourly + 1e-6, (ns, planned)
    pools = {p.name: p for p in request.pools}
    gpus_on = dict.fromkeys(pools, 0)
    for state in request.deployments:
        d = result.deployments[state.key]
        assert d.total <= state.spec.replicas.max
        if d.total < state.spec.replicas.min:
            # Only a Hard budget or full pools may push a deployment below its minimum.
            assert d.budget_limited or any("no room" in r for r in d.reasons), d.reasons
        # What the placement of minimums gave it is never taken away but by its own budget.
        assert d.total >= d.guaranteed or d.budget_limited, (
            f"{d.key}: guaranteed {d.guaranteed}, planned {dict(d.replicas)}\n"
            + describe(request)
            + f"\n{ {k: dict(v.replicas) for k, v in result.deployments.items()} }"
        )
        for pool_name, n in d.replicas.items():
            profile_gpus = {
                p.gpus_per_replica
                for p in state.spec.gpu_profiles
                if p.gpu_type == pools[pool_name].spec.gpu_type
            }
            assert profile_gpus, "replicas placed on a pool of a GPU type the service cannot use"
            gpus_on[pool_name] += n * min(profile_gpus)
    for name, planned in result.pools.items():
        spec = pools[name].spec
        assert planned.nodes <= spec.max_nodes
        assert planned.nodes * spec.gpus_per_node >= gpus_on[name]
        assert planned.gpus_requested <= planned.nodes * spec.gpus_per_node

"""Small builders for planner inputs, so tests say only what matters to them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.planner import BudgetState, DemandForecast, DeploymentState, PoolState

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
    namespace: str = "team", hourly: float = 100.0, enforcement: str = "Hard"
) -> BudgetState:
    spec = CostBudgetSpec.model_validate({"limits": {"hourly": hourly}, "enforcement": enforcement})
    return BudgetState(namespace, spec)

"""How long one joint planning round takes at fleet scale.

500 InferenceDeployments in 50 namespaces over 20 GPU pools (reserved, spot and on-demand of
several GPU types), every namespace with a Hard budget. Prints the wall and CPU time per
solver (the machine may be shared: CPU time is the steadier figure), then the same round
with one hostile tenant added (a demand of 1e12/s, replicas.max 10000, a minimum of 2000
and a 2h model load; its namespace has no CostBudget, so the platform default applies) and
what it did to the 500 others. At this size the exact solver stops at its time limit; its
plan is then kept only if it beats the greedy's by the solver's objective (the solver column
says which was used).

    python benchmarks/planner_scale.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

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
    plan,
)

GPUS = ["nvidia-h100-80gb", "nvidia-a100-80gb", "nvidia-l40s-48gb", "nvidia-l4-24gb"]
TIERS = [("reserved", 0.6), ("spot", 0.35), ("onDemand", 1.0)]


def build(seed: int = 1) -> PlanInput:
    rng = random.Random(seed)
    pools = []
    for i in range(20):
        gpu = GPUS[i % len(GPUS)]
        tier, factor = TIERS[(i // len(GPUS)) % len(TIERS)]
        max_nodes = rng.randint(40, 200)
        pools.append(
            PoolState(
                f"pool-{i:02d}",
                GPUNodePoolSpec.model_validate(
                    {
                        "gpuType": gpu,
                        "gpusPerNode": 8,
                        "capacityType": tier,
                        "pricePerNodeHour": round(40 * factor * (1 + GPUS.index(gpu)) / 2, 2),
                        "maxNodes": max_nodes,
                        "reservedNodes": max_nodes // 4 if tier == "reserved" else 0,
                        "provider": {"kwok": {}},
                    }
                ),
                interruption_rate=0.02 if tier == "spot" else 0.0,
            )
        )
    deployments = []
    for i in range(500):
        gpus = rng.sample(GPUS, k=rng.randint(1, 2))
        spec = InferenceDeploymentSpec.model_validate(
            {
                "priority": rng.choice([10, 100, 500]),
                "template": {},
                "gpuProfiles": [
                    {
                        "gpuType": g,
                        "gpusPerReplica": rng.choice([1, 2]),
                        "throughputPerReplica": rng.uniform(50, 400),
                    }
                    for g in gpus
                ],
                "demand": {"query": "q"},
                "replicas": {"min": 1, "max": 40},
                "capacity": {"onDemand": {"minReplicas": rng.randint(0, 2)}},
            }
        )
        peak = rng.uniform(100, 4000)
        deployments.append(
            DeploymentState(f"ns-{i % 50:02d}", f"model-{i:03d}", spec, DemandForecast(peak, 0.95))
        )
    budgets = tuple(
        BudgetState(
            f"ns-{n:02d}",
            CostBudgetSpec.model_validate({"limits": {"hourly": rng.uniform(50, 400)}}),
        )
        for n in range(50)
    )
    return PlanInput(
        datetime(2026, 1, 5, 12, tzinfo=UTC), tuple(deployments), tuple(pools), budgets
    )


def attacker(request: PlanInput) -> DeploymentState:
    """One tenant in a namespace of its own, asking for everything the API lets it."""
    spec = InferenceDeploymentSpec.model_validate(
        {
            "priority": 1000000,
            "template": {},
            "gpuProfiles": [{"gpuType": g, "throughputPerReplica": 100} for g in GPUS],
            "demand": {"query": "vector(1e12)"},
            "replicas": {"min": 2000, "max": 10000},
            "modelLoadTime": "2h",
            "forecast": {"leadTime": "6h"},
        }
    )
    return DeploymentState("hostile", "everything", spec, DemandForecast(1e12, 0.95))


def _timed(request: PlanInput, solver: str) -> tuple[Plan, list[float], list[float]]:
    walls, cpus = [], []
    result = None
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        result = plan(replace(request, solver=solver))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    assert result is not None
    return result, walls, cpus


def main() -> int:
    request = build()
    hostile = replace(request, deployments=(*request.deployments, attacker(request)))
    print("500 deployments × 20 pools × 50 namespaces (Hard budgets everywhere)")
    for solver in ("greedy", "milp"):
        result, walls, cpus = _timed(request, solver)
        bill = sum(p.hourly_cost for p in result.pools.values())
        limited = sum(d.budget_limited for d in result.deployments.values())
        print(
            f"  {solver:<6} median {statistics.median(walls):6.2f} s wall, "
            f"{statistics.median(cpus):5.2f} s CPU  (min {min(walls):.2f} s)"
            f"  solver={result.solver!r}  bill ${bill:,.0f}/h  budget-limited {limited}"
        )
        attacked, walls, cpus = _timed(hostile, solver)
        below = sum(
            1
            for d in request.deployments
            if attacked.deployments[d.key].total < d.spec.replicas.min
            and not attacked.deployments[d.key].budget_limited
        )
        before = sum(result.deployments[d.key].capacity for d in request.deployments)
        after = sum(attacked.deployments[d.key].capacity for d in request.deployments)
        changed = sum(
            1
            for d in request.deployments
            if attacked.deployments[d.key].replicas != result.deployments[d.key].replicas
        )
        print(
            f"         + hostile tenant: {statistics.median(walls):6.2f} s wall, "
            f"{statistics.median(cpus):5.2f} s CPU; neighbours below their minimum: {below}; "
            f"their capacity {after / before - 1:+.2%}; plans changed {changed} of "
            f"{len(request.deployments)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long one joint planning round takes at fleet scale.

500 InferenceDeployments in 50 namespaces over 20 GPU pools (reserved, spot and on-demand of
several GPU types), every namespace with a Hard budget. Prints the time per solver.

    python benchmarks/planner_scale.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from datetime import UTC, datetime

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.planner import (
    BudgetState,
    DemandForecast,
    DeploymentState,
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


def main() -> int:
    request = build()
    print("500 deployments × 20 pools × 50 namespaces (Hard budgets everywhere)")
    for solver in ("greedy", "milp"):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            result = plan(PlanInput(**{**request.__dict__, "solver": solver}))
            times.append(time.perf_counter() - started)
        bill = sum(p.hourly_cost for p in result.pools.values())
        limited = sum(d.budget_limited for d in result.deployments.values())
        print(
            f"  {solver:<6} median {statistics.median(times):6.2f} s  (min {min(times):.2f} s)"
            f"  solver={result.solver!r}  bill ${bill:,.0f}/h  budget-limited {limited}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The capacity planner: pure functions from forecasts and observed state to a plan."""

from peakwise.planner.plan import plan
from peakwise.planner.types import (
    BudgetState,
    DemandForecast,
    DeploymentPlan,
    DeploymentState,
    Plan,
    PlanInput,
    PoolState,
    TenancyPolicy,
)

__all__ = [
    "BudgetState",
    "DemandForecast",
    "DeploymentPlan",
    "DeploymentState",
    "Plan",
    "PlanInput",
    "PoolState",
    "TenancyPolicy",
    "plan",
]

"""Inputs and outputs of the planner. Plain frozen dataclasses: the planner does no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec

DeploymentKey = tuple[str, str]
"""(namespace, name)."""


DEFAULT_FORECAST_WINDOW = timedelta(minutes=1)
"""Width of the window a forecast covers when its producer does not say: one decision interval
of the backtest."""


@dataclass(frozen=True)
class DemandForecast:
    """Demand (units/s) to be ready for: a quantile of the peak over the planning window."""

    peak: float
    quantile: float
    peak_at: datetime | None = None
    """Start of the window the peak covers (now + lead time)."""
    model: str = ""
    window: timedelta = DEFAULT_FORECAST_WINDOW
    """Width of that window. The planner holds the target until the window has passed."""
    provisional: bool = False
    """A stand-in while the service's model is not fitted yet (e.g. after a restart): the
    planner keeps at least the capacity running now and only scales up for it."""


@dataclass(frozen=True)
class PoolState:
    """A GPU pool as observed now."""

    name: str
    spec: GPUNodePoolSpec
    nodes: int = 0
    interruption_rate: float = 0.0
    """Spot interruptions per node-hour, observed."""
    recovering: bool = False
    """A spot pool interrupted less than its provisioning time ago: replacements would not
    arrive in time, so it gets no nodes beyond those it has and lost replicas go elsewhere."""


@dataclass(frozen=True)
class DeploymentState:
    """An InferenceDeployment as observed now, with its forecast."""

    namespace: str
    name: str
    spec: InferenceDeploymentSpec
    forecast: DemandForecast | None
    """None when there is no usable forecast: the planner then holds current capacity."""
    current: Mapping[str, int] = field(default_factory=dict)
    """Replicas per pool now (ready or starting)."""
    demand_history: tuple[tuple[datetime, float], ...] = ()
    """Recent demand targets, for scale-down stabilisation (returned by the previous plan)."""

    @property
    def key(self) -> DeploymentKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class BudgetState:
    """A namespace's CostBudget with the spend accrued so far in its period."""

    namespace: str
    spec: CostBudgetSpec
    spend: float = 0.0
    hours_left_in_period: float | None = None


UnbudgetedRule = Literal["RecommendOnly", "DefaultBudget"]


@dataclass(frozen=True)
class TenancyPolicy:
    """The platform's settings for every namespace (chart values, passed as operator flags)."""

    unbudgeted: UnbudgetedRule = "RecommendOnly"
    """What a namespace without a valid CostBudget gets: RecommendOnly (plans in status,
    nothing scaled) or DefaultBudget (`default_budget` applies)."""
    default_budget: CostBudgetSpec | None = None
    """The cap of a namespace without a CostBudget when `unbudgeted` is DefaultBudget. Only
    its hourly limit binds: there is no object to accrue a monthly spend in."""
    default_priority: int = 0
    """Cross-namespace priority of a namespace without a CostBudget."""
    default_reserved_weight: float = 0.0
    """Reserved-capacity weight of a namespace without a CostBudget: 0 (fail closed), so it
    only gets reserved capacity the namespaces with a budget leave unused."""

    def __post_init__(self) -> None:
        if self.unbudgeted == "DefaultBudget" and self.default_budget is None:
            raise ValueError("unbudgeted=DefaultBudget needs a default_budget")


@dataclass(frozen=True)
class PlanInput:
    now: datetime
    deployments: tuple[DeploymentState, ...]
    pools: tuple[PoolState, ...]
    budgets: tuple[BudgetState, ...] = ()
    solver: str = "milp"
    """milp (exact within the time limit, greedy if it finds nothing) or greedy (fast)."""
    time_limit: timedelta = timedelta(seconds=1.2)
    policy: TenancyPolicy = TenancyPolicy()
    """The platform's defaults for namespaces without a budget (priority, reserved weight,
    default cap)."""


@dataclass(frozen=True)
class DeploymentPlan:
    namespace: str
    name: str
    replicas: Mapping[str, int]
    """Desired replicas per pool (only pools with replicas)."""
    replicas_by_tier: Mapping[str, int]
    demand_target: float
    """Demand (units/s) the plan is sized for, after stabilisation."""
    capacity: float
    """Demand (units/s) the planned replicas serve at target utilisation."""
    hourly_cost: float
    """Attributed spend rate on spot and on-demand capacity."""
    reserved_hourly: float
    """Attributed share of reserved capacity (already paid for)."""
    budget_limited: bool
    reasons: tuple[str, ...]
    demand_history: tuple[tuple[datetime, float], ...]
    below_minimum: str = ""
    """Why the plan is below replicas.min, when it is: only its own namespace's Hard budget
    or pools with no room left may do that (empty otherwise)."""
    clamped: bool = False
    """The demand asked for more than replicas.max replicas can serve and was clamped."""
    guaranteed: int = 0
    """Replicas the placement of minimums (its level's, smaller minimums first) gave it this
    round: the plan is never below this unless its own namespace's Hard budget forces it,
    whatever other deployments ask for."""

    @property
    def key(self) -> DeploymentKey:
        return (self.namespace, self.name)

    @property
    def total(self) -> int:
        return sum(self.replicas.values())


@dataclass(frozen=True)
class PoolPlan:
    name: str
    nodes: int
    gpus_requested: int
    hourly_cost: float
    """Billed spend rate of the pool's nodes (reserved pools: 0, already paid)."""


@dataclass(frozen=True)
class NamespacePlan:
    namespace: str
    hourly_cost: float
    hourly_cap: float | None
    enforcement: str | None
    limited: tuple[str, ...]
    reasons: tuple[str, ...]
    priority: int = 0
    """The namespace's cross-namespace priority (its CostBudget's, or the platform default)."""
    reserved_gpus: Mapping[str, int] = field(default_factory=dict)
    """GPUs of each reserved pool guaranteed to the namespace this round (its weighted share
    of what it wants); it may use more when others leave some unused."""


@dataclass(frozen=True)
class Plan:
    deployments: Mapping[DeploymentKey, DeploymentPlan]
    pools: Mapping[str, PoolPlan]
    namespaces: Mapping[str, NamespacePlan]
    solver: str
    """Which solver produced the allocation: milp, or greedy (and why, if it was a fallback)."""

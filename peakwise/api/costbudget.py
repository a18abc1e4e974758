"""CostBudget: the spending cap a platform team sets for one namespace."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from peakwise.api.common import (
    Condition,
    ObjectMeta,
    Rule,
    StatusModel,
    WireModel,
)

Fraction = Annotated[float, Field(gt=0, le=1)]


class BudgetLimits(WireModel):
    """Spending caps; a plan must fit every limit that is set."""

    cel_rules = (
        Rule(
            "has(self.hourly) || has(self.monthly)",
            "limits must set hourly, monthly or both",
            lambda s: s.hourly is not None or s.monthly is not None,
        ),
    )

    hourly: float | None = Field(default=None, gt=0, le=1e7)
    """Most the namespace may spend per hour on spot and on-demand capacity."""
    monthly: float | None = Field(default=None, gt=0, le=1e10)
    """Most the namespace may spend per calendar month (UTC)."""


class CostBudgetSpec(WireModel):
    """A namespace's spending cap; reserved capacity is already paid for and not counted."""

    limits: BudgetLimits
    """The caps."""
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    """ISO 4217 currency of the limits; pool prices are taken to be in it."""
    enforcement: Literal["Hard", "Soft"] = "Hard"
    """Hard: no plan exceeds a limit. Soft: plans may, and warnings are raised."""
    alert_thresholds: list[Fraction] = Field(default_factory=lambda: [0.8, 1.0], max_length=8)
    """Shares of a limit at which a warning Event and condition are raised."""
    priority: int = Field(default=100, ge=0, le=1000000)
    """The namespace's priority across namespaces, set by the platform team: when pools run
    short, every deployment of a higher-priority namespace keeps capacity before any of a
    lower one. An InferenceDeployment's own priority only orders it within its namespace.
    Namespaces without a CostBudget get the platform's default (operator setting)."""
    reserved_weight: float = Field(default=1.0, ge=0, le=1000)
    """The namespace's weight when reserved capacity is contended: each reserved pool's GPUs
    are shared among the namespaces that want them in proportion to their weights (a
    namespace wanting less than its share leaves the rest to the others). 0: no guaranteed
    share, only what nobody else wants."""


class CostBudgetStatus(StatusModel):
    """Spend so far and what is left."""

    observed_generation: int | None = None
    """The .metadata.generation this status was computed from."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Exceeded, Warning."""
    period_start: datetime | None = None
    """Start of the current monthly period."""
    spend: float = 0.0
    """Spend accrued in the current period."""
    projected_spend: float = 0.0
    """Spend expected by the end of the period at the current rate."""
    hourly_spend: float = 0.0
    """Current spend rate."""
    hourly_headroom: float | None = None
    """How much more per hour the namespace may spend now."""
    limited_deployments: list[str] = Field(default_factory=list)
    """InferenceDeployments that got less than they wanted because of this budget."""
    last_accrual_time: datetime | None = None
    """Up to when spend has been accrued."""
    state: str = ""
    """Within, Warning or Exceeded."""


class CostBudget(WireModel):
    """A namespace's spending cap on GPU capacity."""

    model_config = WireModel.model_config | {"extra": "ignore"}

    api_version: Literal["peakwise.dev/v1alpha1"] = "peakwise.dev/v1alpha1"
    kind: Literal["CostBudget"] = "CostBudget"
    metadata: ObjectMeta
    spec: CostBudgetSpec
    status: CostBudgetStatus | None = None

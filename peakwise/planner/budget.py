"""Budget rules: the hourly cap a CostBudget allows now, and trimming a plan to fit it."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from peakwise.planner.capacity import Demand
from peakwise.planner.greedy import Allocation
from peakwise.planner.types import BudgetState


def month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=now.tzinfo or UTC)


def hours_left_in_month(now: datetime) -> float:
    """Hours until the calendar month (UTC) ends."""
    days = calendar.monthrange(now.year, now.month)[1]
    end = month_start(now) + timedelta(days=days)
    return max((end - now).total_seconds() / 3600.0, 1.0 / 60.0)


def hourly_cap(budget: BudgetState) -> float | None:
    """The spend rate the budget allows now: its hourly limit, and what keeps the month in."""
    limits = budget.spec.limits
    caps = []
    if limits.hourly is not None:
        caps.append(limits.hourly)
    if limits.monthly is not None and budget.hours_left_in_period is not None:
        left = max(0.0, limits.monthly - budget.spend)
        caps.append(left / max(budget.hours_left_in_period, 1.0 / 60.0))
    return min(caps) if caps else None


def allocation_cost(demand: Demand, allocation: Allocation) -> float:
    return sum(demand.options[i].price * n for i, n in allocation.items())


@dataclass
class TrimResult:
    removed: dict[int, int]
    """Replicas given up per demand index."""
    below_minimum: bool
    """True when even the minimum replica counts did not fit."""


def _removable(demand: Demand, allocation: Allocation, floor_respected: bool) -> int | None:
    """The dearest replica that can go without breaking the deployment's rules, if any."""
    total = sum(allocation.values())
    spot = sum(n for i, n in allocation.items() if demand.options[i].is_spot)
    if floor_respected and total <= demand.lo:
        return None
    best: int | None = None
    for i, n in allocation.items():
        o = demand.options[i]
        if n <= 0 or o.price <= 0:
            continue  # Reserved replicas cost nothing more: removing them saves nothing.
        if not o.is_spot and floor_respected:
            if total - spot - 1 < demand.on_demand_min:
                continue
            if spot > demand.spot_fraction * (total - 1) + 1e-9:
                continue
        if best is None or o.price > demand.options[best].price:
            best = i
    return best


def trim_to_cap(
    demands: Sequence[Demand],
    allocations: dict[int, Allocation],
    members: Sequence[int],
    cap: float,
) -> TrimResult:
    """Remove replicas, lowest priority first, until the members' cost fits the cap.

    First nobody goes below their minimum; only if the minimums alone do not fit are they
    broken, again lowest priority first.
    """
    order = sorted(members, key=lambda d: (demands[d].priority, demands[d].key))
    removed: dict[int, int] = {}
    cost = sum(allocation_cost(demands[d], allocations[d]) for d in members)
    below_minimum = False
    for floor_respected in (True, False):
        for d in order:
            while cost > cap + 1e-9:
                i = _removable(demands[d], allocations[d], floor_respected)
                if i is None:
                    break
                cost -= demands[d].options[i].price
                allocations[d][i] -= 1
                if allocations[d][i] == 0:
                    del allocations[d][i]
                removed[d] = removed.get(d, 0) + 1
                below_minimum = below_minimum or not floor_respected
        if cost <= cap + 1e-9:
            break
    return TrimResult(removed=removed, below_minimum=below_minimum)

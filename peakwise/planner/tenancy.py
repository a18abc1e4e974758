"""Tenancy rules: what the platform decides for every namespace, and what one namespace may
claim of what the others share. Pure: objects in, decisions and reasons out.

* **One effective budget per namespace.** Several CostBudgets in one namespace: the
  strictest of each setting applies (the lowest limits, Hard over Soft, the lowest priority
  and reserved weight), and the reason says so. An invalid one is not silently skipped: the
  reason names it, and without a valid one the namespace falls back to the platform's rule.
* **Fail closed.** A namespace without a (valid) CostBudget gets the platform's rule
  (`TenancyPolicy.unbudgeted`): `RecommendOnly` (its deployments are planned, nothing is
  scaled) or `DefaultBudget` (a platform-wide cap).
* **Cross-namespace priority is the platform's.** It comes from the CostBudget (written by
  the platform team) or the platform default; a deployment's own `priority` only orders it
  within its namespace.
* **Reserved capacity is shared by weight.** Each reserved slice's GPUs are divided among
  the namespaces that want them by weighted max-min fairness, minimums first: a namespace is
  guaranteed the smaller of what it wants and its weighted share; what some leave unused
  (`leftover`) goes to whoever asks first. A tenant inflating its demand gets at most its
  share under contention, whatever its budget.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from peakwise.api.costbudget import BudgetLimits, CostBudgetSpec
from peakwise.planner.capacity import Demand, Option, Slice
from peakwise.planner.types import BudgetState, TenancyPolicy


@dataclass(frozen=True)
class ObservedBudget:
    """One CostBudget object as read from the API server, valid or not."""

    namespace: str
    name: str
    spec: CostBudgetSpec | None
    """None when the object failed validation; `problem` says why."""
    problem: str = ""
    spend: float = 0.0
    """status.spend: accrued in the current period."""


@dataclass(frozen=True)
class EffectiveBudget:
    """The budget that applies to one namespace, and why."""

    namespace: str
    budget: BudgetState | None
    """The cap the planner applies; None: no cap (RecommendOnly, or nothing at all)."""
    enforce: bool
    """False: the namespace's deployments must be treated as Recommend (fail closed)."""
    source: str
    """Where it comes from, for status: 'CostBudget gpu-spend', 'platform default', ..."""
    reason: str = ""
    """Non-empty when something is off (several budgets, an invalid one, none): the text of
    a condition on the namespace's objects."""
    ignored: tuple[str, ...] = ()
    """CostBudgets not applied as written (invalid, or merged with a stricter one)."""


def strictest(specs: Sequence[CostBudgetSpec]) -> CostBudgetSpec:
    """One budget from several: the lowest limit of each kind, Hard if any is Hard, the
    lowest priority and reserved weight, every alert threshold (at most 8, lowest first).
    Taking the minimum means no one can loosen a cap by adding a second CostBudget."""
    if len(specs) == 1:
        return specs[0]

    def lowest(values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    thresholds = sorted({t for s in specs for t in s.alert_thresholds})[:8]
    return CostBudgetSpec(
        limits=BudgetLimits(
            hourly=lowest(s.limits.hourly for s in specs),
            monthly=lowest(s.limits.monthly for s in specs),
        ),
        currency=specs[0].currency,
        enforcement="Hard" if any(s.enforcement == "Hard" for s in specs) else "Soft",
        alert_thresholds=thresholds,
        priority=min(s.priority for s in specs),
        reserved_weight=min(s.reserved_weight for s in specs),
    )


def _fallback(
    namespace: str, policy: TenancyPolicy, reason: str, ignored: tuple[str, ...] = ()
) -> EffectiveBudget:
    if policy.unbudgeted == "DefaultBudget" and policy.default_budget is not None:
        default = policy.default_budget.model_copy(
            update={
                "priority": policy.default_priority,
                "reserved_weight": policy.default_reserved_weight,
            }
        )
        return EffectiveBudget(
            namespace,
            BudgetState(namespace, default),
            True,
            "platform default",
            f"{reason}: the platform's default budget applies" if reason else "",
            ignored,
        )
    why = reason or "no CostBudget in the namespace"
    return EffectiveBudget(
        namespace,
        None,
        False,
        "none",
        f"{why}: Recommend only until the platform team sets one (fail closed)",
        ignored,
    )


def effective_budgets(
    namespaces: Iterable[str],
    budgets: Sequence[ObservedBudget],
    policy: TenancyPolicy,
    hours_left_in_period: float | None = None,
) -> dict[str, EffectiveBudget]:
    """The budget of every namespace in `namespaces` (and of every namespace with a
    CostBudget), after the rules above."""
    by_namespace: dict[str, list[ObservedBudget]] = defaultdict(list)
    for b in budgets:
        by_namespace[b.namespace].append(b)
    out = {}
    for ns in sorted(set(namespaces) | set(by_namespace)):
        found = sorted(by_namespace.get(ns, []), key=lambda b: b.name)
        valid = [b for b in found if b.spec is not None]
        invalid = [b for b in found if b.spec is None]
        problems = [f"CostBudget {b.name} is invalid ({b.problem})" for b in invalid]
        if not valid:
            out[ns] = _fallback(ns, policy, "; ".join(problems), tuple(b.name for b in invalid))
            continue
        currencies = {b.spec.currency for b in valid if b.spec is not None}
        if len(currencies) > 1:
            names = ", ".join(b.name for b in valid)
            listed = ", ".join(sorted(currencies))
            reason = f"CostBudgets {names} use different currencies ({listed})"
            out[ns] = _fallback(ns, policy, reason, tuple(b.name for b in found))
            continue
        specs = [b.spec for b in valid if b.spec is not None]
        spec = strictest(specs)
        spend = max(b.spend for b in valid)
        state = BudgetState(ns, spec, spend, hours_left_in_period)
        if len(valid) == 1:
            source = f"CostBudget {valid[0].name}"
            reasons = problems
            ignored = tuple(b.name for b in invalid)
        else:
            names = ", ".join(b.name for b in valid)
            source = f"strictest of CostBudgets {names}"
            reasons = [
                *problems,
                f"{len(valid)} CostBudgets in the namespace ({names}): the strictest of each "
                "limit applies",
            ]
            ignored = tuple(b.name for b in found)
        out[ns] = EffectiveBudget(ns, state, True, source, "; ".join(reasons), ignored)
    return out


def merge_budget_states(budgets: Iterable[BudgetState]) -> dict[str, BudgetState]:
    """One BudgetState per namespace (the planner's own guard: several are merged, strictest)."""
    grouped: dict[str, list[BudgetState]] = defaultdict(list)
    for b in budgets:
        grouped[b.namespace].append(b)
    merged = {}
    for ns, states in grouped.items():
        if len(states) == 1:
            merged[ns] = states[0]
            continue
        hours = [s.hours_left_in_period for s in states if s.hours_left_in_period is not None]
        merged[ns] = BudgetState(
            ns,
            strictest([s.spec for s in states]),
            max(s.spend for s in states),
            min(hours) if hours else None,
        )
    return merged


def planning_budgets(
    budgets: Iterable[BudgetState], namespaces: Iterable[str], policy: TenancyPolicy
) -> dict[str, BudgetState]:
    """The budget the planner applies per namespace: one per namespace (merged, strictest),
    and the platform's default cap where there is none and the policy says DefaultBudget."""
    merged = merge_budget_states(budgets)
    if policy.unbudgeted == "DefaultBudget" and policy.default_budget is not None:
        default = policy.default_budget.model_copy(
            update={
                "priority": policy.default_priority,
                "reserved_weight": policy.default_reserved_weight,
            }
        )
        for ns in set(namespaces) - set(merged):
            merged[ns] = BudgetState(ns, default)
    return merged


# --- priorities ---------------------------------------------------------------------------


def namespace_priority(budget: BudgetState | None, policy: TenancyPolicy) -> int:
    return budget.spec.priority if budget is not None else policy.default_priority


def reserved_weight(budget: BudgetState | None, policy: TenancyPolicy) -> float:
    return budget.spec.reserved_weight if budget is not None else policy.default_reserved_weight


def levels(priorities: Mapping[str, int]) -> dict[str, int]:
    """Level of each namespace: 0 for the highest platform priority, 1 for the next..."""
    distinct = sorted(set(priorities.values()), reverse=True)
    return {ns: distinct.index(p) for ns, p in priorities.items()}


def ranks(deployments: Sequence[tuple[str, int]]) -> list[tuple[int, float]]:
    """(rank, factor) of each (namespace, priority) within its namespace: rank 0 for the
    namespace's highest priority; factor 1 at rank 0 falling to just above 0.5 at the lowest.
    A tenant's priorities can only lower its own deployments' weight, never raise it above
    another namespace's."""
    by_ns: dict[str, set[int]] = defaultdict(set)
    for ns, priority in deployments:
        by_ns[ns].add(priority)
    order = {ns: sorted(ps, reverse=True) for ns, ps in by_ns.items()}
    out = []
    for ns, priority in deployments:
        distinct = order[ns]
        rank = distinct.index(priority)
        out.append((rank, 1.0 - 0.5 * rank / len(distinct)))
    return out


# --- reserved capacity --------------------------------------------------------------------


@dataclass
class ReservedShare:
    """How one reserved slice's GPUs are shared: guaranteed GPUs per namespace, and what
    nobody was guaranteed (anyone may use it)."""

    capacity: int
    guaranteed: dict[str, int] = field(default_factory=dict)
    leftover: int = 0


def water_fill(
    capacity: int, wants: Mapping[str, int], weights: Mapping[str, float]
) -> dict[str, int]:
    """Weighted max-min fair shares of `capacity` (whole GPUs): nobody gets more than it
    wants; the rest is split by weight among those who want more. A weight of 0 is
    guaranteed nothing."""
    shares = dict.fromkeys(wants, 0)
    left = capacity
    active = {ns for ns, w in wants.items() if w > 0 and weights.get(ns, 0.0) > 0}
    while left > 0 and active:
        total = sum(weights[ns] for ns in active)
        # Everyone whose remaining want fits its share of what is left is served in full.
        done = {ns for ns in active if wants[ns] - shares[ns] <= left * weights[ns] / total + 1e-9}
        if done:
            for ns in sorted(done):
                grant = min(wants[ns] - shares[ns], left)
                shares[ns] += grant
                left -= grant
            active -= done
            continue
        # Nobody fits: split what is left by weight, whole GPUs, remainders by largest part.
        exact = {ns: left * weights[ns] / total for ns in active}
        grants = {ns: math.floor(v) for ns, v in exact.items()}
        rest = left - sum(grants.values())
        for ns in sorted(active, key=lambda n: (grants[n] - exact[n], n))[:rest]:
            grants[ns] += 1
        for ns, g in grants.items():
            shares[ns] += g
        left = 0
    return shares


def share_reserved(
    demands: Sequence[Demand], slices: Sequence[Slice], weights: Mapping[str, float]
) -> dict[int, ReservedShare]:
    """The share of every reserved slice, from what each namespace wants of it.

    A namespace wants, of a slice, the GPUs its deployments need there to cover their targets
    (at least their minimums, at most replicas.max) after what earlier reserved slices already
    gave them, so wants are not counted twice across pools.
    """
    remaining = [d.solve_target for d in demands]
    replicas_left = [d.hi for d in demands]
    minimum_left = [d.lo for d in demands]
    shares: dict[int, ReservedShare] = {}
    reserved = [s for s in slices if s.tier == "reserved" and s.max_nodes > 0]
    users: dict[int, list[tuple[int, Option]]] = defaultdict(list)  # slice -> (demand, option)
    wanted = {s.index for s in reserved}
    for d, demand in enumerate(demands):
        for o in demand.options:
            if o.slice in wanted:
                users[o.slice].append((d, o))
    for s in reserved:
        wants: dict[str, int] = defaultdict(int)
        needs: dict[int, tuple[int, int]] = {}  # demand -> (replicas, gpus each)
        options: dict[int, Option] = {}
        for d, option in users[s.index]:
            demand = demands[d]
            if replicas_left[d] <= 0:
                continue
            n = max(math.ceil(remaining[d] / option.effective - 1e-9), minimum_left[d])
            n = min(max(n, 0), replicas_left[d])
            if n > 0:
                needs[d] = (n, option.gpus)
                options[d] = option
                wants[demand.namespace] += n * option.gpus
        share = ReservedShare(capacity=s.max_nodes * s.gpus_per_node)
        # One weighted max-min share of everything each namespace wants. Not minimums first:
        # a namespace would then gain reserved GPUs by raising its minimums (or adding
        # deployments with one each) at its neighbours' cost. Minimums beyond a namespace's
        # share run on the tiers with a price, which the joint plan keeps for minimums first.
        share.guaranteed = water_fill(share.capacity, wants, weights)
        share.leftover = share.capacity - sum(share.guaranteed.values())
        shares[s.index] = share
        # Hand each namespace's guarantee to its deployments, highest priority first, so
        # the next reserved slice sees only what is still uncovered.
        grant = dict(share.guaranteed)
        for d in sorted(needs, key=lambda i: (-demands[i].priority, demands[i].key)):
            n, gpus = needs[d]
            ns = demands[d].namespace
            k = min(n, grant.get(ns, 0) // gpus)
            grant[ns] = grant.get(ns, 0) - k * gpus
            remaining[d] = max(0.0, remaining[d] - k * options[d].effective)
            replicas_left[d] -= k
            minimum_left[d] = max(0, minimum_left[d] - k)
    return shares

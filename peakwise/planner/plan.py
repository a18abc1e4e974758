"""The planner: forecasts, pools, budgets and current state in; replicas, nodes and reasons out.

Pure: no I/O, no clock (``now`` is an input), no globals. The operator and
`peakwise backtest` both call :func:`plan`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from peakwise.api.common import CAPACITY_TYPES
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.planner import greedy, milp
from peakwise.planner.budget import TrimResult, allocation_cost, hourly_cap, trim_to_cap
from peakwise.planner.capacity import (
    Demand,
    Option,
    Slice,
    build_slices,
    claimable,
    current_by_option,
    lead_time,
    nodes_needed,
    options_for,
    reachable,
)
from peakwise.planner.greedy import Allocation, Packing
from peakwise.planner.repair import reoffer, repair_minimums
from peakwise.planner.tenancy import (
    ReservedShare,
    levels,
    namespace_priority,
    planning_budgets,
    ranks,
    reserved_weight,
    share_reserved,
)
from peakwise.planner.types import (
    DEFAULT_FORECAST_WINDOW,
    BudgetState,
    DemandForecast,
    DeploymentPlan,
    DeploymentState,
    NamespacePlan,
    Plan,
    PlanInput,
    PoolPlan,
    PoolState,
)


def stabilized_target(
    raw: float, history: Sequence[tuple[datetime, float]], now: datetime, window: timedelta
) -> tuple[float, tuple[tuple[datetime, float], ...]]:
    """Scale up at once, scale down only to the highest target of the last `window`."""
    target = raw
    # Only targets that could still matter are kept: an entry below a newer one never will.
    pruned: list[tuple[datetime, float]] = []
    for t, v in history:
        if now - t < window and t <= now:
            target = v if v > target else target
            while pruned and pruned[-1][1] <= v:
                pruned.pop()
            pruned.append((t, v))
    while pruned and pruned[-1][1] <= raw:
        pruned.pop()
    pruned.append((now, raw))
    return target, tuple(pruned)


def hold_window(
    spec: InferenceDeploymentSpec, pools: Sequence[PoolState], forecast: DemandForecast | None
) -> timedelta:
    """How long a target is held before capacity may go below it.

    A target planned now is for the forecast window [now + lead, now + lead + width]:
    capacity asked for now arrives after the lead time, while capacity removed later is
    gone at once. So the target must stand until that window has passed, lead + width
    after it was set, and at least for the stabilisation window.
    """
    width = forecast.window if forecast is not None else DEFAULT_FORECAST_WINDOW
    return max(spec.scale_down.stabilization_window, lead_time(spec, pools) + width)


def _current_capacity(
    state: DeploymentState, options: Sequence[Option], slices: Sequence[Slice]
) -> float:
    by_pool: dict[str, float] = {}
    for o in options:
        by_pool.setdefault(slices[o.slice].pool, o.effective)
    return sum(by_pool.get(pool, 0.0) * n for pool, n in state.current.items())


def _demands(
    request: PlanInput, slices: Sequence[Slice], budgets: Mapping[str, BudgetState]
) -> tuple[list[Demand], list[tuple[tuple[datetime, float], ...]], list[list[str]]]:
    demands, histories, reasons = [], [], []
    priorities = {
        s.namespace: namespace_priority(budgets.get(s.namespace), request.policy)
        for s in request.deployments
    }
    level_of = levels(priorities)
    rank_of = ranks([(s.namespace, s.spec.priority) for s in request.deployments])
    for state, (rank, factor) in zip(request.deployments, rank_of, strict=True):
        spec = state.spec
        hi = spec.replicas.max
        lo = spec.replicas.min
        if spec.replicas.floor is not None:
            lo = max(lo, min(spec.replicas.floor, hi))
        options = options_for(spec, slices)
        why: list[str] = []
        forecast = state.forecast
        if forecast is None or not math.isfinite(forecast.peak) or forecast.peak < 0:
            # Never scale down for lack of data: hold what runs now (at least the minimum).
            raw = _current_capacity(state, options, slices)
            why.append(
                f"no usable forecast: holding current capacity ({sum(state.current.values())} "
                "replicas)"
            )
        elif forecast.provisional:
            # No model yet: a restart must not change the plan, so nothing goes below what
            # runs now; demand above it is still followed.
            raw = max(forecast.peak, _current_capacity(state, options, slices))
            why.append(
                f"model not fitted yet: holding current capacity ({sum(state.current.values())} "
                f"replicas), or more if demand ({forecast.peak:,.1f}/s) needs it"
            )
        else:
            raw = forecast.peak
            model = f", {forecast.model}" if forecast.model else ""
            why.append(
                f"forecast peak {forecast.peak:,.4g}/s (q{forecast.quantile:g}{model}); "
                f"planning at {spec.demand.target_utilization:.0%} target utilisation"
            )
        # One deployment can claim at most what its replicas.max replicas serve: a query
        # returning 1e9 is worth replicas.max replicas, no more, to the solver and to others.
        most = claimable(spec, options)
        clamped = raw > most + 1e-9
        if clamped:
            why.append(
                f"demand {raw:,.4g}/s is more than replicas.max ({hi}) replicas serve: "
                f"planning for {most:,.1f}/s"
            )
            raw = most
        window = hold_window(spec, request.pools, forecast)
        target, history = stabilized_target(raw, state.demand_history, request.now, window)
        if target > most:  # an older, larger target (from before a bound changed)
            target, history = most, tuple((t, min(v, most)) for t, v in history)
        if target > raw + 1e-9:
            why.append(
                f"holding capacity for {target:,.1f}/s: targets in the last {_fmt(window)} "
                "were higher (scale-down stabilisation; capacity asked for then is still "
                "needed for the window it was planned for)"
            )
        demands.append(
            Demand(
                key=state.key,
                priority=spec.priority,
                target=target,
                lo=lo,
                hi=hi,
                spot_fraction=spec.capacity.spot.max_fraction,
                on_demand_min=min(spec.capacity.on_demand.min_replicas, hi),
                options=options,
                level=level_of[state.namespace],
                rank=rank,
                factor=factor,
                reachable=reachable(options, slices),
                current=current_by_option(state.current, options, slices),
            )
        )
        histories.append(history)
        reasons.append(why)
    return demands, histories, reasons


def _fmt(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _solve(
    request: PlanInput,
    demands: Sequence[Demand],
    slices: Sequence[Slice],
    shares: Mapping[int, ReservedShare],
) -> tuple[dict[int, Allocation], dict[int, int], str]:
    """Allocate level by level (the platform's namespace priority, highest first); within a
    level, minimums before anyone's target."""
    packing = Packing(slices, shares)
    allocations: dict[int, Allocation] = {}
    guaranteed: dict[int, int] = {}
    fallback = False
    unrepaired = timed_out = 0
    total_limit = request.time_limit.total_seconds()
    for level in sorted({d.level for d in demands}):
        members = [d for d, demand in enumerate(demands) if demand.level == level]
        held = greedy.place_minimums(demands, members, packing)
        # What the placement of minimums (smaller first) gives each holds whatever the
        # others ask for.
        placed = {d: sum(a.values()) for d, a in held.items()}
        guaranteed.update(placed)
        solved: dict[int, Allocation] | None = None
        if request.solver != "greedy":
            for d, a in held.items():
                packing.place(demands[d], a, sign=-1)
            limit = max(0.2, total_limit * len(members) / len(demands))
            solution = milp.allocate(demands, members, slices, packing, limit)
            if solution is None:
                fallback = True
            elif not solution.proven:
                quick = _greedy_if_no_dearer(
                    demands, members, slices, packing, held, solution, limit
                )
                if quick is not None:
                    timed_out += 1
                    solution = quick
            if solution is None:
                for d, a in held.items():
                    packing.place(demands[d], a)
            else:
                solved = {d: solution.allocations.get(d, {}) for d in members}
                for d, a in solved.items():
                    packing.place(demands[d], a)
                repair_minimums(demands, solved, packing, placed)
                if any(sum(solved[d].values()) < n for d, n in placed.items()):
                    # A minimum the repair could not put back (it would take moving others
                    # around): the greedy plan keeps every one of them.
                    unrepaired += 1
                    for d, a in solved.items():
                        packing.place(demands[d], a, sign=-1)
                    for d, a in held.items():
                        packing.place(demands[d], a)
                    solved = None
        if solved is None:
            # The exact solver found nothing within the time limit: the heuristic always answers.
            solved = greedy.allocate(demands, members, packing, held=held)
        allocations.update(solved)
    if request.solver == "greedy":
        return allocations, guaranteed, "greedy"
    if fallback:
        used = "greedy (exact solver found nothing in time)"
    elif timed_out:
        used = f"greedy (no dearer than the exact plan at its time limit, {timed_out} level(s))"
    else:
        used = "milp"
    if unrepaired:
        used += f" (greedy for {unrepaired} level(s) whose minimums the exact plan missed)"
    return allocations, guaranteed, used


def _greedy_if_no_dearer(
    demands: Sequence[Demand],
    members: Sequence[int],
    slices: Sequence[Slice],
    packing: Packing,
    held: Mapping[int, Allocation],
    solution: milp.Solution,
    limit: float,
) -> milp.Solution | None:
    """The greedy plan of a level if it costs no more than what HiGHS held at its time limit,
    by the exact solver's own objective, else None. Stopped early, HiGHS hands back a plan
    that depends on how much CPU it got (none at all, or one far from the optimum), so the
    same fleet would be planned differently round after round; the greedy's is the same
    every time and is kept unless the exact one is really cheaper. `packing` is left as it
    came (without the level's members)."""
    for d, a in held.items():
        packing.place(demands[d], a)
    quick = greedy.allocate(demands, members, packing, held=dict(held))
    for d, a in quick.items():
        packing.place(demands[d], a, sign=-1)
    value = milp.evaluate(demands, members, slices, packing, quick, limit)
    if value is None or value > solution.objective + 1e-9:
        return None
    return milp.Solution(quick, value, proven=False)


def plan(request: PlanInput) -> Plan:
    """Plan replicas per pool and nodes per pool for every deployment, jointly."""
    policy = request.policy
    budgets = planning_budgets(request.budgets, {s.namespace for s in request.deployments}, policy)
    slices = build_slices(request.pools)
    demands, histories, reasons = _demands(request, slices, budgets)
    weights = {d.namespace: reserved_weight(budgets.get(d.namespace), policy) for d in demands}
    shares = share_reserved(demands, slices, weights)
    allocations, guaranteed, solver = _solve(request, demands, slices, shares)
    for d in range(len(demands)):
        allocations.setdefault(d, {})

    # Hard budgets bind after the joint allocation: lowest priority gives way first.
    by_namespace: dict[str, list[int]] = defaultdict(list)
    for d, demand in enumerate(demands):
        by_namespace[demand.namespace].append(d)
    limited: set[int] = set()
    forced_below: set[int] = set()
    caps: dict[str, float | None] = {}
    left: dict[str, float] = {}
    ns_reasons: dict[str, list[str]] = defaultdict(list)
    for ns, members in sorted(by_namespace.items()):
        budget = budgets.get(ns)
        cap = hourly_cap(budget) if budget else None
        caps[ns] = cap
        if budget is None or cap is None:
            continue
        wanted = sum(allocation_cost(demands[d], allocations[d]) for d in members)
        if wanted > cap + 1e-9:
            if budget.spec.enforcement == "Hard":
                trim = trim_to_cap(demands, allocations, members, cap)
                limited |= set(trim.removed)
                ns_reasons[ns].append(_budget_reason(wanted, cap, budget.spec.currency, trim))
                for d, n in trim.removed.items():
                    reasons[d].append(
                        f"gave up {n} replica(s) to the namespace's Hard budget "
                        f"({cap:,.2f} {budget.spec.currency}/h; priority {demands[d].priority})"
                        + ("; even the minimums do not fit" if trim.below_minimum else "")
                    )
                    if trim.below_minimum:
                        forced_below.add(d)
            else:
                ns_reasons[ns].append(
                    f"plan costs {wanted:,.2f} {budget.spec.currency}/h, over the Soft "
                    f"budget of {cap:,.2f}/h: warning only"
                )
        if budget.spec.enforcement == "Hard":
            spent = sum(allocation_cost(demands[d], allocations[d]) for d in members)
            left[ns] = max(0.0, cap - spent)

    if limited and not solver.startswith("greedy"):
        # The joint plan was made with the trimmed replicas in it, and the others placed
        # around them (say, beside them on a node the trim then emptied). Solved again with
        # each trimmed deployment at what its budget kept, no one else's plan carries the
        # shape of a claim that was never served; kept only if every Hard budget still holds.
        kept = [
            _kept(demand, allocations[d]) if d in limited else demand
            for d, demand in enumerate(demands)
        ]
        kept_shares = share_reserved(kept, slices, weights)
        again, _, _ = _solve(request, kept, slices, kept_shares)
        resolved = {d: again.get(d, {}) for d in range(len(demands))}
        if all(
            sum(allocation_cost(demands[d], resolved[d]) for d in members) <= left_cap + 1e-9
            for ns, members in by_namespace.items()
            if (left_cap := _hard_cap(budgets.get(ns), caps[ns])) is not None
        ):
            allocations, shares = resolved, kept_shares
            for ns in left:
                spent = sum(allocation_cost(demands[d], allocations[d]) for d in by_namespace[ns])
                left[ns] = max(0.0, (caps[ns] or 0.0) - spent)

    # What a budget trimmed goes to whoever is still short, in the same round; so does room
    # the greedy left behind holds it released. The exact plan is otherwise left as solved:
    # it may leave a sliver of demand uncovered rather than pay for a node, and topping that
    # up with a whole replica would flip the plan between rounds.
    if limited or solver.startswith("greedy"):
        reoffer(demands, allocations, slices, shares, left)

    namespaces: dict[str, NamespacePlan] = {}
    for ns, members in sorted(by_namespace.items()):
        budget = budgets.get(ns)
        reserved_gpus: dict[str, int] = {}
        for i, share in shares.items():
            gpus = share.guaranteed.get(ns, 0)
            if gpus:
                reserved_gpus[slices[i].pool] = reserved_gpus.get(slices[i].pool, 0) + gpus
        namespaces[ns] = NamespacePlan(
            namespace=ns,
            hourly_cost=sum(allocation_cost(demands[d], allocations[d]) for d in members),
            hourly_cap=caps[ns],
            enforcement=budget.spec.enforcement if budget else None,
            limited=tuple(sorted(demands[d].key[1] for d in members if d in limited)),
            reasons=tuple(ns_reasons[ns]),
            priority=namespace_priority(budget, policy),
            reserved_gpus=reserved_gpus,
        )

    deployment_plans = {}
    for d, (demand, state) in enumerate(zip(demands, request.deployments, strict=True)):
        deployment_plans[demand.key] = _deployment_plan(
            demand,
            state,
            allocations[d],
            slices,
            histories[d],
            reasons[d],
            d in limited,
            d in forced_below,
            caps.get(demand.namespace),
            guaranteed.get(d, 0),
        )
    return Plan(
        deployments=deployment_plans,
        pools=_pool_plans(request, demands, allocations, slices),
        namespaces=namespaces,
        solver=solver,
    )


def _kept(demand: Demand, allocation: Allocation) -> Demand:
    """The deployment as its Hard budget left it: at most the replicas it kept."""
    n = sum(allocation.values())
    served = sum(demand.options[i].effective * k for i, k in allocation.items())
    return replace(
        demand,
        hi=n,
        lo=min(demand.lo, n),
        on_demand_min=min(demand.on_demand_min, n),
        target=min(demand.target, served),
    )


def _hard_cap(budget: BudgetState | None, cap: float | None) -> float | None:
    return cap if budget is not None and budget.spec.enforcement == "Hard" else None


def _budget_reason(wanted: float, cap: float, currency: str, trim: TrimResult) -> str:
    text = (
        f"wanted {wanted:,.2f} {currency}/h, Hard budget allows {cap:,.2f}/h: "
        f"lower-priority deployments gave up {sum(trim.removed.values())} replica(s)"
    )
    if trim.below_minimum:
        text += "; even the minimum replica counts do not fit, so some run below their minimum"
    return text


def _deployment_plan(
    demand: Demand,
    state: DeploymentState,
    allocation: Allocation,
    slices: Sequence[Slice],
    history: tuple[tuple[datetime, float], ...],
    why: list[str],
    budget_limited: bool,
    budget_forced_below: bool,
    cap: float | None,
    guaranteed: int,
) -> DeploymentPlan:
    replicas: dict[str, int] = defaultdict(int)
    tiers: dict[str, int] = dict.fromkeys(CAPACITY_TYPES, 0)
    placed: dict[str, int] = defaultdict(int)
    capacity = cost = reserved_cost = 0.0
    for i, n in allocation.items():
        o = demand.options[i]
        s = slices[o.slice]
        replicas[s.pool] += n
        tiers[s.tier] += n
        placed[f"{s.tier} {s.pool}"] += n
        capacity += n * o.effective
        cost += n * o.price
        if s.tier == "reserved":
            reserved_cost += n * o.list_price
    total, before = sum(replicas.values()), sum(state.current.values())
    reasons = list(why)
    if total > before:
        reasons.insert(0, f"scale up {before} → {total} replicas")
    elif total < before:
        reasons.insert(0, f"scale down {before} → {total} replicas")
    else:
        reasons.insert(0, f"keep {total} replicas")
    if placed:
        reasons.append("placed " + ", ".join(f"{n} on {k}" for k, n in sorted(placed.items())))
    if capacity + 1e-9 < demand.target and not budget_limited:
        bound = "replicas.max" if total >= demand.hi else "pool capacity"
        reasons.append(
            f"short of the target by {demand.target - capacity:,.1f}/s: limited by {bound}"
        )
    below = ""
    if total < demand.lo:
        # The post-solve check: minimums come first, so only the namespace's own Hard budget
        # or pools with no room left (the fill found none) put a deployment below its minimum.
        if budget_forced_below:
            below = (
                f"below replicas.min ({demand.lo}): the namespace's Hard budget "
                f"({cap or 0:,.2f}/h) cannot pay even for the minimums"
            )
        else:
            below = f"below replicas.min ({demand.lo}): the pools have no room left"
        reasons.append(below)
    return DeploymentPlan(
        namespace=demand.key[0],
        name=demand.key[1],
        replicas={p: n for p, n in sorted(replicas.items()) if n > 0},
        replicas_by_tier=tiers,
        demand_target=demand.target,
        capacity=capacity,
        hourly_cost=cost,
        reserved_hourly=reserved_cost,
        budget_limited=budget_limited,
        reasons=tuple(reasons),
        demand_history=history,
        below_minimum=below,
        clamped=any(r.startswith("demand ") and "replicas.max" in r for r in why),
        guaranteed=guaranteed,
    )


def _pool_plans(
    request: PlanInput,
    demands: Sequence[Demand],
    allocations: Mapping[int, Allocation],
    slices: Sequence[Slice],
) -> dict[str, PoolPlan]:
    by_slice: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for d, allocation in allocations.items():
        for i, n in allocation.items():
            o = demands[d].options[i]
            by_slice[o.slice][o.gpus] += n
    plans = {}
    for pool in sorted(request.pools, key=lambda p: p.name):
        spec = pool.spec
        nodes = gpus = 0
        billed = 0.0
        for s in slices:
            if s.pool != pool.name:
                continue
            counts = by_slice.get(s.index, {})
            needed = nodes_needed(counts, s.gpus_per_node)
            gpus += sum(g * n for g, n in counts.items())
            if s.tier == "reserved":
                needed = max(needed, spec.reserved_nodes)  # paid for: keep them up
            nodes += needed
            billed += needed * s.node_price
        if nodes < spec.min_nodes:
            extra = spec.min_nodes - nodes
            price = 0.0 if spec.capacity_type == "reserved" else spec.price_per_node_hour
            billed += extra * price
            nodes = spec.min_nodes
        plans[pool.name] = PoolPlan(
            name=pool.name, nodes=nodes, gpus_requested=gpus, hourly_cost=billed
        )
    return plans

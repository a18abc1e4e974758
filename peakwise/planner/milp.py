"""Exact allocation as a mixed-integer program, solved by HiGHS (scipy.optimize.milp).

Minimises what the nodes cost, with penalties for demand left unserved, for falling below a
minimum and for missing an on-demand floor, so the program is always feasible and the
penalties only bite when pools run out. Whole nodes are counted per replica size.

What keeps one tenant from hurting another:

* Shortfall is counted in replicas of the deployment's own best option (its target was
  clamped to what replicas.max can use), and through a concave scale: a deployment's first
  replicas weigh more than a large one's hundredth, so under contention small services are
  served before one huge claim takes the rest.
* Falling below a minimum is penalised far above any shortfall, a small minimum more than a
  large one (hard constraints instead leave HiGHS without a good solution within its time
  limit at fleet scale; the planner repairs what a time-limited solve leaves below).
* The gap is absolute: HiGHS may stop only within a cent-scale amount of the optimum, so
  a huge term in the objective cannot hide another deployment's loss inside a relative gap.
* Reserved slices are shared: a namespace uses its guaranteed GPUs plus what is left of the
  unguaranteed part.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from peakwise.planner.capacity import Demand, Slice, nodes_needed
from peakwise.planner.greedy import Allocation, Packing

BANDS = ((4.0, 4.0), (16.0, 3.0), (64.0, 2.0), (256.0, 1.5), (math.inf, 1.0))
"""(upper end in replicas, weight): the concave scale of a shortfall. Replica 3 of a target
weighs 4, replica 100 weighs 1.5."""
SHORTFALL_WEIGHT = 10.0
"""A replica short costs this many of the dearest node-hours: serving beats saving."""
BELOW_MINIMUM_WEIGHT = 100.0
BELOW_FLOOR_WEIGHT = 50.0
KEEP_CREDIT = 0.015
"""A replica costs twice this share of the deployment's cheapest replica-hour, and one kept
where it runs earns it back once: of plans that cost the same, the one that moves nothing
wins, and a replica no one needs is still dropped. Above the solver's gap (a hundredth of the
cheapest), far below any real saving."""


def _cheapest(demand: Demand) -> float:
    prices = [o.price for o in demand.options if o.price > 0]
    return min(prices, default=1e-4)


class _Rows:
    """Accumulates sparse constraint rows lb <= a·x <= ub."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: Sequence[tuple[int, float]], lb: float, ub: float) -> None:
        r = len(self.lb)
        for c, v in terms:
            self.rows.append(r)
            self.cols.append(c)
            self.vals.append(v)
        self.lb.append(lb)
        self.ub.append(ub)


def _bands(total: float) -> list[tuple[float, float]]:
    """(width, weight) of each band below `total` replicas."""
    out, start = [], 0.0
    for end, weight in BANDS:
        width = min(end, total) - start
        if width > 1e-9:
            out.append((width, weight))
        start = end
        if start >= total:
            break
    return out


@dataclass(frozen=True)
class Solution:
    """What HiGHS handed back for one level."""

    allocations: dict[int, Allocation]
    objective: float
    proven: bool
    """Within the gap of the optimum; False when HiGHS stopped at its time limit with what it
    had found so far."""


@dataclass(frozen=True)
class _Model:
    cost: NDArray[np.float64]
    integrality: NDArray[np.int64]
    upper: NDArray[np.float64]
    constraints: LinearConstraint
    x_index: dict[int, list[int]]
    abs_gap: float


def allocate(
    demands: Sequence[Demand],
    members: Sequence[int],
    slices: Sequence[Slice],
    packing: Packing,
    time_limit: float,
) -> Solution | None:
    """Optimal allocation per member, on top of what `packing` already holds (other
    namespaces' replicas), or None if HiGHS found no solution in time."""
    model = _build(demands, members, slices, packing)
    if model is None:
        return Solution({}, 0.0, proven=True)
    return _solve(model, np.zeros(len(model.cost)), model.upper, time_limit)


def evaluate(
    demands: Sequence[Demand],
    members: Sequence[int],
    slices: Sequence[Slice],
    packing: Packing,
    allocations: Mapping[int, Allocation],
    time_limit: float,
) -> float | None:
    """The objective `allocate` minimises, for the given replicas per member (nodes and
    penalties then follow), or None if they do not fit the program."""
    model = _build(demands, members, slices, packing)
    if model is None:
        return 0.0
    lower, upper = np.zeros(len(model.cost)), model.upper.copy()
    for d, xs in model.x_index.items():
        given = allocations.get(d, {})
        for i, x in enumerate(xs):
            lower[x] = upper[x] = float(given.get(i, 0))
    solution = _solve(model, lower, upper, time_limit)
    return solution.objective if solution is not None and solution.proven else None


def _build(
    demands: Sequence[Demand],
    members: Sequence[int],
    slices: Sequence[Slice],
    packing: Packing,
) -> _Model | None:
    cost: list[float] = []
    integer: list[int] = []
    upper: list[float] = []

    def var(c: float, is_int: bool, ub: float = np.inf) -> int:
        cost.append(c)
        integer.append(1 if is_int else 0)
        upper.append(ub)
        return len(cost) - 1

    top_price = max((s.node_price for s in slices), default=1.0) or 1.0
    rows = _Rows()
    x_index: dict[int, list[int]] = {}
    on_slice: dict[tuple[int, int], list[int]] = {}
    reserved_use: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for d in members:
        demand = demands[d]
        weight = SHORTFALL_WEIGHT * top_price * demand.factor
        per_replica = 2 * KEEP_CREDIT * _cheapest(demand)
        xs = [var(per_replica, True, float(demand.hi)) for _ in demand.options]
        x_index[d] = xs
        for x, o in zip(xs, demand.options, strict=True):
            on_slice.setdefault((o.slice, o.gpus), []).append(x)
            if o.slice in packing.shares:
                reserved_use.setdefault((o.slice, demand.namespace), []).append((x, o.gpus))
        reference = demand.reference
        served = [(x, o.effective / reference) for x, o in zip(xs, demand.options, strict=True)]
        target = demand.solve_target / reference
        short = [var(weight * w, False, width) for width, w in _bands(target)]
        rows.add([*served, *((s, 1.0) for s in short)], target, np.inf)
        rows.add([(x, 1.0) for x in xs], -np.inf, demand.hi)
        if demand.lo > 0:
            # Smaller minimums first, as the greedy places them, so a huge minimum is served
            # after the others', not tied with them; priorities (the tenant's, within its
            # namespace) do not order minimums.
            small_first = SHORTFALL_WEIGHT * top_price * (1.0 + 1.0 / demand.lo)
            below = [
                var(BELOW_MINIMUM_WEIGHT * small_first * w, False, width)
                for width, w in _bands(demand.lo)
            ]
            rows.add([*((x, 1.0) for x in xs), *((b, 1.0) for b in below)], demand.lo, np.inf)
        for i, running in demand.current.items():
            if i < len(xs) and running > 0:
                kept = var(-KEEP_CREDIT * _cheapest(demand), False, float(running))
                rows.add([(kept, 1.0), (xs[i], -1.0)], -np.inf, 0.0)
        spot_terms = [
            (x, (1.0 - demand.spot_fraction) if o.is_spot else -demand.spot_fraction)
            for x, o in zip(xs, demand.options, strict=True)
        ]
        rows.add(spot_terms, -np.inf, 0.0)
        if demand.on_demand_min > 0:
            below_floor = var(BELOW_FLOOR_WEIGHT * weight, False)
            non_spot = [(x, 1.0) for x, o in zip(xs, demand.options, strict=True) if not o.is_spot]
            rows.add([*non_spot, (below_floor, 1.0)], demand.on_demand_min, np.inf)

    # Whole nodes per slice and replica size, on top of what others already placed there.
    sizes_of_slice: dict[int, set[int]] = {}
    for s, gpus in on_slice:
        sizes_of_slice.setdefault(s, set()).add(gpus)
    for s, sizes in sorted(sizes_of_slice.items()):
        sl = slices[s]
        held = packing.use[s].by_gpus
        fixed = {g: n for g, n in held.items() if g not in sizes}
        free_nodes = sl.max_nodes - nodes_needed(fixed, sl.gpus_per_node)
        nodes = []
        for gpus in sorted(sizes):
            n = var(sl.node_price, True, float(max(0, free_nodes)))
            nodes.append(n)
            xs = on_slice[(s, gpus)]
            slots = float(sl.gpus_per_node // gpus)
            rows.add([*((x, 1.0) for x in xs), (n, -slots)], -np.inf, -float(held.get(gpus, 0)))
        rows.add([(n, 1.0) for n in nodes], -np.inf, float(max(0, free_nodes)))

    # Reserved slices: beyond its guarantee a namespace draws on the unguaranteed part.
    excess_of_slice: dict[int, list[int]] = {}
    for (s, ns), terms in sorted(reserved_use.items()):
        share = packing.shares[s]
        excess = var(0.0, False)
        excess_of_slice.setdefault(s, []).append(excess)
        used = [(x, float(g)) for x, g in terms]
        rows.add([*used, (excess, -1.0)], -np.inf, float(share.guaranteed.get(ns, 0)))
    for s, excesses in excess_of_slice.items():
        left = packing.shares[s].leftover - packing.leftover_used(s)
        rows.add([(e, 1.0) for e in excesses], -np.inf, float(max(0, left)))

    if not cost:
        return None
    shape = (len(rows.lb), len(cost))
    matrix = coo_array((rows.vals, (rows.rows, rows.cols)), shape=shape).tocsr()
    prices = [o.price for d in members for o in demands[d].options if o.price > 0]
    return _Model(
        cost=np.array(cost),
        integrality=np.array(integer),
        upper=np.array(upper),
        constraints=LinearConstraint(matrix, np.array(rows.lb), np.array(rows.ub)),
        x_index=x_index,
        # A hundredth of the cheapest replica-hour: finer than any choice that matters.
        abs_gap=max(1e-6, 0.01 * min(prices, default=1e-4)),
    )


def _solve(
    model: _Model, lower: NDArray[np.float64], upper: NDArray[np.float64], time_limit: float
) -> Solution | None:
    with warnings.catch_warnings():
        # scipy passes options it does not know to HiGHS verbatim, and says so.
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        result = milp(
            c=model.cost,
            integrality=model.integrality,
            bounds=Bounds(lower, upper),
            constraints=model.constraints,
            options={
                "time_limit": time_limit,
                "disp": False,
                "mip_rel_gap": 1e-9,
                "mip_abs_gap": model.abs_gap,
            },
        )
    if result.x is None:
        return None
    values = np.rint(result.x).astype(int)
    allocations = {
        d: {i: int(values[x]) for i, x in enumerate(xs) if values[x] > 0}
        for d, xs in model.x_index.items()
    }
    # scipy's status 0: optimal within the gaps; 1: stopped at the time limit.
    return Solution(allocations, float(result.fun), proven=result.status == 0)

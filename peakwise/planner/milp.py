"""Exact allocation as a mixed-integer program, solved by HiGHS (scipy.optimize.milp).

Minimises what the nodes cost, with heavy penalties for demand left unserved, for falling
below a minimum and for missing an on-demand floor, so the program is always feasible and
the penalties only bite when pools run out. Whole nodes are counted per replica size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from peakwise.planner.capacity import Demand, Slice
from peakwise.planner.greedy import Allocation


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


def allocate(
    demands: Sequence[Demand], slices: Sequence[Slice], time_limit: float
) -> dict[int, Allocation] | None:
    """Optimal allocation per demand index, or None if HiGHS found no solution in time."""
    cost: list[float] = []
    integer: list[int] = []
    upper: list[float] = []

    def var(c: float, is_int: bool, ub: float = np.inf) -> int:
        cost.append(c)
        integer.append(1 if is_int else 0)
        upper.append(ub)
        return len(cost) - 1

    top_price = max((s.node_price for s in slices), default=1.0) or 1.0
    top_priority = max((d.priority for d in demands), default=0) + 1
    rows = _Rows()
    x_index: list[list[int]] = []
    on_slice: dict[tuple[int, int], list[int]] = {}
    for d in demands:
        # Higher priority pays more for a shortfall, so it keeps contended capacity.
        weight = 10.0 * top_price * (1.0 + d.priority / top_priority)
        xs = [var(1e-6, True, float(d.hi)) for _ in d.options]
        x_index.append(xs)
        for x, o in zip(xs, d.options, strict=True):
            on_slice.setdefault((o.slice, o.gpus), []).append(x)
        reference = max((o.effective for o in d.options), default=1.0)
        short = var(weight / reference, False)
        rows.add(
            [*((x, o.effective) for x, o in zip(xs, d.options, strict=True)), (short, 1.0)],
            d.target,
            np.inf,
        )
        rows.add([(x, 1.0) for x in xs], -np.inf, d.hi)
        below_min = var(100.0 * weight, False)
        rows.add([*((x, 1.0) for x in xs), (below_min, 1.0)], d.lo, np.inf)
        spot_terms = [
            (x, (1.0 - d.spot_fraction) if o.is_spot else -d.spot_fraction)
            for x, o in zip(xs, d.options, strict=True)
        ]
        rows.add(spot_terms, -np.inf, 0.0)
        if d.on_demand_min > 0:
            below_floor = var(50.0 * weight, False)
            non_spot = [(x, 1.0) for x, o in zip(xs, d.options, strict=True) if not o.is_spot]
            rows.add([*non_spot, (below_floor, 1.0)], d.on_demand_min, np.inf)

    nodes_of_slice: dict[int, list[int]] = {}
    for (s, gpus), xs in sorted(on_slice.items()):
        sl = slices[s]
        n = var(sl.node_price, True, float(sl.max_nodes))
        nodes_of_slice.setdefault(s, []).append(n)
        rows.add([*((x, 1.0) for x in xs), (n, -float(sl.gpus_per_node // gpus))], -np.inf, 0.0)
    for s, ns in nodes_of_slice.items():
        rows.add([(n, 1.0) for n in ns], -np.inf, float(slices[s].max_nodes))

    if not cost:
        return {}
    matrix = coo_array((rows.vals, (rows.rows, rows.cols)), shape=(len(rows.lb), len(cost))).tocsr()
    result = milp(
        c=np.array(cost),
        integrality=np.array(integer),
        bounds=Bounds(np.zeros(len(cost)), np.array(upper)),
        constraints=LinearConstraint(matrix, np.array(rows.lb), np.array(rows.ub)),
        options={"time_limit": time_limit, "disp": False, "mip_rel_gap": 1e-3},
    )
    if result.x is None:
        return None
    values = np.rint(result.x).astype(int)
    return {
        d: {i: int(values[x]) for i, x in enumerate(xs) if values[x] > 0}
        for d, xs in enumerate(x_index)
    }

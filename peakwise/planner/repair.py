"""After the solve: what a time-limited exact solve left below the minimums' placement is put
back, and what is still free (capacity a Hard budget trimmed, room the greedy's holds left)
is offered to whoever is short, in the same round. Pure, like the rest of the planner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from peakwise.planner import greedy
from peakwise.planner.capacity import Demand, Slice
from peakwise.planner.greedy import Allocation, Packing
from peakwise.planner.tenancy import ReservedShare


def repair_minimums(
    demands: Sequence[Demand],
    allocations: dict[int, Allocation],
    packing: Packing,
    placed: Mapping[int, int],
) -> None:
    """Give back what the greedy placement of minimums (smaller first) gave a deployment but
    the solve did not (a time limit, or a trade its objective found worth it): from free room
    first, then one replica at a time, on the same slice, from a deployment of the level above
    its own minimum, or one with a larger minimum above what the placement gave it."""
    order = greedy.minimum_order(demands, list(allocations))
    position = {d: k for k, d in enumerate(order)}
    for d in order:
        demand, floor = demands[d], placed.get(d, 0)
        if sum(allocations[d].values()) >= floor:
            continue
        allocations[d] = greedy.allocate_one(demand, packing, start=allocations[d], target=0.0)

        def keep(e: int, d: int = d) -> int | None:
            """Fewest replicas donor e must keep, or None if it may not give."""
            if e == d:
                return None
            if position[e] > position[d]:  # a larger minimum: keeps what the placement gave it
                return placed.get(e, 0)
            return demands[e].lo if sum(allocations[e].values()) > demands[e].lo else None

        while sum(allocations[d].values()) < floor and _move_one(
            demands, allocations, packing, d, keep
        ):
            pass


def _move_one(
    demands: Sequence[Demand],
    allocations: dict[int, Allocation],
    packing: Packing,
    d: int,
    keep: Callable[[int], int | None],
) -> bool:
    """One replica more for d, from room donors on the same slice give up: replicas of the
    same size first, else as many of other sizes (from one donor or several) as free a node."""
    demand = demands[d]
    for i in sorted(range(len(demand.options)), key=lambda i: (demand.options[i].price, i)):
        want = demand.options[i]
        if not _may_add(demand, allocations[d], i):
            continue
        donors = sorted(
            (e for e in allocations if keep(e) is not None),
            key=lambda e: (-demands[e].solve_target / demands[e].reference, demands[e].key),
        )
        trials: dict[int, Allocation] = {}
        freed = False
        for e in donors:
            donor = demands[e]
            trial = dict(allocations[e])
            on_slice = sorted(
                (j for j, n in trial.items() if n > 0 and donor.options[j].slice == want.slice),
                key=lambda j: (donor.options[j].gpus != want.gpus, j),
            )
            for j in on_slice:
                while trial.get(j, 0) > 0 and not freed:
                    after = _without_one(donor, trial, j)
                    if sum(after.values()) < (keep(e) or 0):
                        break
                    packing.place(donor, trial, sign=-1)
                    packing.place(donor, after)
                    trial = after
                    trials[e] = trial
                    freed = packing.room(want, demand.namespace) > 0
                if freed:
                    break
            if freed:
                break
        if not freed:  # nothing the donors may give makes room: undo
            for e, trial in trials.items():
                packing.place(demands[e], trial, sign=-1)
                packing.place(demands[e], allocations[e])
            continue
        allocations.update(trials)
        packing.add(want, demand.namespace, 1)
        allocations[d][i] = allocations[d].get(i, 0) + 1
        return True
    return False


def _without_one(demand: Demand, allocation: Allocation, i: int) -> Allocation:
    """One replica of option i less, and the spot replicas its spot fraction then forbids."""
    out = dict(allocation)

    def drop(j: int) -> None:
        out[j] -= 1
        if out[j] == 0:
            del out[j]

    drop(i)
    while True:
        spot = [j for j in out if demand.options[j].is_spot]
        if sum(out[j] for j in spot) <= demand.spot_fraction * sum(out.values()) + 1e-9:
            return out
        drop(max(spot, key=lambda j: (demand.options[j].price, j)))


def _may_add(demand: Demand, allocation: Allocation, i: int) -> bool:
    total = sum(allocation.values())
    spot = sum(n for j, n in allocation.items() if demand.options[j].is_spot)
    if not demand.options[i].is_spot:
        return total < demand.hi
    return total < demand.hi and spot + 1 <= demand.spot_fraction * (total + 1) + 1e-9


def reoffer(
    demands: Sequence[Demand],
    allocations: dict[int, Allocation],
    slices: Sequence[Slice],
    shares: Mapping[int, ReservedShare],
    left: Mapping[str, float],
) -> None:
    """Offer what is still free (capacity a budget trimmed, room the greedy's holds left) to
    whoever is short, minimums first, in the greedy's order, within each Hard budget's
    remaining $/h (`left`)."""
    packing = Packing(slices, shares)
    for d, a in allocations.items():
        packing.place(demands[d], a)
    remaining = {ns: [v] for ns, v in left.items()}
    everyone = list(range(len(demands)))

    def some_room(demand: Demand) -> bool:
        return any(packing.room(o, demand.namespace) > 0 for o in demand.options)

    # Minimums first here too, then targets.
    for d in greedy.minimum_order(demands, everyone):
        demand = demands[d]
        if sum(allocations[d].values()) < demand.lo and some_room(demand):
            allocations[d] = greedy.allocate_one(
                demand,
                packing,
                start=allocations[d],
                budget=remaining.get(demand.namespace),
                target=0.0,
            )
    for d in greedy.target_order(demands, everyone):
        demand, allocation = demands[d], allocations[d]
        capacity = sum(demand.options[i].effective * n for i, n in allocation.items())
        if capacity >= demand.solve_target - 1e-9 or not some_room(demand):
            continue
        allocations[d] = greedy.allocate_one(
            demand, packing, start=allocation, budget=remaining.get(demand.namespace)
        )

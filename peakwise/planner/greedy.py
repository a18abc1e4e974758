"""Fast allocation: deployments in priority order, each buying its cheapest capacity first."""

from __future__ import annotations

import math
from collections.abc import Sequence

from peakwise.planner.capacity import Demand, Option, Slice, nodes_needed

Allocation = dict[int, int]
"""Replicas per option index of one deployment."""


class SliceUse:
    """Replicas placed on one slice so far, by replica size."""

    def __init__(self, slice_: Slice) -> None:
        self.slice = slice_
        self.by_gpus: dict[int, int] = {}

    def room(self, gpus: int) -> int:
        """How many more replicas of `gpus` GPUs fit within the slice's nodes."""
        others = {g: n for g, n in self.by_gpus.items() if g != gpus}
        free_nodes = self.slice.max_nodes - nodes_needed(others, self.slice.gpus_per_node)
        slots = self.slice.gpus_per_node // gpus
        return max(0, free_nodes * slots - self.by_gpus.get(gpus, 0))

    def add(self, gpus: int, count: int) -> None:
        self.by_gpus[gpus] = self.by_gpus.get(gpus, 0) + count


def _spot_room(spot: int, total: int, fraction: float) -> int:
    """Spot replicas that can be added keeping spot <= fraction × total."""
    if fraction >= 1.0:
        return 1 << 30
    return max(0, math.floor((fraction * total - spot + 1e-9) / (1.0 - fraction)))


def allocate_one(demand: Demand, use: Sequence[SliceUse]) -> Allocation:
    options = demand.options
    counts = [0] * len(options)
    state = {"total": 0, "spot": 0, "capacity": 0.0}

    def limit(o: Option, wanted: int) -> int:
        k = min(wanted, demand.hi - state["total"], use[o.slice].room(o.gpus))
        if o.is_spot:
            k = min(k, _spot_room(int(state["spot"]), int(state["total"]), demand.spot_fraction))
        return max(0, int(k))

    def put(i: int, k: int) -> None:
        o = options[i]
        counts[i] += k
        use[o.slice].add(o.gpus, k)
        state["total"] += k
        state["capacity"] += k * o.effective
        if o.is_spot:
            state["spot"] += k

    by_unit_price = sorted(
        range(len(options)),
        key=lambda i: (options[i].price / options[i].effective, -options[i].effective, i),
    )
    by_replica_price = sorted(range(len(options)), key=lambda i: (options[i].price, i))

    # The on-demand floor first: the cheapest never-interrupted replicas.
    for i in by_replica_price:
        missing = demand.on_demand_min - (int(state["total"]) - int(state["spot"]))
        if missing <= 0:
            break
        if not options[i].is_spot:
            put(i, limit(options[i], missing))

    # Then capacity for the demand target, cheapest per unit of demand served.
    progress = True
    while state["capacity"] < demand.target - 1e-9 and progress:
        progress = False
        blocked = False
        for i in by_unit_price:
            o = options[i]
            wanted = math.ceil((demand.target - state["capacity"]) / o.effective - 1e-9)
            k = limit(o, wanted)
            if k > 0:
                # Behind a cheaper option held back by the spot fraction, add one at a time:
                # each non-spot replica makes room for more of the cheaper spot ones.
                put(i, 1 if blocked else k)
                progress = True
                break
            blocked = blocked or (o.is_spot and use[o.slice].room(o.gpus) > 0)

    # Then the minimum replica count, cheapest per replica.
    for i in by_replica_price:
        missing = demand.lo - int(state["total"])
        if missing <= 0:
            break
        put(i, limit(options[i], missing))

    return {i: n for i, n in enumerate(counts) if n > 0}


def allocate(demands: Sequence[Demand], slices: Sequence[Slice]) -> dict[int, Allocation]:
    """Allocation per demand index; higher priority first, so it keeps contended capacity."""
    use = [SliceUse(s) for s in slices]
    order = sorted(range(len(demands)), key=lambda d: (-demands[d].priority, demands[d].key))
    return {d: allocate_one(demands[d], use) for d in order}

"""Fast allocation: deployments in priority order, each buying its cheapest capacity first.

Minimums come first: every deployment's minimum is placed before any target is, and while one
deployment buys capacity for its target the others' minimums stay held. The order is the
platform's (namespace priority), then each namespace's own (rank), then the smaller demand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from peakwise.planner.capacity import Demand, Option, Slice, nodes_needed
from peakwise.planner.tenancy import ReservedShare

Allocation = dict[int, int]
"""Replicas per option index of one deployment."""


class SliceUse:
    """Replicas placed on one slice so far, by replica size."""

    def __init__(self, slice_: Slice) -> None:
        self.slice = slice_
        self.by_gpus: dict[int, int] = {}
        self._nodes: dict[int, int] = {}
        self._total_nodes = 0

    def room(self, gpus: int) -> int:
        """How many more replicas of `gpus` GPUs fit within the slice's nodes."""
        others = self._total_nodes - self._nodes.get(gpus, 0)
        free_nodes = self.slice.max_nodes - others
        slots = self.slice.gpus_per_node // gpus
        return max(0, free_nodes * slots - self.by_gpus.get(gpus, 0))

    def add(self, gpus: int, count: int) -> None:
        n = self.by_gpus.get(gpus, 0) + count
        self.by_gpus[gpus] = n
        nodes = nodes_needed({gpus: n}, self.slice.gpus_per_node)
        self._total_nodes += nodes - self._nodes.get(gpus, 0)
        self._nodes[gpus] = nodes


class Packing:
    """What is placed on every slice, with the reserved shares each namespace may use."""

    def __init__(self, slices: Sequence[Slice], shares: Mapping[int, ReservedShare]) -> None:
        self.slices = slices
        self.use = [SliceUse(s) for s in slices]
        self.shares = shares
        self._ns_gpus: dict[tuple[int, str], int] = defaultdict(int)
        self._leftover_used: dict[int, int] = defaultdict(int)

    def leftover_used(self, s: int) -> int:
        """GPUs of slice `s`'s unguaranteed part in use by namespaces past their guarantee."""
        return self._leftover_used[s]

    def _excess(self, s: int, ns: str, gpus: int) -> int:
        share = self.shares[s]
        return max(0, gpus - share.guaranteed.get(ns, 0))

    def room(self, o: Option, ns: str) -> int:
        """Replicas of option `o` namespace `ns` may still add."""
        room = self.use[o.slice].room(o.gpus)
        share = self.shares.get(o.slice) if room > 0 else None
        if share is not None:
            used = self._ns_gpus[(o.slice, ns)]
            own = max(0, share.guaranteed.get(ns, 0) - used)
            free = own + max(0, share.leftover - self._leftover_used[o.slice])
            room = min(room, free // o.gpus)
        return room

    def add(self, o: Option, ns: str, count: int) -> None:
        self.use[o.slice].add(o.gpus, count)
        if o.slice in self.shares:
            before = self._ns_gpus[(o.slice, ns)]
            after = before + count * o.gpus
            self._ns_gpus[(o.slice, ns)] = after
            self._leftover_used[o.slice] += self._excess(o.slice, ns, after) - self._excess(
                o.slice, ns, before
            )

    def place(self, demand: Demand, allocation: Mapping[int, int], sign: int = 1) -> None:
        """Add (or with sign=-1 take back) a whole allocation."""
        for i, n in allocation.items():
            if n:
                self.add(demand.options[i], demand.namespace, sign * n)


def _spot_room(spot: int, total: int, fraction: float) -> int:
    """Spot replicas that can be added keeping spot <= fraction × total."""
    if fraction >= 1.0:
        return 1 << 30
    return max(0, math.floor((fraction * total - spot + 1e-9) / (1.0 - fraction)))


_Orders = tuple[tuple[int, ...], tuple[int, ...]]
_orders: dict[int, tuple[tuple[Option, ...], _Orders]] = {}
"""The price orders of the option tuples last allocated for, by identity (the planner reuses
one tuple per deployment spec between rounds): a pure function's results, kept only for the
very tuple they were made from."""


def _price_orders(options: tuple[Option, ...]) -> _Orders:
    """Option indices cheapest per unit of demand first, and cheapest per replica first."""
    found = _orders.get(id(options))
    if found is not None and found[0] is options:
        return found[1]
    by_unit_price = tuple(
        sorted(
            range(len(options)),
            key=lambda i: (options[i].price / options[i].effective, -options[i].effective, i),
        )
    )
    # At the same price spot first: on-demand capacity is what the others can use too.
    by_replica_price = tuple(
        sorted(range(len(options)), key=lambda i: (options[i].price, not options[i].is_spot, i))
    )
    if not isinstance(options, tuple):  # only an immutable tuple can be known by its identity
        return by_unit_price, by_replica_price
    if len(_orders) >= 4096:
        _orders.clear()
    _orders[id(options)] = (options, (by_unit_price, by_replica_price))
    return by_unit_price, by_replica_price


def allocate_one(
    demand: Demand,
    packing: Packing,
    start: Mapping[int, int] | None = None,
    budget: list[float] | None = None,
    target: float | None = None,
) -> Allocation:
    """Add to `start` (already in `packing`) what `demand` still needs: its on-demand floor,
    capacity for its target (cheapest per unit of demand), then its minimum (cheapest per
    replica). `budget`, when given, holds the namespace's remaining $/h and is spent."""
    options = demand.options
    ns = demand.namespace
    counts = [0] * len(options)
    state = {"total": 0, "spot": 0, "capacity": 0.0}
    for i, n in (start or {}).items():
        counts[i] += n
        state["total"] += n
        state["capacity"] += n * options[i].effective
        if options[i].is_spot:
            state["spot"] += n
    goal = demand.solve_target if target is None else target

    def limit(o: Option, wanted: int) -> int:
        k = min(wanted, demand.hi - state["total"], packing.room(o, ns))
        if o.is_spot:
            k = min(k, _spot_room(int(state["spot"]), int(state["total"]), demand.spot_fraction))
        if budget is not None and o.price > 0:
            k = min(k, math.floor(budget[0] / o.price + 1e-9))
        return max(0, int(k))

    def put(i: int, k: int) -> None:
        o = options[i]
        counts[i] += k
        packing.add(o, ns, k)
        state["total"] += k
        state["capacity"] += k * o.effective
        if o.is_spot:
            state["spot"] += k
        if budget is not None:
            budget[0] -= k * o.price

    by_unit_price, by_replica_price = _price_orders(options)

    # The on-demand floor first: the cheapest never-interrupted replicas.
    for i in by_replica_price:
        missing = demand.on_demand_min - (int(state["total"]) - int(state["spot"]))
        if missing <= 0:
            break
        if not options[i].is_spot:
            put(i, limit(options[i], missing))

    # Then capacity for the demand target, cheapest per unit of demand served.
    progress = True
    while state["capacity"] < goal - 1e-9 and progress:
        progress = False
        blocked = False
        for i in by_unit_price:
            o = options[i]
            wanted = math.ceil((goal - state["capacity"]) / o.effective - 1e-9)
            k = limit(o, wanted)
            if k > 0:
                # Behind a cheaper option held back by the spot fraction, add one at a time:
                # each non-spot replica makes room for more of the cheaper spot ones.
                put(i, 1 if blocked else k)
                progress = True
                break
            blocked = blocked or (o.is_spot and packing.room(o, ns) > 0)

    # Then the minimum replica count, cheapest per replica; again until nothing fits, since
    # each non-spot replica makes room for a cheaper spot one.
    progress = True
    while demand.lo > state["total"] and progress:
        progress = False
        blocked = False
        for i in by_replica_price:
            o = options[i]
            k = limit(o, demand.lo - int(state["total"]))
            if k > 0:
                put(i, 1 if blocked else k)
                progress = True
                break
            blocked = blocked or (o.is_spot and packing.room(o, ns) > 0)

    return {i: n for i, n in enumerate(counts) if n > 0}


def target_order(demands: Sequence[Demand], members: Sequence[int]) -> list[int]:
    """Who buys capacity first: the platform's level, the namespace's own rank, then the
    smaller demand (so one huge claim is served after everyone else's at its rank)."""
    return sorted(
        members,
        key=lambda d: (
            demands[d].level,
            demands[d].rank,
            demands[d].solve_target / demands[d].reference,
            demands[d].key,
        ),
    )


def minimum_order(demands: Sequence[Demand], members: Sequence[int]) -> list[int]:
    """Whose minimum is placed first: the platform's level, then the smaller minimum, so a
    tenant asking for a huge minimum cannot take the capacity of everyone else's; among
    equal minimums the one with fewer places to run."""
    return sorted(
        members,
        key=lambda d: (demands[d].level, demands[d].lo, len(demands[d].options), demands[d].key),
    )


def place_minimums(
    demands: Sequence[Demand], members: Sequence[int], packing: Packing
) -> dict[int, Allocation]:
    """Every member's minimum (and on-demand floor), in `minimum_order`, into `packing`."""
    return {
        d: allocate_one(demands[d], packing, target=0.0) for d in minimum_order(demands, members)
    }


def allocate(
    demands: Sequence[Demand],
    members: Sequence[int],
    packing: Packing,
    held: dict[int, Allocation] | None = None,
) -> dict[int, Allocation]:
    """Allocation per member. `held` are the members' minimums already in `packing` (from
    `place_minimums`); each member takes its own back and buys what it needs, while the
    minimums of those after it stay held."""
    held = dict(held) if held is not None else place_minimums(demands, members, packing)
    out = {}
    for d in target_order(demands, members):
        own = held.pop(d, {})
        packing.place(demands[d], own, sign=-1)
        out[d] = allocate_one(demands[d], packing)
    return out

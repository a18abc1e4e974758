"""Fast allocation: deployments in priority order, each buying its cheapest capacity first.

Minimums come first: every deployment's minimum is placed before any target is, and while one
deployment buys capacity for its target the others' minimums stay held. The order is the
platform's (namespace priority), then each namespace's own (rank), then the smaller demand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from peakwise.planner.capacity import Demand, Option, Slice
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
        self._max_nodes = slice_.max_nodes
        self._gpus_per_node = slice_.gpus_per_node

    def room(self, gpus: int) -> int:
        """How many more replicas of `gpus` GPUs fit within the slice's nodes."""
        free_nodes = self._max_nodes - self._total_nodes + self._nodes.get(gpus, 0)
        room = free_nodes * (self._gpus_per_node // gpus) - self.by_gpus.get(gpus, 0)
        return room if room > 0 else 0

    def add(self, gpus: int, count: int) -> None:
        n = self.by_gpus.get(gpus, 0) + count
        self.by_gpus[gpus] = n
        # Each size on nodes of its own (as capacity.nodes_needed counts them).
        nodes = -(-n // (self._gpus_per_node // gpus)) if n > 0 else 0
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

    def room(self, o: Option, ns: str) -> int:
        """Replicas of option `o` namespace `ns` may still add."""
        room = self.use[o.slice].room(o.gpus)
        if room > 0 and o.slice in self.shares:
            share = self.shares[o.slice]
            used = self._ns_gpus[(o.slice, ns)]
            own = max(0, share.guaranteed.get(ns, 0) - used)
            free = own + max(0, share.leftover - self._leftover_used[o.slice])
            room = min(room, free // o.gpus)
        return room

    def add(self, o: Option, ns: str, count: int) -> None:
        self.use[o.slice].add(o.gpus, count)
        if o.slice in self.shares:
            guaranteed = self.shares[o.slice].guaranteed.get(ns, 0)
            before = self._ns_gpus[(o.slice, ns)]
            after = before + count * o.gpus
            self._ns_gpus[(o.slice, ns)] = after
            # Past its guarantee a namespace draws on the part nobody was guaranteed.
            self._leftover_used[o.slice] += max(0, after - guaranteed) - max(0, before - guaranteed)

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
    hi, fraction = demand.hi, demand.spot_fraction
    counts = [0] * len(options)
    total = spot = 0
    capacity = 0.0
    for i, n in (start or {}).items():
        counts[i] += n
        total += n
        capacity += n * options[i].effective
        if options[i].is_spot:
            spot += n
    goal = demand.solve_target if target is None else target
    # Every option is on a slice of its own, so its room shrinks by exactly what is added to
    # it here: read once, placed at the end (the same packing as replica by replica).
    room = [packing.room(o, ns) for o in options]
    spot_option = [o.is_spot for o in options]
    money = budget[0] if budget is not None else math.inf

    def limit(i: int, wanted: int) -> int:
        k = min(wanted, hi - total, room[i])
        if k > 0 and spot_option[i]:
            k = min(k, _spot_room(spot, total, fraction))
        if k > 0 and budget is not None and options[i].price > 0:
            k = min(k, math.floor(money / options[i].price + 1e-9))
        return k if k > 0 else 0

    def put(i: int, k: int) -> None:
        nonlocal total, spot, capacity, money
        o = options[i]
        counts[i] += k
        room[i] -= k
        total += k
        capacity += k * o.effective
        if o.is_spot:
            spot += k
        if budget is not None:
            money -= k * o.price

    by_unit_price = demand.by_unit_price
    by_replica_price = demand.by_replica_price

    # The on-demand floor first: the cheapest never-interrupted replicas.
    for i in by_replica_price:
        missing = demand.on_demand_min - (total - spot)
        if missing <= 0:
            break
        if not options[i].is_spot:
            put(i, limit(i, missing))

    # Then capacity for the demand target, cheapest per unit of demand served.
    progress = True
    while capacity < goal - 1e-9 and progress:
        progress = False
        blocked = False
        for i in by_unit_price:
            o = options[i]
            wanted = math.ceil((goal - capacity) / o.effective - 1e-9)
            k = limit(i, wanted)
            if k > 0:
                # Behind a cheaper option held back by the spot fraction, add one at a time:
                # each non-spot replica makes room for more of the cheaper spot ones.
                put(i, 1 if blocked else k)
                progress = True
                break
            blocked = blocked or (o.is_spot and room[i] > 0)

    # Then the minimum replica count, cheapest per replica; again until nothing fits, since
    # each non-spot replica makes room for a cheaper spot one.
    progress = True
    while demand.lo > total and progress:
        progress = False
        blocked = False
        for i in by_replica_price:
            o = options[i]
            k = limit(i, demand.lo - total)
            if k > 0:
                put(i, 1 if blocked else k)
                progress = True
                break
            blocked = blocked or (o.is_spot and room[i] > 0)

    base = start or {}
    for i, n in enumerate(counts):
        if n != base.get(i, 0):
            packing.add(options[i], ns, n - base.get(i, 0))
    if budget is not None:
        budget[0] = money
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

"""A minute-by-minute simulation of a whole fleet's capacity in shared GPU pools.

The single-service simulator (``simulator.py``) gives each service nodes of its own. In a
fleet, services share pools: replicas of several services pack onto one pool's nodes, a
replica that fits on a node another service left room on is ready after its model load
only, reserved nodes are paid once for everyone, and a node's bill is shared by the
services holding its GPUs. The rules are otherwise the same: a replica needing a new node
is ready after the pool's provisioning time plus the service's model load, nodes are billed
from the moment they are asked for, scale-down cancels starting replicas first, and spot
nodes are interrupted at random (seeded), taking their replicas with them.

Pure: numbers in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from peakwise.api.common import CapacityType

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class FleetPool:
    """A pool as the fleet simulation sees it."""

    name: str
    tier: CapacityType
    gpus_per_node: int
    node_price: float
    """$/node-hour."""
    reserved_nodes: int
    min_nodes: int
    max_nodes: int
    provisioning_minutes: int
    interruptions_per_node_hour: float = 0.0


@dataclass(frozen=True)
class Placement:
    """One service's replicas on one pool: the profile it runs there."""

    service: int
    pool: int
    gpus: int
    """GPUs one replica takes."""
    throughput: float
    """Demand units/s one ready replica serves."""
    load_minutes: int


@dataclass
class FleetRecord:
    """What a fleet simulation observed, minute by minute."""

    ready: IntArray
    """[minute, placement] ready replicas."""
    requested: IntArray
    """[minute, placement] replicas ready or starting (what a node's bill is shared by)."""
    nodes: IntArray
    """[minute, pool] nodes billed."""
    interruptions: int = 0


Decide = Callable[[int, IntArray], IntArray]
"""(minute, requested replicas per placement now) -> desired replicas per placement."""


class FleetSimulator:
    """Pools shared by services; ``step`` applies one minute of desired replicas.

    Kept incrementally, so that a minute in which nothing changes costs next to nothing:
    each placement's ready and starting replicas, and each pool's nodes."""

    def __init__(
        self, pools: Sequence[FleetPool], placements: Sequence[Placement], seed: int = 0
    ) -> None:
        self.pools = list(pools)
        self.placements = list(placements)
        self.rng = np.random.default_rng(seed)
        count = len(self.placements)
        self.ready = [0] * count
        self.starting = [0] * count
        """Replicas asked for and not ready yet, per placement."""
        self.pending: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        self.by_pool: list[list[int]] = [[] for _ in self.pools]
        for k, placement in enumerate(self.placements):
            self.by_pool[placement.pool].append(k)
        self._slots = [
            max(1, self.pools[pl.pool].gpus_per_node // pl.gpus) for pl in self.placements
        ]
        self._nodes = [self._floor(p) for p in range(len(self.pools))]
        self.interruptions = 0

    def requested(self) -> IntArray:
        return np.add(self.ready, self.starting, dtype=np.int64)

    def _held_nodes(self, pool: int, counts: Sequence[int]) -> int:
        """Nodes the replicas of `pool` need, each replica size packed on nodes of its own."""
        by_size: dict[int, int] = {}
        for k, n in zip(self.by_pool[pool], counts, strict=True):
            if n:
                g = self.placements[k].gpus
                by_size[g] = by_size.get(g, 0) + n
        gpus = self.pools[pool].gpus_per_node
        return sum(-(-n // max(1, gpus // g)) for g, n in by_size.items())

    def _floor(self, pool: int) -> int:
        spec = self.pools[pool]
        floor = spec.min_nodes
        if spec.tier == "reserved":
            floor = max(floor, spec.reserved_nodes)
        return min(floor, spec.max_nodes)

    def nodes(self, pool: int) -> int:
        return self._nodes[pool]

    def step(self, minute: int, desired: IntArray) -> None:
        """Apply desired replicas per placement at the start of `minute`."""
        ready, starting = self.ready, self.starting
        for p, members in enumerate(self.by_pool):
            if not members:
                continue
            interrupted = self._interrupt(p)
            wants = [max(0, int(desired[k])) for k in members]
            counts = [ready[k] + starting[k] for k in members]
            changed = wants != counts
            if changed:
                self._resize(p, minute, members, wants, counts)
            arrived = False
            for k in members:
                if starting[k]:
                    pending = self.pending[k]
                    came = sum(n for t, n in pending if t <= minute)
                    if came:
                        ready[k] += came
                        starting[k] -= came
                        self.pending[k] = [(t, n) for t, n in pending if t > minute]
                        arrived = True
            if changed or interrupted or arrived:
                held = self._held_nodes(p, [ready[k] + starting[k] for k in members])
                self._nodes[p] = max(held, self._floor(p))

    def _resize(
        self, p: int, minute: int, members: Sequence[int], wants: list[int], counts: list[int]
    ) -> None:
        spec = self.pools[p]
        # Scale-downs first: the room they free is there for this minute's scale-ups.
        for i, k in enumerate(members):
            if wants[i] < counts[i]:
                self._remove(k, counts[i] - wants[i])
                counts[i] = wants[i]
        for i, k in enumerate(members):
            if wants[i] <= counts[i]:
                continue
            placement = self.placements[k]
            slots = self._slots[k]
            held = self._held_nodes(p, counts)
            nodes_now = max(held, self._floor(p))
            # The pool never grows past maxNodes: what does not fit is not started.
            room_nodes = spec.max_nodes - held
            same_size = sum(
                counts[j]
                for j, m in enumerate(members)
                if self.placements[m].gpus == placement.gpus
            )
            free_in_size_nodes = -(-same_size // slots) * slots - same_size
            free = free_in_size_nodes + (nodes_now - held) * slots
            most = free_in_size_nodes + room_nodes * slots
            add = min(wants[i] - counts[i], max(0, most))
            on_existing = min(add, max(0, free))
            if on_existing:
                self.pending[k].append((minute + placement.load_minutes, on_existing))
            rest = add - on_existing
            if rest:
                ready_at = minute + spec.provisioning_minutes + placement.load_minutes
                self.pending[k].append((ready_at, rest))
            self.starting[k] += add
            counts[i] += add

    def _remove(self, k: int, count: int) -> None:
        # Starting replicas go first (newest first), then ready ones.
        pending = self.pending[k]
        while count and pending:
            t, n = pending.pop()
            taken = min(n, count)
            count -= taken
            self.starting[k] -= taken
            if n > taken:
                pending.append((t, n - taken))
        self.ready[k] -= min(count, self.ready[k])

    def _interrupt(self, p: int) -> bool:
        spec = self.pools[p]
        if spec.tier != "spot" or spec.interruptions_per_node_hour <= 0:
            return False
        members = self.by_pool[p]
        ready = [self.ready[k] for k in members]
        if not any(ready):
            return False
        ready_nodes = self._held_nodes(p, ready)
        lost = int(self.rng.binomial(ready_nodes, min(1.0, spec.interruptions_per_node_hour / 60)))
        if not lost:
            return False
        self.interruptions += lost
        share = lost / ready_nodes
        for k, n in zip(members, ready, strict=True):
            if n:
                self.ready[k] -= min(n, int(self.rng.binomial(n, share)))
        return True


def simulate_fleet(
    pools: Sequence[FleetPool],
    placements: Sequence[Placement],
    minutes: int,
    decide: Decide,
    seed: int,
    progress: Callable[[float], None] | None = None,
) -> FleetRecord:
    """Run `decide` minute by minute against a fresh simulator; record what happened."""
    sim = FleetSimulator(pools, placements, seed)
    count = len(placements)
    ready = np.zeros((minutes, count), dtype=np.int64)
    requested = np.zeros((minutes, count), dtype=np.int64)
    nodes = np.zeros((minutes, len(pools)), dtype=np.int64)
    for t in range(minutes):
        desired = decide(t, sim.requested())
        sim.step(t, desired)
        ready[t] = sim.ready
        requested[t] = sim.requested()
        nodes[t] = sim._nodes
        if progress is not None and t % 720 == 0:
            progress(t / minutes)
    return FleetRecord(ready, requested, nodes, sim.interruptions)


def attribute_cost(
    pools: Sequence[FleetPool],
    placements: Sequence[Placement],
    record: FleetRecord,
    services: int,
    *,
    billable_only: bool = False,
) -> tuple[FloatArray, FloatArray]:
    """Each minute's bill ($) per service, and what no service holds (idle reserved or
    minimum nodes): a pool's bill is shared by the GPUs each service holds on it. With
    `billable_only`, what a budget counts (``planner.billing``): reserved nodes are paid for
    already, so only a reserved pool's nodes beyond its reservedNodes are billed."""
    minutes = record.nodes.shape[0]
    per_service = np.zeros((minutes, services))
    unattributed = np.zeros(minutes)
    for p, pool in enumerate(pools):
        nodes = record.nodes[:, p]
        if billable_only and pool.tier == "reserved":
            nodes = np.maximum(nodes - pool.reserved_nodes, 0)
        bill = nodes * pool.node_price / 60.0
        members = [k for k, pl in enumerate(placements) if pl.pool == p]
        if not members:
            continue
        gpus = np.stack(
            [record.requested[:, k] * placements[k].gpus for k in members], axis=1
        ).astype(np.float64)
        total = gpus.sum(axis=1)
        held = total > 0
        unattributed += np.where(held, 0.0, bill)
        shares = np.divide(gpus, total[:, None], out=np.zeros_like(gpus), where=held[:, None])
        for column, k in enumerate(members):
            per_service[:, placements[k].service] += bill * shares[:, column]
    return per_service, unattributed

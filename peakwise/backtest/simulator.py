"""A minute-by-minute simulation of one service's capacity in its GPU pools.

It honours what makes GPU capacity hard: replicas on a new node are ready only after the
pool's provisioning time plus the model's load time, nodes are billed from the moment they
are asked for, reserved nodes are paid whether used or not, and spot nodes are interrupted
at random (seeded) and take their replicas with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from peakwise.api.common import CapacityType


@dataclass(frozen=True)
class SimPool:
    """One pool as the simulated service uses it."""

    name: str
    tier: CapacityType
    slots: int
    """Replicas of this service per node."""
    throughput: float
    """Demand units/s one ready replica serves."""
    node_price: float
    """$/node-hour."""
    reserved_nodes: int
    max_nodes: int
    provisioning_minutes: int
    load_minutes: int
    interruptions_per_node_hour: float = 0.0


@dataclass
class _PoolState:
    pool: SimPool
    ready: int = 0
    pending: list[tuple[int, int]] = field(default_factory=list)
    """(minute it becomes ready, replicas)."""

    @property
    def requested(self) -> int:
        return self.ready + sum(n for _, n in self.pending)

    def nodes(self) -> int:
        needed = math.ceil(self.requested / self.pool.slots)
        return max(needed, self.pool.reserved_nodes if self.pool.tier == "reserved" else 0)


class Simulator:
    """Holds the state of every pool; ``step`` applies one minute of desired replicas."""

    def __init__(self, pools: list[SimPool], seed: int = 0) -> None:
        self.pools = {p.name: _PoolState(p) for p in pools}
        self.rng = np.random.default_rng(seed)
        self.interruptions = 0

    def start_with(self, replicas: Mapping[str, int]) -> None:
        """Replicas already running when the replay starts."""
        for name, n in replicas.items():
            self.pools[name].ready = n

    def requested(self) -> dict[str, int]:
        """Replicas per pool that are ready or starting: what a controller sees as current."""
        return {name: s.requested for name, s in self.pools.items() if s.requested}

    def step(self, minute: int, desired: Mapping[str, int]) -> tuple[dict[str, int], float]:
        """Apply desired replicas at the start of `minute`; return ready replicas and cost."""
        cost = 0.0
        ready: dict[str, int] = {}
        for name, state in self.pools.items():
            pool = state.pool
            self._interrupt(state)
            want = min(desired.get(name, 0), pool.max_nodes * pool.slots)
            have = state.requested
            if want > have:
                free_slots = state.nodes() * pool.slots - have
                on_existing = min(want - have, max(0, free_slots))
                if on_existing:
                    state.pending.append((minute + pool.load_minutes, on_existing))
                rest = want - have - on_existing
                if rest:
                    delay = pool.provisioning_minutes + pool.load_minutes
                    state.pending.append((minute + delay, rest))
            elif want < have:
                self._remove(state, have - want)
            arrived = sum(n for t, n in state.pending if t <= minute)
            state.ready += arrived
            state.pending = [(t, n) for t, n in state.pending if t > minute]
            ready[name] = state.ready
            cost += state.nodes() * pool.node_price / 60.0
        return ready, cost

    @staticmethod
    def _remove(state: _PoolState, count: int) -> None:
        # Starting replicas go first (newest first), then ready ones.
        while count and state.pending:
            t, n = state.pending.pop()
            taken = min(n, count)
            count -= taken
            if n > taken:
                state.pending.append((t, n - taken))
        state.ready -= min(count, state.ready)

    def _interrupt(self, state: _PoolState) -> None:
        pool = state.pool
        if pool.tier != "spot" or pool.interruptions_per_node_hour <= 0 or state.ready == 0:
            return
        ready_nodes = math.ceil(state.ready / pool.slots)
        lost_nodes = int(
            self.rng.binomial(ready_nodes, min(1.0, pool.interruptions_per_node_hour / 60.0))
        )
        if lost_nodes:
            self.interruptions += lost_nodes
            state.ready -= min(state.ready, lost_nodes * pool.slots)

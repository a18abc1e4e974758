"""The cost model: how pools become priced capacity slices and replicas become options.

A *slice* is capacity with one marginal price: a spot or on-demand pool is one slice; a
reserved pool is a free slice of its reserved nodes plus, if it may grow past them, an
overflow slice billed at the pool's price. An *option* is one way to run a replica of one
deployment on one slice: how many GPUs it takes, how many fit on a node, what demand it
serves and what it costs per hour. Spot risk is priced per option: what a spot node lost
costs a deployment depends on how long *its* replacement takes (the pool's provisioning
plus its own model load), not on another tenant's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

from peakwise.api.common import CapacityType
from peakwise.api.inferencedeployment import GPUProfile, InferenceDeploymentSpec
from peakwise.planner.types import DeploymentKey, PoolState

# Above this expected loss within the lead time, spot capacity is not counted on at all.
MAX_SPOT_LOSS = 0.5


@dataclass(frozen=True)
class Slice:
    index: int
    pool: str
    tier: CapacityType
    gpu_type: str
    gpus_per_node: int
    max_nodes: int
    node_price: float
    """Marginal billed $/node-hour (0 for reserved nodes: already paid)."""
    list_price: float
    """The pool's price per node-hour, for reporting the share of reserved capacity used."""
    min_nodes: int
    interruption_rate: float = 0.0
    """Spot interruptions per node-hour observed on the pool (0 for other tiers)."""
    provisioning_time: timedelta = timedelta(0)
    """Time for a replacement node to be Ready."""


class Option(NamedTuple):
    # A named tuple, not a dataclass: a plan builds a few per deployment every round, and
    # a frozen dataclass takes several times as long to make.
    slice: int
    gpus: int
    slots: int
    """Replicas of this size that fit on one node."""
    throughput: float
    """Demand units/s one replica serves at full utilisation."""
    effective: float
    """Demand units/s one replica is counted for: target utilisation × expected survival."""
    price: float
    """Attributed billed $/h of one replica: its share of a node's marginal price."""
    list_price: float
    """Attributed $/h of one replica at the pool's list price (reserved share reporting)."""
    is_spot: bool
    expected_loss: float = 0.0
    """Share of this deployment's spot replicas expected to be lost before a replacement node
    is ready and its model loaded (0 off spot)."""


@dataclass(frozen=True)
class Demand:
    """One deployment's allocation problem."""

    key: DeploymentKey
    priority: int
    target: float
    """Demand (units/s) to cover, at most what replicas.max replicas can serve."""
    lo: int
    hi: int
    spot_fraction: float
    on_demand_min: int
    options: tuple[Option, ...]
    level: int = 0
    """Cross-namespace priority level, 0 the highest: the platform's, not the tenant's."""
    rank: int = 0
    """Position of `priority` among its namespace's priorities, 0 the highest."""
    factor: float = 1.0
    """Weight of its shortfall in the exact solver: 1 for the namespace's top priority, less
    for lower ones, so a tenant's priorities can only order its own deployments."""
    reachable: float = math.inf
    """Demand (units/s) all the capacity it could ever get would serve: the solvers cover
    at most this, so a demand no pool can meet adds no constant to the objective."""
    current: Mapping[int, int] = field(default_factory=dict)
    """Replicas running now per option index: among plans that cost the same, the exact
    solver keeps these where they are (a restart or a neighbour's change moves nothing)."""

    reference: float = field(init=False, repr=False, compare=False)
    """Demand one replica of its best option serves: the unit of its shortfall."""
    by_unit_price: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """Option indices, cheapest per unit of demand served first (then the larger)."""
    by_replica_price: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """Option indices, cheapest per replica first; at the same price spot first, since
    on-demand capacity is what the others can use too."""

    def __post_init__(self) -> None:
        o = self.options
        if len({x.slice for x in o}) != len(o):
            # The greedy counts an option's room down by what it adds itself alone.
            raise ValueError(f"{self.key}: more than one option on a slice")
        # Derived once: the allocation reads them for every replica it adds.
        best = max((x.effective for x in o), default=1.0) or 1.0
        by_unit = sorted(
            range(len(o)), key=lambda i: (o[i].price / o[i].effective, -o[i].effective, i)
        )
        by_replica = sorted(range(len(o)), key=lambda i: (o[i].price, not o[i].is_spot, i))
        object.__setattr__(self, "reference", best)
        object.__setattr__(self, "by_unit_price", tuple(by_unit))
        object.__setattr__(self, "by_replica_price", tuple(by_replica))

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def solve_target(self) -> float:
        return min(self.target, self.reachable)


def current_by_option(
    current: Mapping[str, int], options: Sequence[Option], slices: Sequence[Slice]
) -> dict[int, int]:
    """What runs now per pool, spread over the deployment's options on that pool in slice
    order (a reserved pool's free slice up to its size, the overflow the rest)."""
    out: dict[int, int] = {}
    for pool, running in current.items():
        on_pool = [i for i, o in enumerate(options) if slices[o.slice].pool == pool]
        left = running
        for n, i in enumerate(on_pool):
            o = options[i]
            last = n == len(on_pool) - 1
            take = left if last else min(left, slices[o.slice].max_nodes * o.slots)
            if take > 0:
                out[i] = take
                left -= take
    return out


def spot_loss(interruption_rate: float, lead: timedelta) -> float:
    """Share of spot nodes interrupted within the lead time, for a Poisson interruption rate."""
    return 1.0 - math.exp(-max(0.0, interruption_rate) * lead.total_seconds() / 3600.0)


def build_slices(pools: Iterable[PoolState]) -> list[Slice]:
    slices: list[Slice] = []

    def add(pool: PoolState, tier: CapacityType, max_nodes: int, price: float) -> None:
        spec = pool.spec
        slices.append(
            Slice(
                index=len(slices),
                pool=pool.name,
                tier=tier,
                gpu_type=spec.gpu_type,
                gpus_per_node=spec.gpus_per_node,
                max_nodes=max_nodes,
                node_price=price,
                list_price=spec.price_per_node_hour,
                min_nodes=spec.min_nodes,
                interruption_rate=pool.interruption_rate if tier == "spot" else 0.0,
                provisioning_time=spec.provisioning_time,
            )
        )

    for pool in sorted(pools, key=lambda p: p.name):
        spec = pool.spec
        if spec.capacity_type == "reserved":
            add(pool, "reserved", spec.reserved_nodes, 0.0)
            if spec.max_nodes > spec.reserved_nodes:
                extra = spec.max_nodes - spec.reserved_nodes
                add(pool, "onDemand", extra, spec.price_per_node_hour)
        elif spec.capacity_type == "spot":
            limit = min(spec.max_nodes, pool.nodes) if pool.recovering else spec.max_nodes
            add(pool, "spot", limit, spec.price_per_node_hour)
        else:
            add(pool, "onDemand", spec.max_nodes, spec.price_per_node_hour)
    return slices


def options_for(spec: InferenceDeploymentSpec, slices: Iterable[Slice]) -> tuple[Option, ...]:
    """The ways to run a replica: per slice, the profile with the most throughput per GPU.

    A spot replica is counted at its expected survival over the time a lost one takes to
    come back: the pool's provisioning time plus this deployment's model load.
    """
    by_type: dict[str, list[GPUProfile]] = {}
    for p in spec.gpu_profiles:
        by_type.setdefault(p.gpu_type, []).append(p)
    options = []
    for s in slices:
        if s.max_nodes <= 0:
            continue
        fitting = by_type.get(s.gpu_type, ())
        profiles = [p for p in fitting if p.gpus_per_replica <= s.gpus_per_node]
        if not profiles:
            continue
        loss = 0.0
        if s.tier == "spot":
            loss = spot_loss(s.interruption_rate, s.provisioning_time + spec.model_load_time)
            if loss > MAX_SPOT_LOSS or spec.capacity.spot.max_fraction == 0:
                continue
        best = max(
            profiles,
            key=lambda p: (p.throughput_per_replica / p.gpus_per_replica, -p.gpus_per_replica),
        )
        slots = s.gpus_per_node // best.gpus_per_replica
        survival = 1.0 - loss
        options.append(
            Option(
                slice=s.index,
                gpus=best.gpus_per_replica,
                slots=slots,
                throughput=best.throughput_per_replica,
                effective=best.throughput_per_replica * spec.demand.target_utilization * survival,
                price=s.node_price / slots,
                list_price=s.list_price / slots,
                is_spot=s.tier == "spot",
                expected_loss=loss,
            )
        )
    return tuple(options)


def claimable(spec: InferenceDeploymentSpec, options: Iterable[Option]) -> float:
    """The most demand (units/s) a deployment can claim: replicas.max of its best option.
    A larger target (a query returning 1e9) is clamped here before anything is solved."""
    return spec.replicas.max * max((o.effective for o in options), default=0.0)


def reachable(options: Iterable[Option], slices: Sequence[Slice]) -> float:
    """Demand (units/s) the deployment would serve with every slice it can use to itself."""
    best: dict[int, float] = {}
    for o in options:
        s = slices[o.slice]
        best[o.slice] = max(best.get(o.slice, 0.0), s.max_nodes * o.slots * o.effective)
    return sum(best.values())


def nodes_needed(counts_by_gpus: Mapping[int, int], gpus_per_node: int) -> int:
    """Nodes for replicas of each size, each size packed on nodes of its own."""
    return sum(math.ceil(n / (gpus_per_node // g)) for g, n in counts_by_gpus.items() if n > 0)


def lead_time(spec: InferenceDeploymentSpec, pools: Iterable[PoolState]) -> timedelta:
    """How early capacity must be asked for: the slowest usable pool plus model load."""
    if spec.forecast.lead_time is not None:
        return spec.forecast.lead_time
    gpu_types = {p.gpu_type for p in spec.gpu_profiles}
    provisioning = [
        p.spec.provisioning_time
        for p in pools
        if p.spec.gpu_type in gpu_types and p.spec.capacity_type != "reserved"
    ]
    return max(provisioning, default=timedelta(0)) + spec.model_load_time

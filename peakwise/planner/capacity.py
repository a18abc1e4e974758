"""The cost model: how pools become priced capacity slices and replicas become options.

A *slice* is capacity with one marginal price: a spot or on-demand pool is one slice; a
reserved pool is a free slice of its reserved nodes plus, if it may grow past them, an
overflow slice billed at the pool's price. An *option* is one way to run a replica of one
deployment on one slice: how many GPUs it takes, how many fit on a node, what demand it
serves and what it costs per hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from peakwise.api.common import CapacityType
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
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
    expected_loss: float
    """Share of spot nodes expected to be interrupted before a replacement is ready."""


@dataclass(frozen=True)
class Option:
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


@dataclass(frozen=True)
class Demand:
    """One deployment's allocation problem."""

    key: DeploymentKey
    priority: int
    target: float
    lo: int
    hi: int
    spot_fraction: float
    on_demand_min: int
    options: tuple[Option, ...]


def spot_loss(interruption_rate: float, lead: timedelta) -> float:
    """Share of spot nodes interrupted within the lead time, for a Poisson interruption rate."""
    return 1.0 - math.exp(-max(0.0, interruption_rate) * lead.total_seconds() / 3600.0)


def build_slices(pools: Iterable[PoolState], lead: timedelta) -> list[Slice]:
    slices: list[Slice] = []

    def add(pool: PoolState, tier: CapacityType, max_nodes: int, price: float, loss: float) -> None:
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
                expected_loss=loss,
            )
        )

    for pool in sorted(pools, key=lambda p: p.name):
        spec = pool.spec
        if spec.capacity_type == "reserved":
            add(pool, "reserved", spec.reserved_nodes, 0.0, 0.0)
            if spec.max_nodes > spec.reserved_nodes:
                extra = spec.max_nodes - spec.reserved_nodes
                add(pool, "onDemand", extra, spec.price_per_node_hour, 0.0)
        elif spec.capacity_type == "spot":
            loss = spot_loss(pool.interruption_rate, spec.provisioning_time + lead)
            limit = min(spec.max_nodes, pool.nodes) if pool.recovering else spec.max_nodes
            add(pool, "spot", limit, spec.price_per_node_hour, loss)
        else:
            add(pool, "onDemand", spec.max_nodes, spec.price_per_node_hour, 0.0)
    return slices


def options_for(spec: InferenceDeploymentSpec, slices: Iterable[Slice]) -> tuple[Option, ...]:
    """The ways to run a replica: per slice, the profile with the most throughput per GPU."""
    options = []
    for s in slices:
        profiles = [
            p
            for p in spec.gpu_profiles
            if p.gpu_type == s.gpu_type and p.gpus_per_replica <= s.gpus_per_node
        ]
        if not profiles or s.max_nodes <= 0:
            continue
        if s.tier == "spot" and (
            s.expected_loss > MAX_SPOT_LOSS or spec.capacity.spot.max_fraction == 0
        ):
            continue
        best = max(
            profiles,
            key=lambda p: (p.throughput_per_replica / p.gpus_per_replica, -p.gpus_per_replica),
        )
        slots = s.gpus_per_node // best.gpus_per_replica
        survival = 1.0 - s.expected_loss
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
            )
        )
    return tuple(options)


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

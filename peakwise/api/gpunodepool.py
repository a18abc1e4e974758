"""GPUNodePool: a cluster-wide pool of GPU nodes of one type and one capacity tier."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field

from peakwise.api.common import (
    CapacityType,
    Condition,
    DurationRange,
    ObjectMeta,
    Rule,
    StatusModel,
    WireModel,
)

ProvisioningTime = Annotated[
    timedelta, DurationRange("provisioningTime", at_most=timedelta(hours=6))
]
LabelValue = Annotated[str, Field(max_length=63)]
MAX_PRICE_PER_NODE_HOUR = 10000.0


class Taint(WireModel):
    """A taint carried by the pool's nodes; replicas placed there tolerate it."""

    key: str = Field(min_length=1, max_length=316)
    """Taint key."""
    value: str = Field(default="", max_length=63)
    """Taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"
    """Taint effect."""


class KwokProviderSpec(WireModel):
    """Simulated nodes managed by kwok: for local clusters and tests."""

    node_name_prefix: str = Field(default="", max_length=40)
    """Prefix of the simulated Node names; default: the pool's name."""


class ClusterAPIProviderSpec(WireModel):
    """Nodes come from a Cluster API MachineDeployment, scaled through its scale subresource."""

    machine_deployment: str = Field(min_length=1, max_length=253)
    """MachineDeployment name."""
    namespace: str = Field(min_length=1, max_length=63)
    """MachineDeployment namespace."""


class KarpenterProviderSpec(WireModel):
    """Nodes come from a Karpenter NodePool, bounded through its GPU limit."""

    node_pool: str = Field(min_length=1, max_length=253)
    """Karpenter NodePool name."""
    headroom_nodes: int = Field(default=1, ge=0, le=1000)
    """Nodes' worth of GPUs added to the NodePool's nvidia.com/gpu limit above the plan, so
    Karpenter can launch a replacement before it drains a node (drift, expiry,
    consolidation) and a launch that fails can be retried. 0 sets the limit exactly at the
    plan, which blocks those replacements."""


class ProviderSpec(WireModel):
    """How the pool's nodes are created and removed; exactly one backend."""

    cel_rules = (
        Rule(
            "[has(self.kwok), has(self.clusterAPI), has(self.karpenter)].filter(x, x).size() == 1",
            "provider must set exactly one of kwok, clusterAPI, karpenter",
            lambda s: [s.kwok, s.cluster_api, s.karpenter].count(None) == 2,
        ),
    )

    kwok: KwokProviderSpec | None = None
    """Simulated nodes (local clusters, tests)."""
    cluster_api: ClusterAPIProviderSpec | None = Field(default=None, alias="clusterAPI")
    """Cluster API MachineDeployment."""
    karpenter: KarpenterProviderSpec | None = None
    """Karpenter NodePool."""


class OpenCostPriceSpec(WireModel):
    """The node price from OpenCost's series in Prometheus."""

    metric: Literal["node_total_hourly_cost", "node_gpu_hourly_cost"] = "node_total_hourly_cost"
    """OpenCost series to read: the whole node's hourly cost (the default) or only its GPUs'.
    The price is its mean over the pool's nodes (the series' node label)."""


class PriceSource(WireModel):
    """Where the live node price comes from; pricePerNodeHour stays the fallback."""

    open_cost: OpenCostPriceSpec | None = Field(default=None, alias="openCost")
    """OpenCost, through the Prometheus the operator reads demand from."""


class GPUNodePoolSpec(WireModel):
    """A pool of identical GPU nodes the platform team offers to inference services."""

    cel_rules = (
        Rule(
            "self.minNodes <= self.maxNodes",
            "minNodes must not exceed maxNodes",
            lambda s: s.min_nodes <= s.max_nodes,
        ),
        Rule(
            "self.reservedNodes <= self.maxNodes",
            "reservedNodes must not exceed maxNodes",
            lambda s: s.reserved_nodes <= s.max_nodes,
        ),
        Rule(
            "self.capacityType == 'reserved' || self.reservedNodes == 0",
            "reservedNodes may only be set when capacityType is reserved",
            lambda s: s.capacity_type == "reserved" or s.reserved_nodes == 0,
        ),
        Rule(
            "!has(self.nodeLabels) || self.nodeLabels.all(k, k.size() <= 316)",
            "nodeLabels keys must be at most 316 characters",
            lambda s: all(len(k) <= 316 for k in s.node_labels),
        ),
    )

    gpu_type: str = Field(min_length=1, max_length=63)
    """GPU type of every node (e.g. nvidia-h100-80gb); matches InferenceDeployment gpuProfiles."""
    gpus_per_node: int = Field(ge=1, le=64)
    """GPUs on each node (nvidia.com/gpu capacity)."""
    capacity_type: CapacityType
    """reserved (already paid for), spot (cheap, interruptible) or onDemand."""
    price_per_node_hour: float = Field(gt=0, le=MAX_PRICE_PER_NODE_HOUR)
    """Price of one node for one hour, in the budgets' currency (at most 10,000). For reserved
    pools it is the effective price, used for reporting; reserved nodes cost nothing extra to
    use."""
    reserved_nodes: int = Field(default=0, ge=0, le=100000)
    """Nodes already paid for (reserved pools only)."""
    min_nodes: int = Field(default=0, ge=0, le=100000)
    """Fewest nodes the pool keeps."""
    max_nodes: int = Field(ge=1, le=100000)
    """Most nodes the pool may have."""
    provisioning_time: ProvisioningTime = timedelta(minutes=5)
    """Time from asking for a node to it being Ready (at most 6h)."""
    node_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=32)
    """Labels that mark the pool's nodes; replicas select them (at most 32)."""
    node_taints: list[Taint] = Field(default_factory=list, max_length=16)
    """Taints on the pool's nodes; replicas tolerate them."""
    provider: ProviderSpec
    """The node backend."""
    price_source: PriceSource | None = None
    """Take the node price from a live source (OpenCost) instead of pricePerNodeHour, which
    is used whenever the live price is missing (status says so)."""


class CommitmentCostPoint(StatusModel):
    """Expected monthly cost with one count of committed nodes."""

    nodes: int = 0
    """Committed nodes."""
    monthly_cost: float = 0.0
    """Expected cost of the GPU type per month (committed plus spot and on-demand)."""


class CommitmentTermAdvice(StatusModel):
    """The best commitment at one term's price."""

    term: str = ""
    """The commitment term (e.g. 1y, 3y; current: the reserved pool's own price)."""
    price_per_node_hour: float = 0.0
    """Effective price of a committed node at this term."""
    nodes: int = 0
    """Committed nodes that minimise expected monthly cost at this price."""
    monthly_cost: float = 0.0
    """Expected monthly cost with that many."""
    monthly_saving: float = 0.0
    """Less than with no commitment at all, per month."""
    break_even_utilization: float = 0.0
    """Share of hours a committed node must be busy to cost less than on-demand."""


class CommitmentAdvice(StatusModel):
    """How many nodes of the pool's GPU type to commit to (reserve), from the fleet's demand
    history at its services' shortfall targets. Advice only: Peakwise never buys capacity."""

    gpu_type: str = ""
    """The GPU type advised on (the pool's)."""
    recommended_term: str = ""
    """The term with the lowest expected monthly cost."""
    recommended_nodes: int = 0
    """Nodes to commit to at that term."""
    current_nodes: int = 0
    """Nodes of the GPU type committed now (the reserved pools' reservedNodes)."""
    monthly_cost: float = 0.0
    """Expected monthly cost of the GPU type with the recommendation."""
    monthly_cost_now: float | None = None
    """Expected monthly cost with what is committed now (unset: nothing is)."""
    break_even_utilization: float = 0.0
    """Share of hours a committed node must be busy to beat on-demand, at the recommended term."""
    terms: list[CommitmentTermAdvice] = Field(default_factory=list, max_length=16)
    """The best commitment at every term priced."""
    curve: list[CommitmentCostPoint] = Field(default_factory=list, max_length=16)
    """Expected monthly cost around the recommendation (how flat the optimum is)."""
    assumptions: list[str] = Field(default_factory=list, max_length=16)
    """What the advice rests on: history, services, prices, spot interruption rate."""
    message: str = ""
    """The advice in one sentence."""
    computed_at: datetime | None = None
    """When it was computed; it is refreshed daily."""


class GPUNodePoolStatus(StatusModel):
    """What the pool has and how it behaved."""

    observed_generation: int | None = None
    """The .metadata.generation this status was computed from."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Degraded, PriceSource (with priceSource), NodePoolMapping (Karpenter)."""
    nodes: int = 0
    """Nodes that exist."""
    ready_nodes: int = 0
    """Nodes that are Ready."""
    desired_nodes: int = 0
    """Nodes the plan wants."""
    allocatable_gpus: int = 0
    """GPUs allocatable on Ready nodes."""
    interruptions_observed: int = 0
    """Spot interruptions seen since the pool was created."""
    interruption_rate: float = 0.0
    """Interruptions per node-hour, smoothed; feeds the planner's spot hedge."""
    last_interruption_time: datetime | None = None
    """When the latest interruption was seen."""
    price_per_node_hour: float | None = None
    """The node price the latest plan used: the live price (priceSource) or the fallback."""
    price_source: str = ""
    """Where that price came from: spec (pricePerNodeHour), or the OpenCost series and how
    many nodes it averaged."""
    advice: CommitmentAdvice | None = None
    """Commitment advice for the pool's GPU type, refreshed daily (never acted on)."""


class GPUNodePool(WireModel):
    """A cluster-scoped pool of GPU nodes of one type and capacity tier."""

    model_config = WireModel.model_config | {"extra": "ignore"}

    api_version: Literal["peakwise.dev/v1alpha1"] = "peakwise.dev/v1alpha1"
    kind: Literal["GPUNodePool"] = "GPUNodePool"
    metadata: ObjectMeta
    spec: GPUNodePoolSpec
    status: GPUNodePoolStatus | None = None

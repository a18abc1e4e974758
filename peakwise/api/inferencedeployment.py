"""InferenceDeployment: a model server that Peakwise sizes ahead of its demand peaks."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from peakwise.api.common import (
    CapacityType,
    Condition,
    DurationRange,
    ObjectMeta,
    Rule,
    StatusModel,
    WireModel,
)

PERCENT_PATTERN = r"^[0-9]+(\.[0-9]+)?%$"


def parse_percent(value: object) -> float:
    """'0.5%' (or a share as a number, 0.005) as a share: 0.005."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not re.fullmatch(PERCENT_PATTERN, value):
        raise ValueError(f"invalid percentage {value!r}: write a number and %, like 0.5%")
    return round(float(value[:-1]) / 100.0, 12)


def format_percent(share: float) -> str:
    """A share as the wire's percentage: 0.005 -> '0.5%'."""
    return f"{round(share * 100.0, 10):g}%"


Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(format_percent, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PERCENT_PATTERN, "maxLength": 16}),
]
"""A share written as a percentage, e.g. 0.5%; a float share (0.005) in Python."""

PodTemplate = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

# Every duration a tenant writes is bounded, so no value the API server accepts can overflow
# date arithmetic or make one object's round cost more than its share (docs/tenancy.md).
MAX_HISTORY = timedelta(days=35)
"""Five weeks: four weekly cycles and one to check the model on; at one-minute steps a
series of 50,400 points, fetched in five range queries."""
History = Annotated[
    timedelta, DurationRange("forecast.history", at_least=timedelta(hours=1), at_most=MAX_HISTORY)
]
LeadTime = Annotated[timedelta, DurationRange("forecast.leadTime", at_most=timedelta(hours=6))]
ModelLoadTime = Annotated[timedelta, DurationRange("modelLoadTime", at_most=timedelta(hours=2))]
StabilizationWindow = Annotated[
    timedelta, DurationRange("scaleDown.stabilizationWindow", at_most=timedelta(hours=24))
]
MAX_THROUGHPUT_PER_REPLICA = 1e9
"""Demand units per second one replica can claim to serve: with replicas.max it bounds the
demand one InferenceDeployment can ask capacity for (the planner clamps its target there)."""


class GPUProfile(WireModel):
    """One acceptable hardware shape for a replica and the demand it sustains on it."""

    # A fractional lower bound is a CEL rule, not the schema's minimum: the API server
    # compares an integer value (0) with the bound truncated to an integer (0) and accepts it.
    cel_rules = (
        Rule(
            "self.throughputPerReplica >= 0.001",
            "throughputPerReplica must be at least 0.001",
            lambda s: s.throughput_per_replica >= 1e-3,
        ),
    )

    gpu_type: str = Field(min_length=1, max_length=63)
    """GPU type, matching a GPUNodePool's gpuType (e.g. nvidia-h100-80gb)."""
    gpus_per_replica: int = Field(default=1, ge=1, le=64)
    """GPUs one replica requests (nvidia.com/gpu)."""
    throughput_per_replica: float = Field(gt=0, le=MAX_THROUGHPUT_PER_REPLICA)
    """Demand units per second one replica serves at full utilisation on this GPU type
    (0.001 to 1e9)."""


class DemandSpec(WireModel):
    """Where the service's demand comes from and how hard replicas may be driven."""

    cel_rules = (
        Rule(
            "self.targetUtilization >= 0.05",
            "targetUtilization must be at least 0.05",
            lambda s: s.target_utilization >= 0.05,
        ),
    )

    query: str = Field(min_length=1, max_length=4096)
    """PromQL returning one series: the service's demand in units per second."""
    target_utilization: float = Field(default=0.8, gt=0, le=1)
    """Share of a replica's throughput to plan for (0.05 to 1); the rest is headroom for
    bursts."""


class ReplicaBounds(WireModel):
    """Bounds on the total number of replicas across all pools."""

    cel_rules = (
        Rule(
            "self.min <= self.max",
            "replicas.min must not exceed replicas.max",
            lambda s: s.min <= s.max,
        ),
        Rule(
            "!has(self.floor) || self.floor <= self.max",
            "replicas.floor must not exceed replicas.max",
            lambda s: s.floor is None or s.floor <= s.max,
        ),
    )

    min: int = Field(default=1, ge=0, le=10000)
    """Fewest replicas, whatever the forecast or budget (unless even the minimums of a Hard
    budget's namespace do not fit; then status says so)."""
    max: int = Field(default=10, ge=1, le=10000)
    """Most replicas, whatever the forecast."""
    floor: int | None = Field(default=None, ge=0, le=10000)
    """Manual floor set by `kubectl scale`: Peakwise plans at least this many replicas (still
    within min and max) until it is removed."""


class SLOSpec(WireModel):
    """The reliability the team wants, in its own terms; Peakwise calibrates to it."""

    cel_rules = (
        Rule(
            "double(self.shortfallMinutes.replace('%', '')) > 0.0 && "
            "double(self.shortfallMinutes.replace('%', '')) < 50.0",
            "slo.shortfallMinutes must be above 0% and below 50%",
            lambda s: 0.0 < s.shortfall_minutes < 0.5,
        ),
    )

    # Written as users write it, so the CRD's default reads 0.5%; validated into a share.
    shortfall_minutes: Percent = Field(default="0.5%", validate_default=True)
    """At most this share of minutes may have less ready capacity than demand, e.g. 0.5%
    (the default). Each service's forecast margin is calibrated to it from its own history,
    by replaying what the planner would have held. Ignored when forecast.quantile is set."""


class ForecastSpec(WireModel):
    """How demand is forecast."""

    history: History = timedelta(days=14)
    """How much history to learn from: 1h to 35d."""
    quantile: float | None = Field(default=None, gt=0, lt=1)
    """Expert override, unset by default: provision for this fixed quantile of the demand
    peak (higher is safer and dearer). When set it wins over slo.shortfallMinutes: the margin
    is not calibrated to the target (status still shows the shortfall it achieves)."""
    lead_time: LeadTime | None = None
    """How early capacity must be asked for, at most 6h. Default: the slowest usable pool's
    provisioningTime plus modelLoadTime."""


class SpotPolicy(WireModel):
    """How much of the service may run on interruptible capacity."""

    max_fraction: float = Field(default=0.6, ge=0, le=1)
    """Largest share of replicas on spot capacity."""


class OnDemandPolicy(WireModel):
    """The guaranteed, never-interrupted part of the service."""

    min_replicas: int = Field(default=0, ge=0, le=10000)
    """Replicas always kept on on-demand or reserved capacity (never on spot)."""


class CapacityPolicy(WireModel):
    """How replicas are spread over capacity tiers (reserved first, then spot, then on-demand)."""

    spot: SpotPolicy = SpotPolicy()
    """Spot capacity limits."""
    on_demand: OnDemandPolicy = OnDemandPolicy()
    """On-demand floor."""


class ScaleDownPolicy(WireModel):
    """How capacity is released."""

    stabilization_window: StabilizationWindow = timedelta(minutes=15)
    """Capacity is only released after the plan has wanted less for this long (at most
    24h)."""


TARGET_KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")
"""Workloads a targetRef may name: each has a scale subresource Peakwise writes."""
TARGET_API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}


class TargetRef(WireModel):
    """An existing workload Peakwise right-sizes through its scale subresource."""

    cel_rules = (
        Rule(
            "(self.kind == 'LeaderWorkerSet' && self.apiVersion == 'leaderworkerset.x-k8s.io/v1')"
            " || (self.kind != 'LeaderWorkerSet' && self.apiVersion == 'apps/v1')",
            "targetRef.apiVersion must be apps/v1 for a Deployment or StatefulSet and "
            "leaderworkerset.x-k8s.io/v1 for a LeaderWorkerSet",
            lambda s: TARGET_API_VERSIONS[s.kind] == s.api_version,
        ),
    )

    api_version: str = Field(default="apps/v1", max_length=253)
    """apps/v1 (Deployment, StatefulSet) or leaderworkerset.x-k8s.io/v1 (LeaderWorkerSet)."""
    kind: Literal["Deployment", "StatefulSet", "LeaderWorkerSet"]
    """Kind of the workload; it must have a scale subresource."""
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the workload, in the InferenceDeployment's namespace."""


class InferenceDeploymentSpec(WireModel):
    """What the service needs; Peakwise decides how many replicas run where."""

    cel_rules = (
        Rule(
            "has(self.template) != has(self.targetRef)",
            "spec must set exactly one of template and targetRef",
            lambda s: (s.template is None) != (s.target_ref is None),
        ),
        Rule(
            "self.capacity.onDemand.minReplicas <= self.replicas.max",
            "capacity.onDemand.minReplicas must not exceed replicas.max",
            lambda s: s.capacity.on_demand.min_replicas <= s.replicas.max,
        ),
        Rule(
            "self.gpuProfiles.all(p, self.gpuProfiles.exists_one(q, "
            "q.gpuType == p.gpuType && q.gpusPerReplica == p.gpusPerReplica))",
            "gpuProfiles must not list the same gpuType and gpusPerReplica twice",
            lambda s: (
                len({(p.gpu_type, p.gpus_per_replica) for p in s.gpu_profiles})
                == len(s.gpu_profiles)
            ),
        ),
    )

    mode: Literal["Recommend", "Enforce"] = "Recommend"
    """Recommend writes status and events only; Enforce scales child Deployments and pools."""
    priority: int = Field(default=100, ge=0, le=1000000)
    """Order within this namespace: when its budget binds or pools run short, higher keeps
    capacity longer. Across namespaces the platform's CostBudget priority decides."""
    template: PodTemplate | None = None
    """Pod template of the model server; one child Deployment per pool runs it. Exactly one
    of template and targetRef."""
    target_ref: TargetRef | None = None
    """An existing Deployment, StatefulSet or LeaderWorkerSet Peakwise scales through its
    scale subresource instead of running children (its template is never touched). Exactly
    one of template and targetRef."""
    suspend: bool = False
    """Pause Peakwise for this object: nothing is scaled (children, target and the nodes
    they use keep their size, or suspendReplicas); status still shows the plan."""
    suspend_replicas: int | None = Field(default=None, ge=0, le=10000)
    """While suspended, pin the service to this many replicas (unset: leave them as they
    are). Ignored when suspend is false."""
    gpu_profiles: list[GPUProfile] = Field(min_length=1, max_length=16)
    """Acceptable GPU shapes; the planner picks the cheapest mix that meets demand."""
    demand: DemandSpec
    """The demand signal."""
    replicas: ReplicaBounds = ReplicaBounds()
    """Replica bounds."""
    slo: SLOSpec = SLOSpec()
    """The shortfall target the forecast margin is calibrated to."""
    forecast: ForecastSpec = ForecastSpec()
    """Forecast settings."""
    model_load_time: ModelLoadTime = timedelta(minutes=2)
    """Time from a pod starting on a ready node to serving (image pull, weights load), at most
    2h. It also prices this service's spot risk: spot capacity lost within it is not
    replaced in time."""
    capacity: CapacityPolicy = CapacityPolicy()
    """Spread over capacity tiers."""
    scale_down: ScaleDownPolicy = ScaleDownPolicy()
    """Scale-down damping."""


class PoolReplicas(StatusModel):
    """Replicas of this service in one GPU pool."""

    pool: str
    """GPUNodePool name."""
    capacity_type: CapacityType
    """The pool's capacity type."""
    gpu_type: str
    """The pool's GPU type."""
    replicas: int = 0
    """Ready replicas now."""
    desired_replicas: int = 0
    """Replicas the plan wants."""


class ForecastStatus(StatusModel):
    """The latest demand forecast."""

    peak: float | None = None
    """Forecast demand peak (units/s) at the requested quantile over the planning window."""
    peak_at: datetime | None = None
    """Start of the window the peak is forecast for (one lead time after the forecast); the
    peak may come at any time within the window."""
    quantile: float | None = None
    """Quantile the peak is forecast at."""
    model: str = ""
    """Forecasting model in use."""
    backtest_loss: float | None = None
    """Pinball loss of the model on this service's own history."""
    coverage: float | None = None
    """Share of past peaks the forecast covered on this service's own history."""
    lead_time: str = ""
    """Lead time the plan used."""


class TimeOfDayQuantile(StatusModel):
    """The forecast quantile the calibration chose for one span of the UTC day."""

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5)
    """When the span starts, HH:MM UTC; it lasts until the next entry's start (the last one
    until 24:00)."""
    quantile: float = Field(ge=0.0, le=1.0)
    """The forecast quantile planned for in that span."""


class SLOStatus(StatusModel):
    """The shortfall target and how the service meets it."""

    shortfall_target: Percent | None = None
    """slo.shortfallMinutes, the share of minutes that may be short."""
    achieved_shortfall: Percent | None = None
    """Share of the last achievedWindow's minutes whose demand exceeded the capacity the plan
    held ready (replayed from the forecasts served and the demand that followed)."""
    achieved_window: str = ""
    """The span achievedShortfall covers, e.g. 7d (shorter for a new service)."""
    margin: str = ""
    """The margin in use, e.g. q0.987 (forecast quantile the target calibrated) or reactive
    headroom for a new service."""
    mode: str = ""
    """Forecast (the calibrated forecast sizes the service), Reactive (a new or changed
    service: recent demand plus calibrated headroom) or Override (forecast.quantile is set)."""
    censored_minutes: int = 0
    """Minutes of the history where demand sat at the capacity that served it (a served
    metric flattens there, so true demand was likely higher); counted as short."""
    quantiles_by_time_of_day: list[TimeOfDayQuantile] = Field(default_factory=list, max_length=1440)
    """The quantile per equal span of the UTC day, when the margin was calibrated per time of
    day (margin then reads e.g. q0.2–q0.3 by time of day); empty when one quantile serves the
    whole day. Changes only at a refit."""


class CostStatus(StatusModel):
    """What the current plan costs."""

    hourly: float = 0.0
    """Spend rate of spot and on-demand capacity the service uses."""
    reserved_hourly: float = 0.0
    """Share of already paid-for reserved capacity the service uses (not billed again)."""
    currency: str = "USD"
    """Currency of the amounts."""


class DemandTarget(StatusModel):
    """A demand target the planner sized for, kept for scale-down stabilisation."""

    time: datetime
    """When the target was set."""
    demand: float
    """Demand (units/s) planned for."""


class TargetStatus(StatusModel):
    """The workload a targetRef names, as Peakwise last saw it."""

    kind: str = ""
    """Kind of the workload."""
    name: str = ""
    """Name of the workload."""
    replicas: int | None = None
    """Its spec.replicas (through the scale subresource)."""
    ready_replicas: int = 0
    """Its ready replicas (groups, for a LeaderWorkerSet)."""
    group_size: int = 1
    """Pods per replica: a LeaderWorkerSet's leaderWorkerTemplate.size, else 1."""
    gpus_per_replica: int = 0
    """GPUs one replica holds: every pod of the group, from its template."""
    scaled_by: list[str] = Field(default_factory=list)
    """Autoscalers (HorizontalPodAutoscaler, KEDA ScaledObject) that scale the same workload:
    Peakwise then does not write its replicas."""


class InferenceDeploymentStatus(StatusModel):
    """What Peakwise observed and decided."""

    observed_generation: int | None = None
    """The .metadata.generation this status was computed from."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, ScalingActive, Forecasting, Fallback, ScalingLimited, BudgetLimited, Degraded
    (and Placement, TargetFound with a targetRef; PrometheusRetention when it is short)."""
    replicas: int = 0
    """Ready replicas across all pools."""
    desired_replicas: int = 0
    """Replicas the plan wants across all pools."""
    selector: str = ""
    """Label selector of the service's pods (for the scale subresource)."""
    tiers: str = ""
    """Desired replicas by tier, e.g. reserved=4 spot=6 onDemand=2."""
    pools: list[PoolReplicas] = Field(default_factory=list)
    """Replicas per pool."""
    forecast: ForecastStatus | None = None
    """The latest forecast."""
    slo: SLOStatus | None = None
    """The shortfall target, what was achieved and the margin in use."""
    cost: CostStatus | None = None
    """What the plan costs."""
    budget_state: str = ""
    """Within, Warning or Limited: how the namespace budget affects this service."""
    last_plan_time: datetime | None = None
    """When the plan was last computed."""
    recent_targets: list[DemandTarget] = Field(default_factory=list)
    """Recent demand targets: scale-down waits until the highest of them is old enough.
    Kept in status so a restarted operator makes the same decisions."""
    target: TargetStatus | None = None
    """The workload a targetRef names, as last seen."""


class InferenceDeployment(WireModel):
    """A GenAI model server whose replicas and GPU capacity Peakwise plans."""

    model_config = WireModel.model_config | {"extra": "ignore"}

    api_version: Literal["peakwise.dev/v1alpha1"] = "peakwise.dev/v1alpha1"
    kind: Literal["InferenceDeployment"] = "InferenceDeployment"
    metadata: ObjectMeta
    spec: InferenceDeploymentSpec
    status: InferenceDeploymentStatus | None = None

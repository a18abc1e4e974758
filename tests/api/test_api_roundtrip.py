"""Specs survive the wire: model -> JSON (camelCase) -> model is the identity."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from peakwise.api.common import CAPACITY_TYPES
from peakwise.api.costbudget import BudgetLimits, CostBudgetSpec
from peakwise.api.gpunodepool import (
    ClusterAPIProviderSpec,
    GPUNodePoolSpec,
    KarpenterProviderSpec,
    KwokProviderSpec,
    ProviderSpec,
    Taint,
)
from peakwise.api.inferencedeployment import (
    CapacityPolicy,
    DemandSpec,
    ForecastSpec,
    GPUProfile,
    InferenceDeploymentSpec,
    OnDemandPolicy,
    ReplicaBounds,
    ScaleDownPolicy,
    SpotPolicy,
)

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)


def durations(low: timedelta, high: timedelta) -> st.SearchStrategy[timedelta]:
    """Durations within a field's range; they travel as text in whole seconds here."""
    seconds = st.integers(int(low.total_seconds()), int(high.total_seconds()))
    return seconds.map(lambda s: timedelta(seconds=s))


HOUR, DAY = timedelta(hours=1), timedelta(days=1)
fractions = st.floats(min_value=0, max_value=1)
positive = st.floats(min_value=1e-3, max_value=1e6)
gpu_types = st.sampled_from(["nvidia-h100-80gb", "nvidia-l40s-48gb", "nvidia-a100-40gb"])


@st.composite
def replica_bounds(draw: st.DrawFn) -> ReplicaBounds:
    high = draw(st.integers(1, 10000))
    low = draw(st.integers(0, high))
    floor = draw(st.none() | st.integers(0, high))
    return ReplicaBounds(min=low, max=high, floor=floor)


@st.composite
def inference_specs(draw: st.DrawFn) -> InferenceDeploymentSpec:
    shapes = draw(
        st.lists(st.tuples(gpu_types, st.integers(1, 8)), min_size=1, max_size=4, unique=True)
    )
    bounds = draw(replica_bounds())
    return InferenceDeploymentSpec(
        mode=draw(st.sampled_from(["Recommend", "Enforce"])),
        priority=draw(st.integers(0, 1000000)),
        template={"spec": {"containers": [{"name": "vllm", "image": draw(names)}]}},
        gpu_profiles=[
            GPUProfile(gpu_type=g, gpus_per_replica=n, throughput_per_replica=draw(positive))
            for g, n in shapes
        ],
        demand=DemandSpec(
            query=draw(st.text(min_size=1, max_size=40)),
            target_utilization=draw(st.floats(min_value=0.05, max_value=1)),
        ),
        replicas=bounds,
        forecast=ForecastSpec(
            history=draw(durations(HOUR, 35 * DAY)),
            quantile=draw(st.floats(min_value=0.01, max_value=0.99)),
            lead_time=draw(st.none() | durations(timedelta(0), 6 * HOUR)),
        ),
        model_load_time=draw(durations(timedelta(0), 2 * HOUR)),
        capacity=CapacityPolicy(
            spot=SpotPolicy(max_fraction=draw(fractions)),
            on_demand=OnDemandPolicy(min_replicas=draw(st.integers(0, bounds.max))),
        ),
        scale_down=ScaleDownPolicy(stabilization_window=draw(durations(timedelta(0), DAY))),
    )


providers = st.one_of(
    st.builds(lambda p: ProviderSpec(kwok=KwokProviderSpec(node_name_prefix=p)), names),
    st.builds(
        lambda n, ns: ProviderSpec(
            cluster_api=ClusterAPIProviderSpec(machine_deployment=n, namespace=ns)
        ),
        names,
        names,
    ),
    st.builds(lambda n: ProviderSpec(karpenter=KarpenterProviderSpec(node_pool=n)), names),
)


@st.composite
def pool_specs(draw: st.DrawFn) -> GPUNodePoolSpec:
    tier = draw(st.sampled_from(CAPACITY_TYPES))
    most = draw(st.integers(1, 1000))
    return GPUNodePoolSpec(
        gpu_type=draw(gpu_types),
        gpus_per_node=draw(st.integers(1, 16)),
        capacity_type=tier,
        price_per_node_hour=draw(st.floats(min_value=1e-3, max_value=1e4)),
        reserved_nodes=draw(st.integers(0, most)) if tier == "reserved" else 0,
        min_nodes=draw(st.integers(0, most)),
        max_nodes=most,
        provisioning_time=draw(durations(timedelta(0), 6 * HOUR)),
        node_labels=draw(st.dictionaries(names, names, max_size=3)),
        node_taints=[
            Taint(key=k, value=v, effect=e)
            for k, v, e in draw(
                st.lists(
                    st.tuples(
                        names,
                        names,
                        st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                    ),
                    max_size=2,
                )
            )
        ],
        provider=draw(providers),
    )


@st.composite
def budget_specs(draw: st.DrawFn) -> CostBudgetSpec:
    hourly, monthly = draw(
        st.tuples(st.none() | positive, st.none() | positive).filter(lambda t: t != (None, None))
    )
    return CostBudgetSpec(
        limits=BudgetLimits(hourly=hourly, monthly=monthly),
        priority=draw(st.integers(0, 1000000)),
        reserved_weight=draw(st.floats(min_value=0, max_value=1000)),
        currency=draw(st.from_regex(r"[A-Z]{3}", fullmatch=True)),
        enforcement=draw(st.sampled_from(["Hard", "Soft"])),
        alert_thresholds=draw(
            st.lists(st.floats(min_value=0.01, max_value=1), min_size=0, max_size=8)
        ),
    )


def _round_trips(spec: BaseModel) -> None:
    cls = type(spec)
    assert cls.model_validate_json(spec.model_dump_json(by_alias=True)) == spec
    # As a manifest would carry it: camelCase, no nulls (the CRD has no nullable fields).
    wire = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert cls.model_validate(wire) == spec


@settings(max_examples=60, deadline=None)
@given(inference_specs())
def test_inference_deployment_spec_round_trips(spec: InferenceDeploymentSpec) -> None:
    _round_trips(spec)


@settings(max_examples=60, deadline=None)
@given(pool_specs())
def test_gpu_node_pool_spec_round_trips(spec: GPUNodePoolSpec) -> None:
    _round_trips(spec)
    assert "clusterAPI" in spec.model_dump_json(by_alias=True) or spec.provider.cluster_api is None


@settings(max_examples=60, deadline=None)
@given(budget_specs())
def test_cost_budget_spec_round_trips(spec: CostBudgetSpec) -> None:
    _round_trips(spec)

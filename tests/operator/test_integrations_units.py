"""The pure parts of issue 16: targets, placement, autoscaler conflicts, group sizes,
suspension, OpenCost prices, retention, the Karpenter mapping and the KEDA/HPA-style
conditions. (The same paths run end to end in tests/e2e/test_integrations.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml

from peakwise.adapters.prometheus import parse_retention
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment, TargetRef
from peakwise.operator.controller import _held, _planning_view
from peakwise.operator.conventions import retention_short, scaling_limited
from peakwise.operator.forecasts import ForecastResult
from peakwise.operator.main import prometheus_headers
from peakwise.operator.planning import Observed, enforced_pool_nodes, plan_input
from peakwise.operator.prices import opencost_query, read_price
from peakwise.operator.providers.karpenter import mapping_problems
from peakwise.operator.scale_target import (
    TargetObservation,
    autoscalers_of,
    observe_workload,
    placement_problems,
    planning_spec,
    target_plan,
)
from peakwise.planner import DemandForecast, plan

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
LWS = TargetRef(apiVersion="leaderworkerset.x-k8s.io/v1", kind="LeaderWorkerSet", name="big")
DEPLOY = TargetRef(kind="Deployment", name="web")


def _pool(name: str, **spec: Any) -> GPUNodePool:
    return GPUNodePool.model_validate(manifests.pool(name, **spec))


def _target_infd(name: str = "web", **spec: Any) -> InferenceDeployment:
    body = manifests.deployment(name, "team", **spec)
    del body["spec"]["template"]
    body["spec"].setdefault("targetRef", {"kind": "Deployment", "name": name})
    return InferenceDeployment.model_validate(body)


def _gpu_pod(gpus: int, **extra: Any) -> dict[str, Any]:
    return {
        "containers": [{"name": "s", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        **extra,
    }


def test_a_leader_worker_set_replica_holds_the_gpus_of_its_whole_group() -> None:
    body = {
        "spec": {
            "replicas": 3,
            "leaderWorkerTemplate": {
                "size": 4,
                "leaderTemplate": {"spec": _gpu_pod(8)},
                "workerTemplate": {"spec": _gpu_pod(8)},
            },
        },
        "status": {"readyReplicas": 2},
    }
    observed = observe_workload(LWS, body)
    assert (observed.replicas, observed.ready_replicas) == (3, 2)
    assert (observed.group_size, observed.group_gpus) == (4, 32)
    infd = _target_infd(gpu="g")
    spec = planning_spec(infd.spec, group_size=4)
    assert [p.gpus_per_replica for p in spec.gpu_profiles] == [4]  # 1 a pod x 4 pods
    assert planning_spec(infd.spec, 1) is infd.spec


def test_group_gpus_size_the_pool_for_whole_groups() -> None:
    pool = _pool("p", gpus_per_node=4, max_nodes=20)
    infd = _target_infd(mode="Enforce", replicas={"min": 3, "max": 3})
    observed = TargetObservation("Deployment", "web", True, replicas=3, group_size=2)
    views, current = _planning_view(
        {("team", "web"): infd}, {("team", "web"): observed}, {}, {"p": pool}
    )
    assert current[("team", "web")] == {"p": 3}
    request = plan_input(
        Observed(
            now=NOW,
            deployments=list(views.values()),
            pools=[pool],
            budgets=[],
            children=current,
            forecasts={},
        )
    )
    result = plan(request)
    assert result.deployments[("team", "web")].total == 3
    # 3 replicas x 2 pods x 1 GPU = 6 GPUs: two 4-GPU nodes, not one.
    assert enforced_pool_nodes(result, list(views.values()), {"p": pool})["p"] == 2


def test_without_a_forecast_a_target_holds_what_it_runs() -> None:
    pool = _pool("p", max_nodes=20)
    infd = _target_infd(mode="Enforce", replicas={"min": 1, "max": 10})
    observed = TargetObservation("Deployment", "web", True, replicas=6)
    views, current = _planning_view(
        {("team", "web"): infd}, {("team", "web"): observed}, {}, {"p": pool}
    )
    result = plan(
        plan_input(Observed(NOW, list(views.values()), [pool], [], current, forecasts={}))
    )
    assert result.deployments[("team", "web")].total == 6


def test_suspended_services_hold_or_pin_their_replicas() -> None:
    pool = _pool("p", max_nodes=20)
    key = ("team", "web")
    results = {key: ForecastResult(DemandForecast(40.0, 0.9, model="m"), None, 40.0)}
    for pin, expected in ((None, 5), (2, 2)):
        infd = InferenceDeployment.model_validate(
            manifests.deployment(
                "web",
                "team",
                suspend=True,
                replicas={"min": 1, "max": 10},
                **({"suspendReplicas": pin} if pin is not None else {}),
            )
        )
        views, current = _planning_view({key: infd}, {}, {key: {"p": 5}}, {"p": pool})
        result = plan(plan_input(Observed(NOW, list(views.values()), [pool], [], current, results)))
        assert result.deployments[key].total == expected
        held = _held(result, views, {key: {"p": 5}})
        assert held.deployments[key].replicas == ({"p": 5} if pin is None else {"p": 2})


def test_an_hpa_or_scaled_object_on_the_same_target_is_found() -> None:
    hpa = {
        "metadata": {"name": "h"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}},
    }
    other = {
        "metadata": {"name": "o"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}},
    }
    keda_hpa = {
        "metadata": {"name": "keda-hpa-so", "ownerReferences": [{"kind": "ScaledObject"}]},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}},
    }
    scaled = {"metadata": {"name": "so"}, "spec": {"scaleTargetRef": {"name": "web"}}}
    assert autoscalers_of(DEPLOY, [hpa, other], []) == ["HorizontalPodAutoscaler h"]
    assert autoscalers_of(DEPLOY, [keda_hpa], [scaled]) == ["ScaledObject so"]
    assert autoscalers_of(LWS, [hpa], [scaled]) == []


def test_what_a_round_writes_to_a_target() -> None:
    found = TargetObservation("Deployment", "web", True, replicas=2)
    assert target_plan("Enforce", False, None, 5, found).replicas == 5
    assert target_plan("Recommend", False, None, 5, found).replicas is None
    owned = TargetObservation(
        "Deployment", "web", True, replicas=2, scaled_by=("HorizontalPodAutoscaler h",)
    )
    conflict = target_plan("Enforce", False, None, 5, owned)
    assert (conflict.replicas, conflict.reason) == (None, "AutoscalerConflict")
    assert target_plan("Enforce", True, None, 5, found).replicas is None
    assert target_plan("Enforce", True, 3, 5, found).replicas == 3
    missing = TargetObservation("Deployment", "web", False, "not found")
    assert target_plan("Enforce", False, None, 5, missing).reason == "TargetMissing"


def test_placement_names_what_keeps_pods_off_a_pool() -> None:
    spot = _pool(
        "spot",
        capacity_type="spot",
        nodeLabels={"gpu": "l40s"},
        nodeTaints=[{"key": "peakwise.dev/capacity-type", "value": "spot"}],
    )
    od = _pool("od", nodeLabels={"gpu": "l40s"})
    assert "select no pool" in placement_problems([_gpu_pod(1)], [od])[0]
    selected = _gpu_pod(1, nodeSelector={"gpu": "l40s"})
    assert placement_problems([selected], [od]) == []
    assert placement_problems([selected], [spot]) == [
        "no toleration for pool spot's taint peakwise.dev/capacity-type=spot:NoSchedule"
    ]
    tolerant = {
        **selected,
        "tolerations": [{"key": "peakwise.dev/capacity-type", "operator": "Exists"}],
    }
    assert placement_problems([tolerant], [spot, od]) == []
    affinity = _gpu_pod(
        1,
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "peakwise.dev/pool", "operator": "In", "values": ["od"]}
                            ]
                        }
                    ]
                }
            }
        },
    )
    assert placement_problems([affinity], [od]) == []
    assert placement_problems([affinity], [spot])[0] == "required node affinity excludes pool spot"
    assert placement_problems([_gpu_pod(1, nodeSelector={"gpu": "h100"})], [od]) == [
        "nodeSelector gpu=h100 excludes pool od"
    ]


class _Prices:
    def __init__(self, values: list[float] | Exception) -> None:
        self.values, self.queries = values, []  # type: ignore[var-annotated]

    def instant(self, query: str) -> list[float]:
        self.queries.append(query)
        if isinstance(self.values, Exception):
            raise self.values
        return self.values


def test_opencost_price_with_the_spec_price_as_fallback() -> None:
    pool = _pool("p", price=10.0, priceSource={"openCost": {"metric": "node_gpu_hourly_cost"}})
    source = _Prices([7.25])
    reading = read_price(pool, ["p-1", "p-0"], source)
    assert (reading.price, reading.live) == (7.25, True)
    assert source.queries == ['avg(node_gpu_hourly_cost{node=~"p-0|p-1"})']
    assert read_price(pool, [], source).price == 10.0
    assert read_price(pool, ["p-0"], _Prices([])).problem.startswith("no node_gpu_hourly_cost")
    assert read_price(pool, ["p-0"], _Prices(RuntimeError("down"))).price == 10.0
    assert read_price(_pool("q", price=3.0), ["q-0"], source).source == "spec"
    # A pool whose nodes are gone keeps the last live price it had.
    seen = GPUNodePool.model_validate(
        {
            **manifests.pool("p", price=10.0, priceSource={"openCost": {}}),
            "status": {
                "pricePerNodeHour": 7.0,
                "priceSource": "opencost node_total_hourly_cost (2 nodes)",
            },
        }
    )
    assert read_price(seen, [], source).price == 7.0
    assert (
        opencost_query("node_total_hourly_cost", ["a.b"])
        == 'avg(node_total_hourly_cost{node=~"a\\\\.b"})'
    )


def test_retention_forms_and_the_warning() -> None:
    assert parse_retention("15d") == timedelta(days=15)
    assert parse_retention("15d or 10GiB") == timedelta(days=15)
    assert parse_retention("1y") == timedelta(days=365)
    assert parse_retention("10GiB") is None
    assert parse_retention("") is None
    infd = _target_infd(forecast={"history": "14d"})
    short = retention_short([], infd, timedelta(days=7), NOW)
    assert short is not None and short.status == "True" and "7d" in short.message
    enough = retention_short([], infd, timedelta(days=15), NOW)
    assert enough is not None and enough.status == "False"
    assert retention_short([], infd, None, NOW) is None


def test_scaling_limited_says_which_bound_holds() -> None:
    pool = _pool("p", max_nodes=50)
    for peak, bounds, reason in (
        (1.0, {"min": 3, "max": 10}, "TooFewReplicas"),
        (400.0, {"min": 1, "max": 4}, "TooManyReplicas"),
        (20.0, {"min": 1, "max": 10}, "DesiredWithinRange"),
    ):
        infd = InferenceDeployment.model_validate(
            manifests.deployment("d", "team", replicas=bounds)
        )

        result = plan(
            plan_input(
                Observed(
                    NOW,
                    [infd],
                    [pool],
                    [],
                    {},
                    {
                        ("team", "d"): ForecastResult(
                            DemandForecast(peak, 0.9, model="m"), None, peak
                        )
                    },
                )
            )
        )
        limited = scaling_limited([], infd, result.deployments[("team", "d")], NOW)
        assert limited.reason == reason, (peak, bounds, limited)


def test_the_example_karpenter_nodepools_map_their_pools() -> None:
    docs = [
        d
        for d in yaml.safe_load_all(
            (REPO / "examples/integrations/karpenter/nodepools.yaml").read_text()
        )
        if d
    ]
    pools = {
        d["metadata"]["name"]: GPUNodePool.model_validate(d)
        for d in docs
        if d["kind"] == "GPUNodePool"
    }
    node_pools = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NodePool"}
    assert set(pools) == set(node_pools)
    for pool in pools.values():
        assert pool.spec.provider.karpenter is not None
        assert mapping_problems(pool, node_pools[pool.spec.provider.karpenter.node_pool]) == []


def test_a_wrong_nodepool_mapping_is_named() -> None:
    pool = _pool(
        "l40s",
        capacity_type="spot",
        nodeLabels={"nvidia.com/gpu.product": "NVIDIA-L40S"},
        nodeTaints=[{"key": "spot", "value": "true"}],
        provider={"karpenter": {"nodePool": "gpu"}},
    )
    node_pool = {
        "spec": {
            "template": {
                "spec": {
                    "requirements": [
                        {
                            "key": "karpenter.sh/capacity-type",
                            "operator": "In",
                            "values": ["spot", "on-demand"],
                        },
                        {
                            "key": "node.kubernetes.io/instance-type",
                            "operator": "In",
                            "values": ["a", "b"],
                        },
                    ]
                }
            }
        }
    }
    problems = " | ".join(mapping_problems(pool, node_pool))
    assert "karpenter.sh/capacity-type In [spot]" in problems
    assert "one node.kubernetes.io/instance-type" in problems
    assert "nvidia.com/gpu.product exists only after a node boots" in problems
    assert "peakwise.dev/pool=l40s" in problems
    assert "taints must carry spot=true:NoSchedule" in problems


def test_prometheus_headers_from_arguments_and_a_file(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("X-Scope-OrgID: team-a\n\nX-Api-Key:  s3cret \n")
    assert prometheus_headers(["A=b=c"], str(headers)) == {
        "A": "b=c",
        "X-Scope-OrgID": "team-a",
        "X-Api-Key": "s3cret",
    }
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        prometheus_headers(["nope"], None)

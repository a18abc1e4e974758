"""Peakwise in the stack teams already run, end to end on the real cluster (issue 16).

One operator process for the module (the chart's ServiceAccount and RBAC, as in
test_operator.py) and, in the namespace `e2e-int`:

- `web`: an existing apps/v1 Deployment named by a targetRef, and `multi`: a LeaderWorkerSet
  (its CRD from the Go module sigs.k8s.io/lws, group size 2, one GPU a pod) — both pre-scaled
  through /scale ahead of a daily peak pushed into Prometheus; the LWS pool is sized for the
  whole groups; the workloads' templates are never touched;
- `owned`: a Deployment an HPA already scales: reported (condition, Event), never written;
- `rec`: a Recommend-mode targetRef: status only;
- the pools take their node price from OpenCost's series written into the real Prometheus
  (`node_total_hourly_cost`), one falls back to pricePerNodeHour;
- the desired replicas KEDA or an HPA would follow: the operator's /metrics scraped by a
  second real Prometheus and queried as the shipped ScaledObject does.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml
from kubernetes import client, config

from e2e import third_party_crds
from e2e.clusterfix import LocalCluster
from e2e.operatorproc import OperatorProcess, chart_rbac
from e2e.polling import wait_for
from e2e.promstack import PrometheusServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-int"
RELEASE, RELEASE_NS = "e2e-int", "e2e-int-system"
INTERVAL_S = 3.0
PEAK_QUERY = 'peakwise_trace_requests_per_minute{service="e2e-int-peak"} / 60'
LEAD_S = 60.0
PEAK_REPLICAS = 5  # 20 requests/s at 4/s a replica
BASE_REPLICAS = 2
OPENCOST_PRICE = 7.5
LWS_PRICE = 20.0
GPU, LWS_GPU = "e2e-int-gpu", "e2e-int-lws-gpu"


def _apply(cluster: LocalCluster, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _pool(name: str, gpu: str, price: float) -> dict[str, Any]:
    return manifests.pool(
        name,
        "onDemand",
        gpu=gpu,
        price=price,
        max_nodes=6,
        provisioningTime="1m",
        nodeLabels={"peakwise.dev/capacity-type": "onDemand"},
        priceSource={"openCost": {}},
    )


def _target(name: str, kind: str, mode: str = "Enforce", gpu: str = GPU) -> dict[str, Any]:
    body = manifests.deployment(
        name,
        NS,
        mode=mode,
        gpu=gpu,
        query=PEAK_QUERY,
        demand={"query": PEAK_QUERY, "targetUtilization": 1.0},
        replicas={"min": 1, "max": 16},
        capacity={"spot": {"maxFraction": 0}},
        forecast={"history": "3d", "leadTime": "1m", "quantile": 0.9},
        scaleDown={"stabilizationWindow": "1m"},
    )
    del body["spec"]["template"]
    api = "leaderworkerset.x-k8s.io/v1" if kind == "LeaderWorkerSet" else "apps/v1"
    body["spec"]["targetRef"] = {"apiVersion": api, "kind": kind, "name": name}
    return body


def _pod(select: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "vllm",
                "image": "e2e/vllm:1",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ]
    }
    if select:
        spec["nodeSelector"] = {"peakwise.dev/capacity-type": "onDemand"}
    return spec


def _workload(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": _pod(select=True)},
        },
    }


def _leader_worker_set(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {"size": 2, "workerTemplate": {"spec": _pod(select=False)}},
        },
    }


def _hpa(name: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": 5,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50},
                    },
                }
            ],
        },
    }


@dataclass
class Timeline:
    """spec.replicas of `web` and `multi`, sampled each second: (epoch s, web, multi)."""

    start: float
    end: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def first(self, column: int, after: float, test: Any) -> float | None:
        return next((s[0] for s in list(self.samples) if s[0] >= after and test(s[column])), None)


def _push_history(cluster: LocalCluster, now: float) -> Timeline:
    """Three days of 2/s with a daily one-minute peak of 20/s, today's 90 to 150 s away."""
    minute = int(now // 60) * 60
    start = (int(now) + 90 + 59) // 60 * 60
    samples = [
        (float(t), 1200.0 if (t - start) % 86400 < 60 else 120.0)
        for t in range(start - 3 * 86400, minute, 60)
    ]
    labels = {"__name__": "peakwise_trace_requests_per_minute", "service": "e2e-int-peak"}
    cluster.prometheus.push([(labels, samples)])
    return Timeline(start=float(start), end=float(start + 60))


def _push_opencost(cluster: LocalCluster) -> None:
    """OpenCost's series for every node the e2e-int-od pool may get (kwok names them)."""
    now = time.time()
    cluster.prometheus.push(
        [
            (
                {
                    "__name__": "node_total_hourly_cost",
                    "node": f"e2e-int-od-{i}",
                    "instance_type": "e2e.gpu4",
                },
                [(now, OPENCOST_PRICE)],
            )
            for i in range(6)
        ]
    )


def _sample(kubeconfig: str, timeline: Timeline, cluster: LocalCluster) -> None:
    api_client = config.new_client_from_config(config_file=kubeconfig)
    apps, custom = client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    pushed = 0.0
    while not timeline.stop.wait(1.0):
        try:
            if time.time() - pushed > 20:
                _push_opencost(cluster)
                pushed = time.time()
            web = apps.read_namespaced_deployment("web", NS).spec.replicas or 0
            lws = custom.get_namespaced_custom_object(
                "leaderworkerset.x-k8s.io", "v1", NS, "leaderworkersets", "multi"
            )
            multi = int(lws["spec"].get("replicas") or 0)
        except Exception:  # a slow or failed read is only a missing sample
            continue
        timeline.samples.append((time.time(), web, multi))


class IntegrationsOperator(OperatorProcess):
    timeline: Timeline | None = None
    templates: dict[str, Any] | None = None
    """The workloads' pod templates as created (Peakwise must never change them)."""


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IntegrationsOperator]:
    work = tmp_path_factory.mktemp("integrations")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    lws_crd = third_party_crds.leader_worker_set_crd()
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(lws_crd)
    )
    # By name: `crd --all` also waits on CRDs other modules create meanwhile, and fails on one
    # whose status the API server has not written yet.
    crd_names = [
        f"crd/{plural}.peakwise.dev"
        for plural in ("inferencedeployments", "gpunodepools", "costbudgets")
    ]
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        *crd_names,
        f"crd/{lws_crd['metadata']['name']}",
        "--timeout=60s",
        timeout=90,
    )
    for namespace in (NS, RELEASE_NS):
        cluster.kubectl("create", "namespace", namespace, check=False)
    rbac = chart_rbac(cluster, RELEASE, RELEASE_NS, (NS,))
    _apply(cluster, *rbac)
    kubeconfig = cluster.service_account_kubeconfig(
        RELEASE_NS, f"{RELEASE}-peakwise", work / "sa.kubeconfig"
    )
    _apply(cluster, _pool("e2e-int-od", GPU, 40.0), _pool("e2e-int-lws", LWS_GPU, LWS_PRICE))
    # Budgets fail closed: without one the namespace's services are planned, not scaled.
    _apply(cluster, manifests.budget(NS, hourly=10_000.0, enforcement="Soft"))
    _apply(
        cluster,
        _workload("web", 1),
        _leader_worker_set("multi"),
        _workload("owned", 2),
        _hpa("owned-hpa", "owned"),
        _workload("rec", 1),
    )
    process = IntegrationsOperator(cluster, work / "operator.log", kubeconfig, (NS,), INTERVAL_S)
    process.templates = {
        name: cluster.kubectl_json("get", "deployment", name, "-n", NS)["spec"]["template"]
        for name in ("web", "owned", "rec")
    }
    process.timeline = _push_history(cluster, time.time())
    _push_opencost(cluster)
    _apply(
        cluster,
        _target("web", "Deployment"),
        _target("multi", "LeaderWorkerSet", gpu=LWS_GPU),
        _target("owned", "Deployment"),
        _target("rec", "Deployment", mode="Recommend"),
    )
    sampler = threading.Thread(
        target=_sample, args=(cluster.kubeconfig, process.timeline, cluster), daemon=True
    )
    sampler.start()
    process.start()
    try:
        yield process
    finally:
        process.timeline.stop.set()
        sampler.join(timeout=10)
        try:
            # Deleted while the operator runs: kopf removes its finalizers.
            cluster.kubectl(
                "delete", "inferencedeployments", "--all", "-n", NS, "--timeout=60s", timeout=90
            )
            deleted = cluster.kubectl(
                "delete",
                "gpunodepool",
                "e2e-int-od",
                "e2e-int-lws",
                "--timeout=60s",
                timeout=90,
                check=False,
            )
            if deleted.returncode:
                # Seen now and then and not yet understood (no drain was pending): say what
                # the pools looked like, and free them so later modules get a clean cluster.
                left = cluster.kubectl("get", "gpunodepools", "-o", "yaml", check=False).stdout
                print(f"pools not deleted ({deleted.stderr.strip()}):\n{left[-3000:]}")
                for pool in ("e2e-int-od", "e2e-int-lws"):
                    cluster.kubectl(
                        "patch",
                        "gpunodepool",
                        pool,
                        "--type",
                        "merge",
                        "-p",
                        '{"metadata":{"finalizers":null}}',
                        check=False,
                    )
        finally:
            process.stop()
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
        cluster.kubectl("delete", "crd", lws_crd["metadata"]["name"], "--wait=false", check=False)
        lines = [x for x in process.log.read_text().splitlines() if '"DEBUG"' not in x]
        print(f"operator log: {process.log}; its last lines:")
        print("\n".join(line[:400] for line in lines[-30:]))


def _status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(
        cluster.kubectl_json("get", "inferencedeployment", name, "-n", NS).get("status") or {}
    )


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def _pool_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "gpunodepool", name).get("status") or {})


def test_target_deployment_and_leader_worker_set_are_prescaled_ahead_of_a_daily_peak(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    peak = operator.timeline
    assert peak is not None
    web_up = wait_for(
        "web scaled up for the peak",
        lambda: peak.first(1, 0, lambda n: n >= PEAK_REPLICAS),
        timeout=max(10.0, peak.start - time.time()),
    )
    multi_up = wait_for(
        "multi scaled up for the peak",
        lambda: peak.first(2, 0, lambda n: n >= PEAK_REPLICAS),
        timeout=max(10.0, peak.start - time.time()),
    )
    assert web_up <= peak.start - LEAD_S, "the Deployment was not scaled one lead time ahead"
    assert multi_up <= peak.start - LEAD_S, "the LeaderWorkerSet was not scaled one lead time ahead"
    # The LWS pool carries whole groups: 5 replicas x 2 pods x 1 GPU on 4-GPU nodes.
    status = wait_for(
        "multi's group counted",
        lambda: (s := _status(cluster, "multi")).get("desiredReplicas", 0) >= PEAK_REPLICAS and s,
    )
    assert status["target"]["groupSize"] == 2
    assert status["target"]["gpusPerReplica"] == 2
    wait_for(
        "the LWS pool sized for whole groups",
        lambda: (
            _pool_status(cluster, "e2e-int-lws").get("desiredNodes", 0)
            >= math.ceil(PEAK_REPLICAS * 2 / 4)
        ),
    )
    # web's pods really run on the pool's nodes: its ready replicas reach the peak's.
    wait_for(
        "web's pods ready",
        lambda: (
            cluster.kubectl_json("get", "deployment", "web", "-n", NS)["status"].get(
                "readyReplicas", 0
            )
            >= PEAK_REPLICAS
        ),
        timeout=120,
    )
    web = _status(cluster, "web")
    assert _conditions(web)["ScalingActive"]["status"] == "True"
    assert _conditions(web)["Placement"]["status"] == "True", web
    assert operator.child_writes("web", NS) >= 1  # /scale writes, counted as verb=scale
    # Released after the peak, within the stabilisation window and a forecast step.
    wait_for(
        "web released after the peak",
        lambda: peak.first(1, web_up, lambda n: n <= BASE_REPLICAS),
        timeout=max(10.0, peak.end + 150 - time.time()),
    )
    after = cluster.kubectl_json("get", "deployment", "web", "-n", NS)["spec"]["template"]
    assert after == (operator.templates or {})["web"], "Peakwise changed the workload's template"


def test_leader_worker_set_without_pool_selection_is_reported(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    placement = wait_for(
        "multi's Placement condition",
        lambda: _conditions(_status(cluster, "multi")).get("Placement"),
    )
    assert placement["status"] == "False"
    assert "select no pool" in placement["message"]


def test_an_hpa_scaling_the_target_is_reported_not_fought(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    active = wait_for(
        "owned's ScalingActive condition",
        lambda: _conditions(_status(cluster, "owned")).get("ScalingActive"),
    )
    assert active["status"] == "False"
    assert active["reason"] == "AutoscalerConflict"
    assert "HorizontalPodAutoscaler owned-hpa" in active["message"]
    assert _status(cluster, "owned")["target"]["scaledBy"] == ["HorizontalPodAutoscaler owned-hpa"]
    events = wait_for(
        "an AutoscalerConflict Event",
        lambda: cluster.kubectl_json(
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.name=owned,reason=AutoscalerConflict",
        )["items"],
    )
    assert len(events) == 1
    operator.wait_rounds(2)
    assert operator.child_writes("owned", NS) == 0
    live = cluster.kubectl_json("get", "deployment", "owned", "-n", NS)
    assert live["spec"]["template"] == (operator.templates or {})["owned"]


def test_recommend_mode_target_touches_nothing(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    status = wait_for(
        "rec planned", lambda: (s := _status(cluster, "rec")).get("desiredReplicas") and s
    )
    assert _conditions(status)["ScalingActive"]["reason"] == "Recommending"
    operator.wait_rounds(2)
    assert operator.child_writes("rec", NS) == 0
    live = cluster.kubectl_json("get", "deployment", "rec", "-n", NS)
    assert live["spec"]["replicas"] == 1
    assert live["spec"]["template"] == (operator.templates or {})["rec"]


def test_pools_take_their_price_from_opencost_and_fall_back_to_the_spec(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    od = wait_for(
        "the OpenCost price",
        lambda: (
            (s := _pool_status(cluster, "e2e-int-od")).get("pricePerNodeHour") == OPENCOST_PRICE
            and s
        ),
        timeout=120,
    )
    assert od["priceSource"].startswith("opencost node_total_hourly_cost")
    assert _conditions(od)["PriceSource"]["status"] == "True"
    lws = wait_for(
        "the LWS pool's PriceSource condition",
        lambda: _conditions(_pool_status(cluster, "e2e-int-lws")).get("PriceSource"),
    )
    assert lws["status"] == "False"
    assert lws["reason"] == "FallbackPrice"
    assert _pool_status(cluster, "e2e-int-lws")["pricePerNodeHour"] == LWS_PRICE

    # The plan is costed at the live price: web's replicas share 4-GPU nodes at 7.5/h.
    def costed() -> dict[str, Any] | None:
        status = _status(cluster, "web")
        desired, hourly = status.get("desiredReplicas", 0), status["cost"]["hourly"]
        return status if desired and hourly == pytest.approx(desired * OPENCOST_PRICE / 4) else None

    wait_for("web costed at the OpenCost price", costed, timeout=60)


def test_prometheus_retention_is_read_and_covers_the_history(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    retention = wait_for(
        "the RetentionShort condition",
        lambda: _conditions(_status(cluster, "web")).get("RetentionShort"),
    )
    # hack/cluster keeps 36500d; forecast.history is 3d.
    assert retention["status"] == "False"
    assert "36500d" in retention["message"]


def test_desired_replicas_for_keda_and_hpa_from_a_real_prometheus(
    cluster: LocalCluster, operator: IntegrationsOperator, tmp_path: Path
) -> None:
    """The operator's /metrics scraped by a real Prometheus, queried as the shipped KEDA
    ScaledObject (examples/integrations/keda-scaledobject.yaml) does: it equals the planned
    replicas."""
    example = next(
        d
        for d in yaml.safe_load_all(
            (REPO / "examples" / "integrations" / "keda-scaledobject.yaml").read_text()
        )
        if d and d["kind"] == "ScaledObject"
    )
    query = example["spec"]["triggers"][0]["metadata"]["query"]
    namespace, name = example["metadata"]["namespace"], example["spec"]["scaleTargetRef"]["name"]
    query = query.replace(f'namespace="{namespace}"', f'namespace="{NS}"')
    query = query.replace(f'name="{name}"', 'name="web"')
    scraper = PrometheusServer(tmp_path / "scraper")
    scraper.extra_scrape_configs = [
        {
            "job_name": "peakwise",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
        }
    ]
    scraper.start()
    try:

        def agrees() -> tuple[float, int] | None:
            result = scraper.query(query)["result"]
            desired = _status(cluster, "web").get("desiredReplicas")
            if result and desired is not None and float(result[0]["value"][1]) == desired:
                return float(result[0]["value"][1]), desired
            return None

        value, desired = wait_for("the ScaledObject's query answering", agrees, timeout=60)
        assert value == desired >= 1
    finally:
        scraper.stop()


def test_the_example_karpenter_nodepools_pass_karpenters_own_schema(
    cluster: LocalCluster, operator: IntegrationsOperator
) -> None:
    """examples/integrations/karpenter/nodepools.yaml against the NodePool CRD of the pinned
    sigs.k8s.io/karpenter module (a server-side dry run: nothing is stored)."""
    definition = third_party_crds.nodepool_crd()
    name = definition["metadata"]["name"]
    existed = cluster.kubectl("get", "crd", name, check=False).returncode == 0
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(definition)
    )
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    try:
        docs = yaml.safe_load_all(
            (REPO / "examples" / "integrations" / "karpenter" / "nodepools.yaml").read_text()
        )
        node_pools = [d for d in docs if d and d["kind"] == "NodePool"]
        assert len(node_pools) == 2
        out = cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(node_pools)
        )
        assert out.stdout.count("(server dry run)") == 2, out.stdout
    finally:
        if not existed:
            cluster.kubectl("delete", "crd", name, "--wait=false", check=False)

"""Smoke test of the local cluster: the pieces work together.

CRD and custom object; RBAC really on; GPU pods placed by the real scheduler onto the
right kwok nodes and Running, GPU capacity respected, scale down; spot taint; Prometheus
returns the backfilled history; helm runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from e2e import kwok_nodes, third_party_crds
from e2e.clusterfix import LocalCluster
from e2e.kwok_nodes import CAPACITY_TYPE_LABEL, GPU_RESOURCE, POOL_LABEL, GPUPool
from e2e.polling import wait_for
from e2e.trace_backfill import REQUESTS_GAUGE, read_trace, traces_dir

pytestmark = pytest.mark.e2e

TRACES = traces_dir()
NS = "smoke"

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.peakwise.dev"},
    "spec": {
        "group": "e2e.peakwise.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10}
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster) -> str:
    cluster.kubectl("create", "namespace", NS)
    return NS


def test_versions(cluster: LocalCluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == cluster.kubernetes_version
    assert out["serverVersion"]["gitVersion"] == cluster.kubernetes_version
    helm = cluster.helm("version", "--short").stdout
    assert helm.startswith("v3.")


def test_crd_and_custom_object(cluster: LocalCluster, ns: str) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.e2e.peakwise.dev", "--timeout=60s"
    )
    widget = {
        "apiVersion": "e2e.peakwise.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": ns},
        "spec": {"size": 3},
    }
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(widget))
    got = cluster.kubectl_json("get", "widget", "w1", "-n", ns)
    assert got["spec"] == {"size": 3}
    # The schema is enforced by the real apiserver.
    bad = {**widget, "metadata": {"name": "w2", "namespace": ns}, "spec": {"size": 99}}
    proc = cluster.kubectl("apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "spec.size" in proc.stderr


def test_rbac_is_enforced(cluster: LocalCluster, ns: str) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    cluster.kubectl(
        "create", "role", "cm-reader", "-n", ns, "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "-n",
        ns,
        "--role=cm-reader",
        f"--serviceaccount={ns}:nobody",
    )
    sa_config = cluster.service_account_kubeconfig(ns, "nobody")
    as_sa = ["--kubeconfig", sa_config]
    wait_for(
        "the RoleBinding to take effect",
        lambda: cluster.kubectl("get", "configmaps", *as_sa, check=False).returncode == 0,
        timeout=30,
    )
    denied = cluster.kubectl("get", "nodes", *as_sa, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    who = f"--as=system:serviceaccount:{ns}:nobody"
    assert (
        cluster.kubectl("auth", "can-i", "list", "nodes", who, check=False).stdout.strip() == "no"
    )
    assert cluster.kubectl("auth", "can-i", "list", "nodes").stdout.strip() == "yes"


def _pods(cluster: LocalCluster, ns: str, selector: str) -> list[dict[str, Any]]:
    return list(cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"])


def _deployment(name: str, pool: str, gpus: int, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {**kwok_nodes.gpu_pod_spec(pool, gpus), **spec},
            },
        },
    }


def test_gpu_pods_scheduled_on_pool_and_scaled(cluster: LocalCluster, ns: str) -> None:
    reserved = GPUPool("h100-reserved", capacity_type="reserved", gpus_per_node=8)
    other = GPUPool("l4-ondemand", capacity_type="on-demand", gpu_product="NVIDIA-L4")
    reserved_nodes = set(cluster.add_gpu_pool(reserved, 2))
    cluster.add_gpu_pool(other, 1)

    node = cluster.kubectl_json("get", "node", "h100-reserved-0")
    assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
    assert node["metadata"]["labels"][POOL_LABEL] == "h100-reserved"
    assert node["metadata"]["labels"][CAPACITY_TYPE_LABEL] == "reserved"

    # 4 GPUs a pod, 8 a node, 2 nodes: 3 replicas fit.
    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", stdin=json.dumps(_deployment("llm", "h100-reserved", 4, 3))
    )

    def all_running() -> list[dict[str, Any]] | None:
        pods = _pods(cluster, ns, "app=llm")
        ok = len(pods) == 3 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = wait_for("3 llm pods Running", all_running)
    assert {p["spec"]["nodeName"] for p in pods} <= reserved_nodes
    for p in pods:
        ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert p["status"]["podIP"]

    # Scale beyond the GPUs: 4 run (2 a node), the 5th stays Pending for lack of GPUs.
    cluster.kubectl("scale", "deployment/llm", "-n", ns, "--replicas=5")

    def four_running_one_pending() -> list[dict[str, Any]] | None:
        pods = _pods(cluster, ns, "app=llm")
        phases = sorted(p["status"].get("phase") for p in pods)
        return pods if phases == ["Pending"] + ["Running"] * 4 else None

    pods = wait_for("4 Running + 1 Pending", four_running_one_pending)
    pending = next(p for p in pods if p["status"]["phase"] == "Pending")
    events = cluster.kubectl_json(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.name={pending['metadata']['name']}",
    )["items"]
    wait_for(
        "FailedScheduling event",
        lambda: (
            any(
                "nvidia.com/gpu" in e.get("message", "")
                for e in cluster.kubectl_json(
                    "get",
                    "events",
                    "-n",
                    ns,
                    "--field-selector",
                    f"involvedObject.name={pending['metadata']['name']}",
                )["items"]
            )
            or None
        ),
        timeout=30,
    )
    del events
    per_node: dict[str, int] = {}
    for p in pods:
        if p["status"]["phase"] == "Running":
            per_node[p["spec"]["nodeName"]] = per_node.get(p["spec"]["nodeName"], 0) + 1
    assert per_node == {"h100-reserved-0": 2, "h100-reserved-1": 2}

    # Scale down: pods go.
    cluster.kubectl("scale", "deployment/llm", "-n", ns, "--replicas=1")
    wait_for(
        "1 llm pod left",
        lambda: len(_pods(cluster, ns, "app=llm")) == 1 or None,
    )


def test_spot_taint(cluster: LocalCluster, ns: str) -> None:
    spot = GPUPool("a100-spot", capacity_type="spot", gpu_product="NVIDIA-A100-SXM4-80GB")
    (spot_node,) = cluster.add_gpu_pool(spot, 1)
    taints = cluster.kubectl_json("get", "node", spot_node)["spec"]["taints"]
    assert {"key": CAPACITY_TYPE_LABEL, "value": "spot", "effect": "NoSchedule"} in taints

    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", stdin=json.dumps(_deployment("intolerant", "a100-spot", 1, 1))
    )
    toleration = {
        "key": CAPACITY_TYPE_LABEL,
        "operator": "Equal",
        "value": "spot",
        "effect": "NoSchedule",
    }
    cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        stdin=json.dumps(_deployment("tolerant", "a100-spot", 1, 1, tolerations=[toleration])),
    )
    (pod,) = wait_for(
        "tolerant pod Running",
        lambda: [
            p for p in _pods(cluster, ns, "app=tolerant") if p["status"].get("phase") == "Running"
        ],
    )
    assert pod["spec"]["nodeName"] == spot_node
    time.sleep(2)
    (waiting,) = _pods(cluster, ns, "app=intolerant")
    assert waiting["status"]["phase"] == "Pending"
    assert not waiting["spec"].get("nodeName")


def test_helm_install(cluster: LocalCluster, ns: str, tmp_path: Path) -> None:
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    cluster.helm("install", "tiny", str(chart), "-n", ns, "--set", "greeting=hi", "--wait")
    cm = cluster.kubectl_json("get", "configmap", "tiny-cm", "-n", ns)
    assert cm["data"] == {"greeting": "hi"}
    cluster.helm("uninstall", "tiny", "-n", ns, "--wait")
    gone = cluster.kubectl("get", "configmap", "tiny-cm", "-n", ns, check=False)
    assert gone.returncode != 0


def test_prometheus_backfilled_history(cluster: LocalCluster) -> None:
    # The cluster's Prometheus also scrapes the apiserver with the admin certificate.
    up = wait_for(
        "apiserver scraped",
        lambda: cluster.prometheus.query('up{job="kube-apiserver"} == 1')["result"] or None,
        timeout=60,
    )
    assert up
    trace = TRACES / "azure_llm_2023_conv_per_minute.csv"
    rows = read_trace(trace)
    result = cluster.backfill_trace(trace, "service=smoke")
    assert result.samples == len(rows)
    data = cluster.prometheus.query_range(
        f'{REQUESTS_GAUGE}{{service="smoke"}}', result.start, result.end, 60
    )
    (series,) = data["result"]
    got = [(int(float(t)), float(v)) for t, v in series["values"]]
    assert got == [(r.ts + result.shift_seconds, r.requests) for r in rows]


def test_third_party_crds_from_go_modules(cluster: LocalCluster) -> None:
    """Cluster API MachineDeployment and Karpenter NodePool, from their Go modules."""
    for module in ("sigs.k8s.io/cluster-api", "sigs.k8s.io/karpenter"):
        for text in third_party_crds.crd_texts(module).values():
            cluster.kubectl("apply", "--server-side", "-f", "-", stdin=text, timeout=120)
    for name in ("machinedeployments.cluster.x-k8s.io", "nodepools.karpenter.sh"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    resources = cluster.kubectl("api-resources", "-o", "name").stdout.split()
    assert "nodepools.karpenter.sh" in resources
    assert "machinedeployments.cluster.x-k8s.io" in resources

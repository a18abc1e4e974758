"""`helm install` runs the operator's own pod on a real node: kubelet, containerd and runc.

`hack/node up` adds one real node (kubelet from the same Kubernetes build as the control plane,
containerd and runc from Debian) to a cluster of this module's own, beside the kwok GPU nodes;
`hack/node import` hands it the image built from the Dockerfile. The chart is installed with the
image's tag, `imagePullPolicy: Never` and a nodeSelector for that node; the kubelet starts the
pod with the chart's security context, ServiceAccount token volume and liveness probe, and the
operator in it reconciles the examples.

Two departures from a production install, both forced by the test bed (docs/image.md): the API
server and Prometheus listen on 127.0.0.1 only, which no pod network reaches, so the Deployment
is patched to `hostNetwork: true` (which the `restricted` Pod Security Standard forbids, so the
release namespace does not enforce it) and `KUBERNETES_SERVICE_HOST`/`PORT` are set through
`operator.extraEnv` to the API server's loopback address (there is no kube-proxy for the
`kubernetes` Service's ClusterIP).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.clusterfix import LocalCluster
from e2e.polling import wait_for
from e2e.promstack import free_port

from image.imagelib import (
    CHART,
    REPO_ROOT,
    SERIES,
    backfill_example_history,
    build_image,
    example_documents,
    tag_for_checkout,
)

pytestmark = pytest.mark.e2e

HACK_NODE = REPO_ROOT / "hack" / "node"
NODE_NAME = "peakwise-node"
RELEASE, RELEASE_NS = "pwnode", "peakwise-node-system"
DEPLOYMENT = f"{RELEASE}-peakwise"

_wait = partial(wait_for, timeout=180.0, every=2.0)


@dataclass
class OnNode:
    cluster: LocalCluster
    liveness_port: int


def _hack_node(cluster: LocalCluster, *args: str) -> None:
    proc = subprocess.run(
        [str(HACK_NODE), *args],
        env={**cluster.tool_env(), "PEAKWISE_CLUSTER_DIR": str(cluster.state_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"hack/node {' '.join(args)}:\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def on_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnNode]:
    work = tmp_path_factory.mktemp("node")
    image = build_image(tag_for_checkout())
    cluster = LocalCluster(work / "cluster")
    cluster.up()
    try:
        _hack_node(cluster, "up")
        _hack_node(cluster, "import", image.tag)
        backfill_example_history(cluster, work)
        repository, _, tag = image.tag.rpartition(":")
        liveness = free_port()
        cluster.helm(
            *("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace"),
            *("--set", f"image.repository={repository}", "--set", f"image.tag={tag}"),
            *("--set", "image.pullPolicy=Never", "--set", "providers.kwok.enabled=true"),
            *("--set", "operator.interval=5s", "--set", f"prometheus.url={cluster.prometheus_url}"),
            *("--set", f"metrics.port={free_port()}", "--set", f"liveness.port={liveness}"),
            *("--set", "liveness.probe.initialDelaySeconds=5"),
            *("--set", "liveness.probe.periodSeconds=5"),
            *("--set", f"nodeSelector.kubernetes\\.io/hostname={NODE_NAME}"),
            *("--set", "operator.extraEnv[0].name=KUBERNETES_SERVICE_HOST"),
            *("--set", "operator.extraEnv[0].value=127.0.0.1"),
            *("--set", "operator.extraEnv[1].name=KUBERNETES_SERVICE_PORT"),
            *("--set-string", f"operator.extraEnv[1].value={cluster.env['API_PORT']}"),
        )
        cluster.kubectl(
            *("patch", "deployment", DEPLOYMENT, "-n", RELEASE_NS, "--type=merge"),
            *("-p", '{"spec":{"template":{"spec":{"hostNetwork":true}}}}'),
        )
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(example_documents(SERIES)))
        yield OnNode(cluster, liveness)
    finally:
        subprocess.run(
            [str(HACK_NODE), "down"],
            env={**cluster.tool_env(), "PEAKWISE_CLUSTER_DIR": str(cluster.state_dir)},
            capture_output=True,
            timeout=300,
            check=False,
        )
        cluster.down()


def _operator_pod(cluster: LocalCluster) -> dict[str, Any] | None:
    pods = cluster.kubectl_json(
        "get", "pods", "-n", RELEASE_NS, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    return (
        running[0]
        if len(running) == 1 and not pods[0]["metadata"].get("deletionTimestamp")
        else None
    )


def _pod_log(cluster: LocalCluster, pod: dict[str, Any]) -> str:
    """The container's log as the kubelet wrote it (kubectl logs needs a node address)."""
    meta = pod["metadata"]
    folder = Path(cluster.state_dir) / "node" / "pod-logs"
    logs = folder.glob(f"{meta['namespace']}_{meta['name']}_{meta['uid']}/operator/*.log")
    return "".join(path.read_text(errors="replace") for path in sorted(logs))


def test_the_kubelet_runs_the_chart_pod_with_its_security_context(on_node: OnNode) -> None:
    cluster = on_node.cluster
    pod = _wait("the operator's pod Running on the real node", lambda: _operator_pod(cluster))
    assert pod["spec"]["nodeName"] == NODE_NAME
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] and status["state"].get("running"), status
    assert status["image"].endswith(tag_for_checkout().rpartition("/")[2])
    security = pod["spec"]["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    # The ServiceAccount token came from the kubelet's projected volume, not from us.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert any("projected" in v for v in volumes.values()), volumes


def test_the_liveness_probe_passes(on_node: OnNode) -> None:
    cluster = on_node.cluster
    pod = _wait("the operator's pod", lambda: _operator_pod(cluster))
    probed = _wait(
        "three liveness probes answered",
        lambda: (text := _pod_log(cluster, pod)).count('"GET /healthz HTTP/1.1" 200') >= 3 and text,
    )
    assert "kube-probe" in probed
    again = cluster.kubectl_json("get", "pod", pod["metadata"]["name"], "-n", RELEASE_NS)
    assert again["status"]["containerStatuses"][0]["restartCount"] == 0
    events = cluster.kubectl_json(
        "get", "events", "-n", RELEASE_NS, "--field-selector", "reason=Unhealthy"
    )["items"]
    assert events == []


def test_the_pod_reconciles_the_examples(on_node: OnNode) -> None:
    cluster = on_node.cluster
    for namespace, name in (("chat", "assistant"), ("search", "query-rewriter")):
        _wait(
            f"a plan for {namespace}/{name}",
            lambda n=name, ns=namespace: (
                cluster.kubectl_json("get", "infd", n, "-n", ns).get("status") or {}
            ).get("desiredReplicas"),
        )
        _wait(
            f"the children of {namespace}/{name}",
            lambda n=name, ns=namespace: cluster.kubectl_json(
                "get", "deployments", "-n", ns, "-l", f"peakwise.dev/inference-deployment={n}"
            )["items"],
        )
    nodes = _wait(
        "the reserved pool's kwok nodes",
        lambda: (
            len(
                cluster.kubectl_json("get", "nodes", "-l", "peakwise.dev/pool=h100-reserved")[
                    "items"
                ]
            )
            >= 2
        ),
    )
    assert nodes
    pod = _operator_pod(cluster)
    assert pod is not None
    log = _pod_log(cluster, pod)
    assert "Traceback" not in log, log[-3000:]

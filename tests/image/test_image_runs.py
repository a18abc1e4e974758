"""The operator image, built from the Dockerfile and run as the chart's pod would run it.

`hack/image build` builds the image with buildah (chroot isolation) on a Python base
bootstrapped from Debian packages; `hack/image run` starts it with runc: uid 65532, read-only
root filesystem, tmpfs /tmp and /dev/shm, no capabilities, no privilege escalation, the
chart's CPU and memory limits. It connects to a local cluster of its own the way a pod does:
`KUBERNETES_SERVICE_HOST`/`PORT` and the chart's ServiceAccount token, CA and namespace at
/var/run/secrets/kubernetes.io/serviceaccount, with the args and environment of the Deployment
`helm install` created (whose own pod cannot start: the local cluster has no kubelet). The
repository's examples are applied with their demand queries pointed at a backfilled synthetic
trace. The tests check what it did in the cluster and what the kernel says about the process.

The module starts its own cluster: the examples' names (namespaces `chat` and `search`, the
three pools) are also used by tests sharing the session's cluster.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from e2e.clusterfix import LocalCluster
from e2e.polling import wait_for

from image.imagelib import (
    IMAGE_UID,
    RELEASE_NS,
    SERVICE_ACCOUNT,
    BuiltImage,
    ContainerOperator,
    Deployed,
    build_image,
    deploy_with_examples,
    tag_for_checkout,
)

pytestmark = pytest.mark.e2e

ENFORCED = {("chat", "assistant"), ("search", "query-rewriter")}
RECOMMENDED = {("chat", "assistant-70b"), ("search", "embedder")}
POOLS = ("h100-reserved", "l40s-spot", "l40s-on-demand")

# A cold operator in a container on a busy 2-core machine: allow three minutes.
_wait = partial(wait_for, timeout=180.0, every=2.0)


@dataclass
class Running:
    cluster: LocalCluster
    image: BuiltImage
    operator: ContainerOperator
    metrics_url: str
    healthz_url: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("image")
    image = build_image(tag_for_checkout())
    (work / "build.log").write_text(image.log)
    cluster = LocalCluster(work / "cluster")
    cluster.up()
    deployed: Deployed | None = None
    try:
        deployed = deploy_with_examples(cluster, image, work)
        yield Running(cluster, image, deployed.operator, deployed.metrics_url, deployed.healthz_url)
    finally:
        if deployed is not None:
            deployed.operator.stop()
            lines = deployed.operator.log.read_text(errors="replace").splitlines()
            print(f"operator log: {deployed.operator.log}; its last lines:")
            print("\n".join(line[:400] for line in lines[-30:]))
        cluster.down()


def _status(cluster: LocalCluster, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    scope = ("-n", namespace) if namespace else ()
    return dict(cluster.kubectl_json("get", kind, name, *scope).get("status") or {})


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _metric(text: str, name: str) -> float:
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


# --- the image -----------------------------------------------------------------------------


def test_image_has_few_layers_and_no_build_tools(running: Running) -> None:
    assert 2 <= running.image.layers <= 5, running.image
    root = Path(f"/proc/{running.operator.pid()}/root")
    venv, app = root / "opt" / "peakwise", root / "opt" / "peakwise-app"
    assert (app / "bin" / "peakwise").exists()
    assert (app / "peakwise" / "operator" / "main.py").exists()
    for tool in ("bin/pip", "bin/pip3"):
        assert not (venv / tool).exists(), tool
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("setuptools*")), "setuptools stays in the build stage"
    assert not list(site.glob("peakwise*.dist-info")), "the application is its own layer"
    assert not (site / "scipy" / "stats" / "tests").exists()
    assert not (root / "src").exists(), "the build stage's sources are not in the image"
    assert not (root / "opt" / "buildtools").exists()
    for path in ("usr/bin/gcc", "usr/bin/apt-get", "etc/pip.conf"):
        assert not (root / path).exists(), path


# --- the process, as the kernel sees it -------------------------------------------------------


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_runs_with_the_chart_security_context(running: Running) -> None:
    pid = running.operator.pid()
    status = _proc_status(pid)
    assert status["Uid"].split() == [str(IMAGE_UID)] * 4
    assert status["Gid"].split() == [str(IMAGE_UID)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} {status[caps]}"
    assert status["NoNewPrivs"] == "1"
    mounts = {
        fields[4]: (fields[5].split(","), line.split(" - ")[1].split()[0])
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if (fields := line.split())
    }
    assert "ro" in mounts["/"][0], mounts["/"]
    assert mounts["/tmp"][1] == "tmpfs" and "rw" in mounts["/tmp"][0]
    assert mounts["/dev/shm"][1] == "tmpfs"
    # /var/run is a symlink to /run in Debian, so the kernel names the mount by the latter.
    assert "ro" in mounts["/run/secrets/kubernetes.io/serviceaccount"][0]
    root = Path(f"/proc/{pid}/root")
    with pytest.raises(OSError, match="Read-only file system"):
        (root / "opt" / "peakwise" / "written-at-run-time").write_text("x")


def test_connects_in_cluster_with_the_chart_service_account(running: Running) -> None:
    pid = running.operator.pid()
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        if "=" in item
    )
    assert "KUBECONFIG" not in environ
    assert environ["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    token = Path(f"/proc/{pid}/root/run/secrets/kubernetes.io/serviceaccount/token")
    # Who that mounted token is, asked with it alone (no client certificate beside it).
    kubeconfig = running.operator.log.parent / "mounted-token.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": running.cluster.api_url,
                            "certificate-authority": str(token.parent / "ca.crt"),
                        },
                    }
                ],
                "users": [{"name": "mounted", "user": {"tokenFile": str(token)}}],
                "contexts": [{"name": "c", "context": {"cluster": "local", "user": "mounted"}}],
                "current-context": "c",
            }
        )
    )
    who = running.cluster.kubectl(
        *("auth", "whoami", "--kubeconfig", str(kubeconfig)),
        *("-o", "jsonpath={.status.userInfo.username}"),
    ).stdout
    assert who == f"system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}"
    # ... and it is that identity that acted: the operator's status writes succeed under it.
    _wait(
        "a status on the Enforce example",
        lambda: _status(running.cluster, "infd", "assistant", "chat").get("desiredReplicas"),
    )
    text = running.operator.log.read_text(errors="replace")
    denied = [line for line in text.splitlines() if " 403" in line or "forbidden" in line.lower()]
    assert not denied, "\n".join(denied[:10])


# --- what it did in the cluster ------------------------------------------------------------


def test_reconciles_the_examples(running: Running) -> None:
    cluster = running.cluster
    for namespace, name in ENFORCED | RECOMMENDED:
        status = _wait(
            f"a plan in {namespace}/{name}'s status",
            lambda n=name, ns=namespace: (
                (s := _status(cluster, "infd", n, ns)).get("desiredReplicas") and s
            ),
        )
        generation = cluster.kubectl_json("get", "infd", name, "-n", namespace)["metadata"]
        assert status["observedGeneration"] == generation["generation"]
        assert status["forecast"]["peak"] > 0
        assert status["cost"]["hourly"] >= 0
        assert {c["type"] for c in status["conditions"]} >= {"Ready", "Forecasting"}
    for namespace, name in ENFORCED:
        children = _wait(
            f"child Deployments of {namespace}/{name}",
            lambda n=name, ns=namespace: cluster.kubectl_json(
                "get", "deployments", "-n", ns, "-l", f"peakwise.dev/inference-deployment={n}"
            )["items"],
        )
        assert {c["metadata"]["ownerReferences"][0]["name"] for c in children} == {name}
    for namespace, name in RECOMMENDED:
        children = cluster.kubectl_json(
            "get", "deployments", "-n", namespace, "-l", f"peakwise.dev/inference-deployment={name}"
        )["items"]
        assert children == [], f"Recommend mode creates nothing ({namespace}/{name})"
    for namespace in ("chat", "search"):
        budget = _wait(
            f"the {namespace} budget's status",
            lambda ns=namespace: (
                (s := _status(cluster, "costbudget", "gpu-spend", ns)).get("conditions") and s
            ),
        )
        assert "hourlySpend" in budget


def test_scales_the_kwok_pools(running: Running) -> None:
    cluster = running.cluster

    def reserved_nodes() -> list[dict[str, Any]] | None:
        items = cluster.kubectl_json("get", "nodes", "-l", "peakwise.dev/pool=h100-reserved")
        return items["items"] if len(items["items"]) >= 2 else None

    nodes = _wait("the reserved pool's two nodes", reserved_nodes)
    assert all(n["status"]["capacity"]["nvidia.com/gpu"] == "8" for n in nodes)
    _wait(
        "the reserved pool Ready",
        lambda: _status(cluster, "gpunodepool", "h100-reserved").get("readyNodes") == 2,
    )
    for pool in POOLS:
        status = _wait(
            f"{pool}'s status",
            lambda p=pool: (s := _status(cluster, "gpunodepool", p)).get("conditions") and s,
        )
        assert "desiredNodes" in status, status


def test_fit_worker_fits_models(running: Running) -> None:
    """The fits run in a spawned worker process, which needs /dev/shm for its semaphores."""

    def fitted() -> float | None:
        value = _metric(_get(running.metrics_url), "peakwise_model_fits_total")
        return value if value >= len(ENFORCED | RECOMMENDED) else None

    assert _wait("a model fitted for every example service", fitted)
    init = running.operator.pid()
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    commands = [Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ") for c in children]
    assert any(b"multiprocessing" in c for c in commands), commands
    for child in children:
        assert _proc_status(int(child))["Uid"].split()[0] == str(IMAGE_UID)


def test_metrics_and_healthz_answer(running: Running) -> None:
    def forecasts() -> str | None:
        text = _get(running.metrics_url)
        return text if "peakwise_demand_forecast{" in text else None

    metrics = _wait("a forecast on /metrics", forecasts)
    assert "process_resident_memory_bytes" in metrics
    assert _get(running.healthz_url)
    assert running.operator.running()

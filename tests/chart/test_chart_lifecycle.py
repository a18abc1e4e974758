"""The Helm lifecycle on a real cluster: CRD upgrades through the peakwise-crds chart, and an
uninstall that leaves no namespace stuck Terminating.

Helm never upgrades a chart's crds/ folder, so the CRDs also ship as the templates of
charts/peakwise-crds. Here an older release of that chart (today's CRDs less the
InferenceDeployment field `spec.modelLoadTime`) is installed first, then upgraded to today's:
the field that the old schema rejected is accepted and kept, and the objects made before the
upgrade are still there.

The operator (kopf) puts the finalizer `peakwise.dev/finalizer` on every InferenceDeployment,
CostBudget and GPUNodePool it serves (its per-object timers need one), so the order of an
uninstall matters: objects are deleted while the operator runs (it removes its finalizer),
then the operator's release, then the CRD release (which keeps the CRDs by default). For a
cluster where the operator went first, the documented command releases what it left.

The module starts its own cluster: it installs and removes CRDs, which the tests sharing the
session's cluster rely on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.clusterfix import ClusterError, LocalCluster
from e2e.polling import wait_for
from e2e.promstack import free_port

from chart.chartlib import REPO_ROOT

pytestmark = pytest.mark.e2e

CHART = REPO_ROOT / "charts" / "peakwise"
CRD_CHART = REPO_ROOT / "charts" / "peakwise-crds"
CRDS_NS = "peakwise-system"
FINALIZER = "peakwise.dev/finalizer"
NEW_FIELD = "modelLoadTime"
KINDS = ("inferencedeployments", "costbudgets", "gpunodepools")

_wait = partial(wait_for, timeout=120.0, every=1.0)


def _apply(cluster: LocalCluster, *docs: dict[str, Any], check: bool = True) -> Any:
    return cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), check=check)


def _deployment(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "mode": "Recommend",
            "template": {"spec": {"containers": [{"name": "server", "image": "life/server:1"}]}},
            "gpuProfiles": [
                {"gpuType": "life-gpu", "gpusPerReplica": 1, "throughputPerReplica": 5}
            ],
            "demand": {"query": 'life_demand{service="x"}'},
            "replicas": {"min": 1, "max": 4},
            **extra,
        },
    }


def _budget(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "CostBudget",
        "metadata": {"name": "life-budget", "namespace": namespace},
        "spec": {"limits": {"hourly": 50}},
    }


def _pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "GPUNodePool",
        "metadata": {"name": name},
        "spec": {
            "gpuType": "life-gpu",
            "gpusPerNode": 4,
            "capacityType": "onDemand",
            "pricePerNodeHour": 4.0,
            "maxNodes": 2,
            "provider": {"kwok": {"nodeNamePrefix": name}},
        },
    }


def _old_crd_chart(target: Path) -> Path:
    """charts/peakwise-crds as an earlier release: version 0.0.9, without NEW_FIELD."""
    shutil.copytree(CRD_CHART, target)
    chart = yaml.safe_load((target / "Chart.yaml").read_text())
    chart["version"] = "0.0.9"
    (target / "Chart.yaml").write_text(yaml.safe_dump(chart))
    path = target / "files" / "peakwise.dev_inferencedeployments.yaml"
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"][NEW_FIELD]
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return target


@dataclass
class Upgrade:
    cluster: LocalCluster
    rejected_before: subprocess.CompletedProcess[str]
    revision_before: int


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgrade]:
    work = tmp_path_factory.mktemp("lifecycle")
    cluster = LocalCluster(work / "cluster")
    cluster.up()
    try:
        old = _old_crd_chart(work / "peakwise-crds-0.0.9")
        cluster.helm(
            *("install", "peakwise-crds", str(old), "--namespace", CRDS_NS, "--create-namespace"),
            "--wait",
        )
        cluster.kubectl("create", "namespace", "life-old")
        _apply(cluster, _deployment("made-before", "life-old"))
        rejected = _apply(
            cluster, _deployment("with-new-field", "life-old", **{NEW_FIELD: "3m"}), check=False
        )
        cluster.helm("upgrade", "peakwise-crds", str(CRD_CHART), "--namespace", CRDS_NS, "--wait")
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield Upgrade(cluster, rejected, revision_before=1)
    finally:
        cluster.down()


def test_the_old_crds_reject_the_field_they_lack(upgraded: Upgrade) -> None:
    assert upgraded.rejected_before.returncode != 0
    assert f'unknown field "spec.{NEW_FIELD}"' in upgraded.rejected_before.stderr


def test_helm_upgrade_of_the_crd_chart_adds_the_field(upgraded: Upgrade) -> None:
    cluster = upgraded.cluster
    history = yaml.safe_load(
        cluster.helm("history", "peakwise-crds", "-n", CRDS_NS, "-o", "yaml").stdout
    )
    assert [h["chart"] for h in history] == ["peakwise-crds-0.0.9", "peakwise-crds-0.1.0"]
    _apply(cluster, _deployment("with-new-field", "life-old", **{NEW_FIELD: "3m"}))
    stored = cluster.kubectl_json("get", "infd", "with-new-field", "-n", "life-old")
    assert stored["spec"][NEW_FIELD] == "3m", "kept, not pruned"
    # The API server republishes its OpenAPI (what `kubectl explain` reads) a little after the
    # CRD changed: poll.
    explained = _wait(
        "kubectl explain to know the field",
        lambda: cluster.kubectl("explain", f"inferencedeployment.spec.{NEW_FIELD}").stdout,
    )
    assert NEW_FIELD in explained
    # What was made before the upgrade is still there.
    assert cluster.kubectl_json("get", "infd", "made-before", "-n", "life-old")["spec"]


def test_crds_carry_the_keep_policy(upgraded: Upgrade) -> None:
    for kind in KINDS:
        crd = upgraded.cluster.kubectl_json("get", "crd", f"{kind}.peakwise.dev")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "peakwise-crds"


# --- uninstall --------------------------------------------------------------------------------


class Operator:
    """`peakwise operator run` as the release's ServiceAccount, as in the RBAC tests."""

    def __init__(self, cluster: LocalCluster, release: str, namespace: str, log: Path) -> None:
        self.cluster, self.release, self.namespace, self.log = cluster, release, namespace, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        sa = f"{self.release}-peakwise"
        kubeconfig = self.cluster.service_account_kubeconfig(self.namespace, sa)
        command = [sys.executable, "-m", "peakwise", "operator", "run", "--interval=3s"]
        command += ["--prometheus-url", self.cluster.prometheus_url, "--fit-in", "thread"]
        command += ["--metrics-port", str(free_port()), "--liveness-port", str(free_port())]
        command += ["--listen-address", "127.0.0.1"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                env={**os.environ, "KUBECONFIG": kubeconfig},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def _install(cluster: LocalCluster, release: str, namespace: str) -> None:
    cluster.helm(
        *("install", release, str(CHART), "--namespace", namespace, "--create-namespace"),
        *("--skip-crds", "--set", "providers.kwok.enabled=true", "--set", "userRoles.create=false"),
    )
    # No kubelet here: the operator runs as a local process instead of the Deployment's pod.
    cluster.kubectl("scale", "deployment", f"{release}-peakwise", "-n", namespace, "--replicas=0")


def _finalized(cluster: LocalCluster, kind: str, name: str, namespace: str = "") -> bool:
    scope = ("-n", namespace) if namespace else ()
    found = cluster.kubectl_json("get", kind, name, *scope)
    return FINALIZER in (found["metadata"].get("finalizers") or [])


def _terminating_namespaces(cluster: LocalCluster) -> list[str]:
    items = cluster.kubectl_json("get", "namespaces")["items"]
    return [n["metadata"]["name"] for n in items if n["status"].get("phase") == "Terminating"]


def _objects_gone(cluster: LocalCluster, namespace: str, pool: str) -> bool:
    try:
        cluster.kubectl_json("get", "namespace", namespace)
        return False
    except ClusterError:
        pass
    return cluster.kubectl("get", "gpunodepool", pool, check=False).returncode != 0


def test_uninstall_in_the_documented_order_leaves_nothing_stuck(
    upgraded: Upgrade, tmp_path: Path
) -> None:
    cluster = upgraded.cluster
    release, release_ns, team, pool = "pwdoc", "peakwise-doc", "life-doc", "life-doc-pool"
    _install(cluster, release, release_ns)
    operator = Operator(cluster, release, release_ns, tmp_path / "operator.log")
    cluster.kubectl("create", "namespace", team)
    _apply(cluster, _pool(pool), _budget(team), _deployment("served", team))
    operator.start()
    try:
        _wait("the operator's finalizers", lambda: _finalized(cluster, "infd", "served", team))
        _wait("... on the budget", lambda: _finalized(cluster, "costbudget", "life-budget", team))
        _wait("... on the pool", lambda: _finalized(cluster, "gpunodepool", pool))
        # 1. While the operator runs: the objects (here with their namespace).
        cluster.kubectl("delete", "namespace", team, "--wait=false")
        cluster.kubectl("delete", "gpunodepool", pool, "--wait=false")
        _wait("the namespace and the pool gone", lambda: _objects_gone(cluster, team, pool))
    finally:
        operator.stop()
    # 2. The operator's release; 3. the CRDs' release (the CRDs stay: keep policy).
    cluster.helm("uninstall", release, "--namespace", release_ns, "--wait")
    cluster.kubectl("delete", "namespace", release_ns, "--timeout=90s", timeout=120)
    assert _terminating_namespaces(cluster) == []
    assert (
        cluster.kubectl(
            "get", "deployment", "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
        ).stdout.strip()
        == ""
    )
    log = operator.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_finalizers_left_by_an_uninstalled_operator_are_released_by_the_documented_command(
    upgraded: Upgrade, tmp_path: Path
) -> None:
    cluster = upgraded.cluster
    release, release_ns, team = "pwgone", "peakwise-gone", "life-gone"
    _install(cluster, release, release_ns)
    operator = Operator(cluster, release, release_ns, tmp_path / "operator.log")
    cluster.kubectl("create", "namespace", team)
    _apply(cluster, _budget(team), _deployment("orphaned", team))
    operator.start()
    try:
        _wait("the operator's finalizer", lambda: _finalized(cluster, "infd", "orphaned", team))
    finally:
        operator.stop()
    # The wrong order: the operator first, its objects after.
    cluster.helm("uninstall", release, "--namespace", release_ns, "--wait")
    cluster.kubectl("delete", "namespace", team, "--wait=false")
    _wait("the namespace stuck on the finalizer", lambda: team in _terminating_namespaces(cluster))
    assert _finalized(cluster, "infd", "orphaned", team)
    # The chart README's "Uninstalling", as written: what releases them.
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _readme_command()],
        env=cluster.tool_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    _wait("the namespace gone", lambda: team not in _namespaces(cluster))
    cluster.kubectl("delete", "namespace", release_ns, "--timeout=90s", timeout=120)


def _namespaces(cluster: LocalCluster) -> list[str]:
    return [n["metadata"]["name"] for n in cluster.kubectl_json("get", "namespaces")["items"]]


def _readme_command() -> str:
    """The shell block after the marker in the chart README: the docs' command, as written."""
    text = (CHART / "README.md").read_text()
    after = text.split("<!-- release-finalizers -->", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "kubectl" in block
    return block

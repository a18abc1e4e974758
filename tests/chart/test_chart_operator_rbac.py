"""The chart's RBAC is enough: the operator, authenticated as the chart's ServiceAccount, runs a
full reconcile round.

`helm install` (kwok provider on, two watched namespaces) into the local cluster; the operator
Deployment's own pod never runs (its image does not exist here), so it is scaled to 0 and
`peakwise operator run` runs as a local process with a kubeconfig holding a bound token of
that ServiceAccount, with the arguments the chart's Deployment passes. The objects: a kwok
GPUNodePool, an Enforce and a Recommend InferenceDeployment whose demand query reads a
backfilled synthetic trace, and a CostBudget. The round must write status on all three kinds,
create the child Deployment and the pool's kwok nodes, and log no 403/Forbidden.

`test_chart_install.py`'s `kubectl auth can-i` checks prove the RBAC grants no more than this.
Names (namespaces `rbac-a`/`rbac-b`, pool `rbac-pool`, GPU type `rbac-gpu`, trace label
`service=rbac-chat`) do not collide with the other end-to-end tests sharing the cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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

from chart.chartlib import CHART

pytestmark = pytest.mark.e2e

RELEASE = "pwrbac"
RELEASE_NS = "peakwise-rbac"
SA_NAME = f"{RELEASE}-peakwise"
NS_A = "rbac-a"
NS_B = "rbac-b"
POOL = "rbac-pool"
GPU = "rbac-gpu"
SYNTH = [sys.executable, "-m", "peakwise", "synth-trace", "--days", "3", "--peak", "1200"]
QUERY = 'peakwise_trace_requests_per_minute{service="rbac-chat"} / 60'


# The operator here starts cold under a restricted ServiceAccount: allow two minutes.
_wait = partial(wait_for, timeout=120.0, every=1.0)


def _apply(cluster: LocalCluster, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _pool() -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "GPUNodePool",
        "metadata": {"name": POOL},
        "spec": {
            "gpuType": GPU,
            "gpusPerNode": 4,
            "capacityType": "onDemand",
            "pricePerNodeHour": 20.0,
            "maxNodes": 4,
            "provisioningTime": "1m",
            "nodeLabels": {"peakwise.dev/capacity-type": "on-demand"},
            "provider": {"kwok": {"nodeNamePrefix": "rbac-node"}},
        },
    }


def _deployment(name: str, namespace: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "mode": mode,
            "template": {"spec": {"containers": [{"name": "server", "image": "rbac/server:1"}]}},
            "gpuProfiles": [{"gpuType": GPU, "gpusPerReplica": 1, "throughputPerReplica": 5}],
            "demand": {"query": QUERY, "targetUtilization": 1.0},
            "replicas": {"min": 1, "max": 12},
            "forecast": {"history": "2d", "leadTime": "2m"},
            "capacity": {"spot": {"maxFraction": 0}},
        },
    }


def _budget(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "CostBudget",
        "metadata": {"name": "rbac-budget", "namespace": namespace},
        "spec": {"limits": {"hourly": 500}, "enforcement": "Hard"},
    }


@dataclass
class Reconciled:
    cluster: LocalCluster
    log: Path


def _operator_command(cluster: LocalCluster, deployment: dict[str, Any]) -> list[str]:
    """The chart's container args, with the ports and the Prometheus URL of this machine."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith(("--metrics-port", "--liveness-port"))]
    assert args[:2] == ["operator", "run"], args
    args = [a if not a.startswith("--interval=") else "--interval=3s" for a in args]
    return [
        sys.executable,
        "-m",
        "peakwise",
        *args,
        "--prometheus-url",
        cluster.prometheus_url,
        "--metrics-port",
        str(free_port()),
        "--liveness-port",
        str(free_port()),
        "--listen-address",
        "127.0.0.1",
    ]


def _delete_objects(cluster: LocalCluster) -> None:
    """Delete what the test made while the operator runs (it removes its finalizers)."""
    for namespace in (NS_A, NS_B):
        cluster.kubectl(
            *("delete", "inferencedeployments,costbudgets", "--all", "-n", namespace),
            *("--ignore-not-found", "--timeout=60s"),
            check=False,
            timeout=90,
        )
    cluster.kubectl(
        "delete",
        "gpunodepool",
        POOL,
        "--ignore-not-found",
        "--timeout=60s",
        check=False,
        timeout=90,
    )


def _drop_finalizers(cluster: LocalCluster) -> None:
    """What a failed run left behind with the operator's finalizer (the operator is gone)."""
    targets = [
        (kind, ns) for kind in ("inferencedeployments", "costbudgets") for ns in (NS_A, NS_B)
    ]
    for kind, namespace in [*targets, ("gpunodepools", "")]:
        scope = ("-n", namespace) if namespace else ()
        listed = cluster.kubectl("get", kind, *scope, "-o", "name", check=False).stdout.split()
        for name in listed:
            if kind == "gpunodepools" and name.rpartition("/")[2] != POOL:
                continue
            cluster.kubectl(
                *("patch", name, *scope, "--type=merge"),
                *("-p", '{"metadata":{"finalizers":null}}'),
                check=False,
            )


@pytest.fixture(scope="module")
def reconciled(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reconciled]:
    work = tmp_path_factory.mktemp("chart-rbac")
    trace = work / "rbac-chat.csv"
    subprocess.run(
        [*SYNTH, "--out", str(trace)],
        check=True,
        capture_output=True,
    )
    cluster.backfill_trace(trace, "service=rbac-chat")
    for namespace in (NS_A, NS_B):
        cluster.kubectl("create", "namespace", namespace)
    proc: subprocess.Popen[bytes] | None = None
    log = work / "operator.log"
    try:
        cluster.helm(
            *("install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace"),
            *("--set", f"watchNamespaces={{{NS_A},{NS_B}}}"),
            *("--set", "providers.kwok.enabled=true", "--set", "userRoles.create=false"),
        )
        # The image does not exist here: the operator runs as a local process instead.
        cluster.kubectl("scale", "deployment", SA_NAME, "-n", RELEASE_NS, "--replicas=0")
        chart_deployment = cluster.kubectl_json("get", "deployment", SA_NAME, "-n", RELEASE_NS)
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        _apply(
            cluster,
            _pool(),
            _budget(NS_A),
            _deployment("rbac-enforce", NS_A, "Enforce"),
            _deployment("rbac-recommend", NS_B, "Recommend"),
        )
        kubeconfig = cluster.service_account_kubeconfig(RELEASE_NS, SA_NAME, work / "sa.kubeconfig")
        env = {**os.environ, "KUBECONFIG": kubeconfig}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                _operator_command(cluster, chart_deployment),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        yield Reconciled(cluster, log)
    finally:
        # Objects first, while the operator still runs and removes its finalizers.
        _delete_objects(cluster)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        _drop_finalizers(cluster)
        cluster.kubectl("delete", "gpunodepool", POOL, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "nodes", "-l", f"peakwise.dev/pool={POOL}", check=False)
        cluster.helm("uninstall", RELEASE, "--namespace", RELEASE_NS, check=False)
        cluster.kubectl(
            *("delete", "namespace", NS_A, NS_B, RELEASE_NS, "--ignore-not-found"),
            "--timeout=120s",
            check=False,
            timeout=150,
        )
        leftovers = cluster.kubectl(
            "get",
            "nodes,gpunodepools",
            "-l",
            f"peakwise.dev/pool={POOL}",
            "-o",
            "name",
            check=False,
        ).stdout
        print(f"left behind: {leftovers.split() or 'nothing'}")
        if log.exists():
            lines = [x for x in log.read_text().splitlines() if '"DEBUG"' not in x]
            print(f"operator log: {log}; its last lines:")
            print("\n".join(line[:400] for line in lines[-30:]))


def _status(cluster: LocalCluster, kind: str, name: str, *ns: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", kind, name, *(("-n", ns[0]) if ns else ()))
    return dict(obj.get("status") or {})


def test_runs_as_the_chart_service_account(reconciled: Reconciled) -> None:
    kubeconfig = yaml.safe_load(
        (reconciled.log.parent / "sa.kubeconfig").read_text()  # JSON is YAML
    )
    assert "token" in kubeconfig["users"][0]["user"]
    who = reconciled.cluster.kubectl(
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
        "--kubeconfig",
        str(reconciled.log.parent / "sa.kubeconfig"),
    ).stdout
    assert who == f"system:serviceaccount:{RELEASE_NS}:{SA_NAME}"


def test_enforce_deployment_is_planned_and_its_child_created(reconciled: Reconciled) -> None:
    cluster = reconciled.cluster
    status = _wait(
        "a plan in the Enforce status",
        lambda: (s := _status(cluster, "infd", "rbac-enforce", NS_A)).get("desiredReplicas") and s,
    )
    assert status["forecast"]["peak"] > 0
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Forecasting"] == "True"
    assert status["cost"]["hourly"] > 0
    children = _wait(
        "the child Deployment",
        lambda: cluster.kubectl_json(
            "get",
            "deployments",
            "-n",
            NS_A,
            "-l",
            "peakwise.dev/inference-deployment=rbac-enforce",
        )["items"],
    )
    assert [c["metadata"]["ownerReferences"][0]["name"] for c in children] == ["rbac-enforce"]
    assert sum(c["spec"]["replicas"] for c in children) == status["desiredReplicas"]


def test_recommend_deployment_gets_status_and_no_child(reconciled: Reconciled) -> None:
    cluster = reconciled.cluster
    status = _wait(
        "a recommendation",
        lambda: (
            (s := _status(cluster, "infd", "rbac-recommend", NS_B)).get("desiredReplicas") and s
        ),
    )
    assert status["forecast"]["peak"] > 0
    children = cluster.kubectl_json("get", "deployments", "-n", NS_B)["items"]
    assert children == []


def test_pool_status_and_kwok_nodes(reconciled: Reconciled) -> None:
    cluster = reconciled.cluster

    def nodes() -> list[dict[str, Any]]:
        items = cluster.kubectl_json("get", "nodes", "-l", f"peakwise.dev/pool={POOL}")["items"]
        return list(items)

    created = _wait("kwok nodes of the pool", nodes)
    assert all(n["metadata"]["name"].startswith("rbac-node") for n in created)
    status = _wait(
        "the pool's status",
        lambda: (s := _status(cluster, "gpunodepool", POOL)).get("desiredNodes") and s,
    )
    assert status["desiredNodes"] >= 1
    _wait("the pool's nodes Ready", lambda: _status(cluster, "gpunodepool", POOL).get("readyNodes"))


def test_budget_status(reconciled: Reconciled) -> None:
    cluster = reconciled.cluster
    status = _wait(
        "the budget's status",
        lambda: (s := _status(cluster, "costbudget", "rbac-budget", NS_A)).get("conditions") and s,
    )
    assert status["hourlySpend"] > 0
    assert status["hourlyHeadroom"] < 500


def test_events_recorded(reconciled: Reconciled) -> None:
    cluster = reconciled.cluster
    _wait("the Enforce status", lambda: _status(cluster, "infd", "rbac-enforce", NS_A))
    events = _wait(
        "events about the InferenceDeployment",
        lambda: cluster.kubectl_json(
            "get",
            "events",
            "-n",
            NS_A,
            "--field-selector",
            "involvedObject.name=rbac-enforce",
        )["items"],
    )
    assert {e["involvedObject"]["kind"] for e in events} == {"InferenceDeployment"}


def test_no_forbidden_in_the_operator_log(reconciled: Reconciled) -> None:
    # Several rounds, so every code path of a round (including re-plans) has run.
    cluster = reconciled.cluster
    _wait("a plan", lambda: _status(cluster, "infd", "rbac-enforce", NS_A).get("lastPlanTime"))
    time.sleep(10)
    text = reconciled.log.read_text()
    bad = [line for line in text.splitlines() if "403" in line or "forbidden" in line.lower()]
    assert not bad, "\n".join(bad[:20])
    assert "Traceback" not in text, text[-4000:]

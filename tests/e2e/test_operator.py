"""The operator end to end: a real API server, kwok GPU nodes, Prometheus with history.

One operator process (`peakwise operator run`) runs for the module, as it would in a cluster,
against the CRDs of crds/ and objects applied with kubectl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.clusterfix import LocalCluster
from e2e.promstack import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-op"
INTERVAL = "3s"
QUERY = 'peakwise_trace_requests_per_minute{service="e2e-chat"} / 60'


def _wait(what: str, check: Callable[[], Any], timeout: float = 90.0, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:
            last = error
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _apply(cluster: LocalCluster, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _pool(name: str, capacity_type: str, price: float, taint: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "gpuType": "e2e-gpu",
        "gpusPerNode": 4,
        "capacityType": capacity_type,
        "pricePerNodeHour": price,
        "maxNodes": 6,
        "provisioningTime": "1m",
        "nodeLabels": {"peakwise.dev/capacity-type": capacity_type},
        "provider": {"kwok": {}},
    }
    if taint:
        spec["nodeTaints"] = [{"key": "peakwise.dev/capacity-type", "value": "spot"}]
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "GPUNodePool",
        "metadata": {"name": name},
        "spec": spec,
    }


def _deployment(name: str, mode: str, query: str = QUERY, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "mode": mode,
        "template": {"spec": {"containers": [{"name": "server", "image": "e2e/server:1"}]}},
        "gpuProfiles": [{"gpuType": "e2e-gpu", "gpusPerReplica": 1, "throughputPerReplica": 4}],
        "demand": {"query": query, "targetUtilization": 1.0},
        "replicas": {"min": 1, "max": 16},
        "forecast": {"history": "2d", "leadTime": "2m"},
        "capacity": {"spot": {"maxFraction": 0.5}},
    }
    spec.update(extra)
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def _daily_spike_trace(path: Path) -> Path:
    """Five days at 120 requests/minute with a daily 30-minute spike to 1,200 at 00:14."""
    lines = ["timestamp,requests,input_tokens,output_tokens"]
    start = time.mktime((2000, 1, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
    for minute in range(5 * 1440):
        value = 1200 if 14 <= minute % 1440 < 44 else 120
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + minute * 60))
        lines.append(f"{stamp},{value},,")
    path.write_text("\n".join(lines) + "\n")
    return path


class OperatorProcess:
    def __init__(self, cluster: LocalCluster, log: Path) -> None:
        self.cluster = cluster
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.spike_at = 0.0
        """Epoch seconds when the next daily spike of the e2e-spike series starts."""

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": self.cluster.kubeconfig}
        out = self.log.open("ab")
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peakwise",
                "operator",
                "run",
                "--interval",
                INTERVAL,
                "--prometheus-url",
                self.cluster.prometheus_url,
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                "--listen-address",
                "127.0.0.1",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator")
    trace = work / "e2e-chat.csv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "peakwise",
            "synth-trace",
            "--days",
            "3",
            "--peak",
            "1200",
            "--out",
            str(trace),
        ],
        check=True,
        capture_output=True,
    )
    cluster.backfill_trace(trace, "service=e2e-chat")
    spike = cluster.backfill_trace(_daily_spike_trace(work / "e2e-spike.csv"), "service=e2e-spike")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("create", "namespace", NS, check=False)
    _apply(cluster, _pool("e2e-od", "onDemand", 40.0), _pool("e2e-spot", "spot", 12.0, taint=True))
    process = OperatorProcess(cluster, work / "operator.log")
    # The spike trace ends at 23:59 of its last day; the next spike starts 15 minutes later.
    process.spike_at = spike.end + 15 * 60
    process.start()
    try:
        yield process
    finally:
        process.stop()
        lines = [x for x in process.log.read_text().splitlines() if '"DEBUG"' not in x]
        print(f"operator log: {process.log}; its last lines:")
        print("\n".join(line[:400] for line in lines[-40:]))


def _status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    obj = cluster.kubectl_json("get", "inferencedeployment", name, "-n", NS)
    return dict(obj.get("status") or {})


def _children(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json(
        "get", "deployments", "-n", NS, "-l", f"peakwise.dev/inference-deployment={name}"
    )["items"]
    return list(items)


def test_enforce_creates_children_and_pods_run_on_pool_nodes(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    _apply(cluster, _deployment("chat", "Enforce"))
    status = _wait(
        "a plan in status", lambda: (s := _status(cluster, "chat")).get("desiredReplicas") and s
    )
    assert status["forecast"]["peak"] > 0
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Forecasting"]["status"] == "True"
    want = status["desiredReplicas"]

    def running() -> bool:
        pods = cluster.kubectl_json(
            "get", "pods", "-n", NS, "-l", "peakwise.dev/inference-deployment=chat"
        )["items"]
        ok = [p for p in pods if p["status"].get("phase") == "Running"]
        return len(ok) == want and ok

    pods = _wait("the planned pods Running", running, timeout=120)
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        pool = pod["metadata"]["labels"]["peakwise.dev/pool"]
        assert node["metadata"]["labels"]["peakwise.dev/pool"] == pool
    children = _children(cluster, "chat")
    assert sum(c["spec"]["replicas"] for c in children) == want
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"
    _wait(
        "Ready in status",
        lambda: (
            {c["type"]: c["status"] for c in _status(cluster, "chat")["conditions"]}["Ready"]
            == "True"
        ),
    )


def test_recommend_mode_changes_nothing_but_status(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    _apply(cluster, _deployment("advisor", "Recommend"))
    status = _wait(
        "a recommendation", lambda: (s := _status(cluster, "advisor")).get("desiredReplicas") and s
    )
    assert status["pools"] and all(p["replicas"] == 0 for p in status["pools"])
    time.sleep(8)  # a few rounds
    assert _children(cluster, "advisor") == []


def test_missing_metric_holds_the_minimum_and_says_why(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    _apply(
        cluster,
        _deployment(
            "blind", "Enforce", query='absent_metric_for_e2e{x="y"}', replicas={"min": 2, "max": 8}
        ),
    )

    def degraded() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in _status(cluster, "blind").get("conditions", [])}
        return conditions if conditions.get("Degraded", {}).get("status") == "True" else None

    conditions = _wait("Degraded with a reason", degraded)
    assert conditions["Forecasting"]["status"] == "False"
    assert "no data" in conditions["Forecasting"]["message"]
    _wait(
        "the minimum kept running",
        lambda: sum(c["spec"]["replicas"] for c in _children(cluster, "blind")) == 2,
    )


def test_restart_keeps_children_and_plan(cluster: LocalCluster, operator: OperatorProcess) -> None:
    _wait("chat planned", lambda: _children(cluster, "chat"))
    before = {c["metadata"]["name"]: c["spec"]["replicas"] for c in _children(cluster, "chat")}
    operator.kill()
    operator.start()
    time.sleep(10)
    after = {c["metadata"]["name"]: c["spec"]["replicas"] for c in _children(cluster, "chat")}
    assert set(after) == set(before)  # no duplicates, none lost
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)


def _budget(namespace: str, hourly: float) -> dict[str, Any]:
    return {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "CostBudget",
        "metadata": {"name": "cap", "namespace": namespace},
        "spec": {"limits": {"hourly": hourly}, "enforcement": "Hard"},
    }


def test_hard_budget_lower_priority_gives_way(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-budget"
    cluster.kubectl("create", "namespace", ns, check=False)
    # Both want the same constant demand on on-demand capacity ($10 a replica-hour);
    # the cap fits the important one and part of the other.
    constant = {"query": "vector(16)", "targetUtilization": 1.0}
    docs = []
    for name, priority in (("vip", 500), ("batch", 10)):
        doc = _deployment(name, "Enforce", priority=priority, capacity={"spot": {"maxFraction": 0}})
        doc["metadata"]["namespace"] = ns
        doc["spec"]["demand"] = constant
        docs.append(doc)
    _apply(cluster, _budget(ns, 60.0), *docs)

    def statuses() -> dict[str, dict[str, Any]] | None:
        out = {}
        for name in ("vip", "batch"):
            obj = cluster.kubectl_json("get", "inferencedeployment", name, "-n", ns)
            status = obj.get("status") or {}
            if not status.get("desiredReplicas"):
                return None
            out[name] = status
        return out

    found = _wait("both planned", statuses)
    vip, batch = found["vip"], found["batch"]
    limited = {
        n: {c["type"]: c for c in s["conditions"]}["BudgetLimited"] for n, s in found.items()
    }
    assert limited["batch"]["status"] == "True" and "Hard budget" in limited["batch"]["message"]
    assert limited["vip"]["status"] == "False"
    assert batch["desiredReplicas"] < vip["desiredReplicas"]
    assert vip["cost"]["hourly"] + batch["cost"]["hourly"] <= 60.0 + 1e-6
    assert batch["budgetState"] == "Limited"

    def budget_status() -> dict[str, Any] | None:
        status = cluster.kubectl_json("get", "costbudget", "cap", "-n", ns).get("status") or {}
        return status if "batch" in status.get("limitedDeployments", []) else None

    status = _wait("the budget to name the limited deployment", budget_status)
    assert status["hourlySpend"] <= 60.0 + 1e-6


def test_lost_spot_node_is_replaced_on_demand(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    # All on spot while spot is calm: one node's worth of replicas.
    doc = _deployment("spotty", "Enforce", capacity={"spot": {"maxFraction": 1.0}})
    doc["spec"]["demand"] = {"query": "vector(12)", "targetUtilization": 1.0}
    _apply(cluster, doc)

    def on_spot() -> list[dict[str, Any]]:
        pods = cluster.kubectl_json(
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "peakwise.dev/inference-deployment=spotty,peakwise.dev/pool=e2e-spot",
        )
        return [p for p in pods["items"] if p["status"].get("phase") == "Running"]

    running = _wait("spotty running on spot", on_spot, timeout=120)
    total = sum(c["spec"]["replicas"] for c in _children(cluster, "spotty"))
    for node in {p["spec"]["nodeName"] for p in running}:
        cluster.kubectl("delete", "node", node, "--wait=false")

    def replaced() -> dict[str, int] | None:
        now = {
            c["metadata"]["labels"]["peakwise.dev/pool"]: c["spec"]["replicas"]
            for c in _children(cluster, "spotty")
        }
        return now if now.get("e2e-od", 0) >= total else None

    # Spot cannot bring nodes back within its provisioning time: on-demand takes the replicas
    # within one timer interval (3 s) plus the watch and the apply.
    _wait("lost spot replicas moved to on-demand", replaced, timeout=20)

    def serving() -> bool:
        pods = cluster.kubectl_json(
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "peakwise.dev/inference-deployment=spotty,peakwise.dev/pool=e2e-od",
        )
        return sum(p["status"].get("phase") == "Running" for p in pods["items"]) >= total

    _wait("the replacements Running on on-demand nodes", serving, timeout=60)

    def counted() -> int:
        status = cluster.kubectl_json("get", "gpunodepool", "e2e-spot").get("status") or {}
        return int(status.get("interruptionsObserved", 0))

    _wait("the interruption counted in the pool's status", counted, timeout=30)


def test_scales_up_ahead_of_a_daily_peak(cluster: LocalCluster, operator: OperatorProcess) -> None:
    doc = _deployment(
        "ahead",
        "Enforce",
        query='peakwise_trace_requests_per_minute{service="e2e-spike"} / 60',
        capacity={"spot": {"maxFraction": 0}},
        forecast={"history": "5d", "leadTime": "2m", "quantile": 0.9},
    )
    _apply(cluster, doc)
    status = _wait(
        "a plan for ahead",
        lambda: (s := _status(cluster, "ahead")).get("desiredReplicas") and s,
        timeout=120,
    )
    seen_at = time.time()
    # Demand now is 2 requests/s (one replica of 4/s); the spike of 20/s is still ahead.
    assert seen_at < operator.spike_at - 2 * 60, (
        "the spike should still be more than a lead time away"
    )
    assert status["forecast"]["peak"] >= 15.0
    assert status["desiredReplicas"] >= 5
    _wait(
        "the replicas ready before the spike",
        lambda: sum(c["spec"]["replicas"] for c in _children(cluster, "ahead")) >= 5,
        timeout=30,
    )
    assert time.time() < operator.spike_at - 2 * 60


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_metrics_and_liveness_are_served(cluster: LocalCluster, operator: OperatorProcess) -> None:
    def metrics() -> str | None:
        text = _get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
        return text if 'peakwise_demand_forecast{name="chat",namespace="e2e-op"}' in text else None

    text = _wait("metrics with a forecast", metrics)
    for name in (
        "peakwise_desired_replicas",
        "peakwise_cost_hourly",
        "peakwise_budget_limit_hourly",
        "peakwise_planning_round_seconds_count",
    ):
        assert name in text
    assert _get(f"http://127.0.0.1:{operator.liveness_port}/healthz")


def test_restart_loses_no_spend(cluster: LocalCluster, operator: OperatorProcess) -> None:
    def spend() -> dict[str, Any] | None:
        status = cluster.kubectl_json("get", "costbudget", "cap", "-n", "e2e-budget").get("status")
        return status if status and status.get("spend", 0) > 0 else None

    before = _wait("spend accrued", spend)
    operator.kill()
    operator.start()

    def accrued_again() -> dict[str, Any] | None:
        status = spend()
        return status if status and status["lastAccrualTime"] > before["lastAccrualTime"] else None

    after = _wait("spend accrued after the restart", accrued_again, timeout=60)
    assert after["spend"] >= before["spend"]
    assert after["periodStart"] == before["periodStart"]

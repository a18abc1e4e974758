"""The operator end to end: a real API server, kwok GPU nodes, Prometheus with history.

One operator process (`peakwise operator run`) runs for the module, as it would in a cluster:
authenticated as the Helm chart's ServiceAccount, with exactly the RBAC the chart renders for
the watched namespaces (so a permission the chart lacks fails here, and a permission taken
away shows what the operator does with a 403), against the CRDs of crds/ and objects applied
with kubectl.

The peak test's timeline runs from the fixture on, beside the other tests: the first restart
happens while its replicas are up (status keeps what the stabilisation window needs), the
second once the peak is over.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml
from kubernetes import client, config

from e2e.clusterfix import LocalCluster
from e2e.operatorproc import OperatorProcess, chart_rbac, get
from e2e.polling import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-op"
BUDGET_NS = "e2e-budget"
DENY_NS = "e2e-deny"
RELEASE, RELEASE_NS = "e2e-op", "e2e-op-system"
SERVICE_ACCOUNT = f"{RELEASE}-peakwise"
INTERVAL_S = 3.0
QUERY = 'peakwise_trace_requests_per_minute{service="e2e-chat"} / 60'
PEAK_QUERY = 'peakwise_trace_requests_per_minute{service="e2e-peak"} / 60'


def _apply(cluster: LocalCluster, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def _pool(
    name: str, capacity_type: str, price: float, taint: bool = False, gpu: str = "e2e-gpu"
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if taint:
        extra["nodeTaints"] = [{"key": "peakwise.dev/capacity-type", "value": "spot"}]
    return manifests.pool(
        name,
        capacity_type,
        gpu=gpu,
        price=price,
        max_nodes=6,
        provisioningTime="1m",
        nodeLabels={"peakwise.dev/capacity-type": capacity_type},
        **extra,
    )


def _deployment(
    name: str, mode: str, query: str = QUERY, gpu: str = "e2e-gpu", **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "demand": {"query": query, "targetUtilization": 1.0},
        "replicas": {"min": 1, "max": 16},
        "forecast": {"history": "2d", "leadTime": "2m"},
        "capacity": {"spot": {"maxFraction": 0.5}},
        **extra,
    }
    return manifests.deployment(name, NS, mode=mode, gpu=gpu, image="e2e/server:1", **spec)


# --- The chart's RBAC, rendered by helm for the namespaces this module uses ----------------


def _chart_rbac(cluster: LocalCluster) -> list[dict[str, Any]]:
    return chart_rbac(cluster, RELEASE, RELEASE_NS, (NS, BUDGET_NS, DENY_NS))


def _rbac_object(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _without_rule(role: dict[str, Any], resource: str) -> dict[str, Any]:
    """`role` with every rule that names `resource` removed (a permission taken away)."""
    reduced = copy.deepcopy(role)
    reduced["rules"] = [r for r in role["rules"] if resource not in r.get("resources", [])]
    assert len(reduced["rules"]) < len(role["rules"]), f"{resource} not in {role['metadata']}"
    return reduced


# --- The e2e-peak series: a short daily peak a few minutes after the module starts ---------

PEAK_LEAD_S = 60.0
PEAK_WINDOW_S = 60.0
PEAK_MINUTES = 1
PEAK_REPLICAS = 5  # 20 requests/s at 4/s a replica
BASE_REPLICAS = 2  # 2 requests/s, with the forecast's margin: one replica, at most two


@dataclass
class PeakTimeline:
    """The `peak` deployment's children as they were, sampled from the API server each second
    from the fixture on: (epoch seconds, sum of spec.replicas)."""

    start: float
    """When today's peak starts (epoch seconds, on a minute)."""
    end: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def first(self, after: float, test: Any) -> float | None:
        return next((t for t, n in list(self.samples) if t >= after and test(n)), None)


def _push_peak_history(cluster: LocalCluster, now: float) -> PeakTimeline:
    """Three days of 2 requests/s with a daily one-minute peak of 20/s, pushed by remote write
    up to the last whole minute. The peak's time of day is chosen so that today's comes 90 to
    150 s from now: the operator (planning 5 to 10 s after it starts) has at least 20 s to
    spare before it must ask for the capacity, one lead time ahead."""
    minute = int(now // 60) * 60
    start = (int(now) + 90 + 59) // 60 * 60
    samples = []
    for t in range(start - 3 * 86400, minute, 60):
        in_peak = (t - start) % 86400 < PEAK_MINUTES * 60
        samples.append((float(t), 1200.0 if in_peak else 120.0))
    labels = {"__name__": "peakwise_trace_requests_per_minute", "service": "e2e-peak"}
    cluster.prometheus.push([(labels, samples)])
    return PeakTimeline(start=float(start), end=float(start + PEAK_MINUTES * 60))


def _sample_peak(kubeconfig: str, timeline: PeakTimeline) -> None:
    apps = client.AppsV1Api(config.new_client_from_config(config_file=kubeconfig))
    selector = "peakwise.dev/inference-deployment=peak"
    while not timeline.stop.wait(1.0):
        try:
            items = apps.list_namespaced_deployment(NS, label_selector=selector).items
        except Exception:  # a slow or failed list is only a missing sample
            continue
        timeline.samples.append((time.time(), sum(d.spec.replicas or 0 for d in items)))


class ModuleOperator(OperatorProcess):
    """The module's operator, with the `peak` deployment's timeline beside it."""

    peak: PeakTimeline | None = None


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleOperator]:
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
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for namespace in (NS, BUDGET_NS, DENY_NS, RELEASE_NS):
        cluster.kubectl("create", "namespace", namespace, check=False)
    rbac = _chart_rbac(cluster)
    _apply(cluster, *rbac)
    kubeconfig = cluster.service_account_kubeconfig(
        RELEASE_NS, SERVICE_ACCOUNT, work / "sa.kubeconfig"
    )
    _apply(
        cluster,
        _pool("e2e-od", "onDemand", 40.0),
        _pool("e2e-spot", "spot", 12.0, taint=True),
        _pool("e2e-roll-od", "onDemand", 40.0, gpu="e2e-roll-gpu"),
        _pool("e2e-roll-spot", "spot", 12.0, taint=True, gpu="e2e-roll-gpu"),
        # Namespaces without a CostBudget are planned, not scaled (fail closed): these two
        # get a generous Soft one.
        manifests.budget(NS, "team", hourly=10_000, enforcement="Soft"),
        manifests.budget(DENY_NS, "team", hourly=10_000, enforcement="Soft"),
    )
    process = ModuleOperator(
        cluster, work / "operator.log", kubeconfig, (NS, BUDGET_NS, DENY_NS), INTERVAL_S
    )
    process.rbac = rbac
    # The peak deployment exists from the start: its timeline runs beside the other tests.
    process.peak = _push_peak_history(cluster, time.time())
    _apply(
        cluster,
        _deployment(
            "peak",
            "Enforce",
            query=PEAK_QUERY,
            capacity={"spot": {"maxFraction": 0}},
            forecast={"history": "3d", "leadTime": "1m", "quantile": 0.9},
            scaleDown={"stabilizationWindow": "1m"},
        ),
    )
    sampler = threading.Thread(
        target=_sample_peak, args=(cluster.kubeconfig, process.peak), daemon=True
    )
    sampler.start()
    process.start()
    try:
        yield process
    finally:
        process.peak.stop.set()
        process.stop()
        sampler.join(timeout=10)
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
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    _apply(cluster, _deployment("chat", "Enforce"))
    status = wait_for(
        "a plan in status", lambda: (s := _status(cluster, "chat")).get("desiredReplicas") and s
    )
    assert status["forecast"]["peak"] > 0
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Forecasting"]["status"] == "True"
    # The calibration's margins as the API server kept them (it drops what the CRD lacks):
    # one quantile per quarter of the UTC day when the margin says "by time of day".
    slo = status["slo"]
    by_time = slo["quantilesByTimeOfDay"]
    if "by time of day" in slo["margin"]:
        assert [q["start"] for q in by_time] == ["00:00", "06:00", "12:00", "18:00"]
        assert all(0 < q["quantile"] < 1 for q in by_time)
    else:
        assert by_time == []
    want = status["desiredReplicas"]

    def running() -> bool:
        pods = cluster.kubectl_json(
            "get", "pods", "-n", NS, "-l", "peakwise.dev/inference-deployment=chat"
        )["items"]
        ok = [p for p in pods if p["status"].get("phase") == "Running"]
        return len(ok) == want and ok

    pods = wait_for("the planned pods Running", running, timeout=120)
    nodes = {n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        pool = pod["metadata"]["labels"]["peakwise.dev/pool"]
        assert node["metadata"]["labels"]["peakwise.dev/pool"] == pool
    children = _children(cluster, "chat")
    assert sum(c["spec"]["replicas"] for c in children) == want
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"
    wait_for(
        "Ready in status",
        lambda: (
            {c["type"]: c["status"] for c in _status(cluster, "chat")["conditions"]}["Ready"]
            == "True"
        ),
    )


def test_recommend_mode_changes_nothing_but_status(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    _apply(cluster, _deployment("advisor", "Recommend"))
    status = wait_for(
        "a recommendation", lambda: (s := _status(cluster, "advisor")).get("desiredReplicas") and s
    )
    assert status["pools"] and all(p["replicas"] == 0 for p in status["pools"])
    time.sleep(8)  # a few rounds
    assert _children(cluster, "advisor") == []


def test_missing_metric_holds_the_minimum_and_says_why(
    cluster: LocalCluster, operator: ModuleOperator
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

    conditions = wait_for("Degraded with a reason", degraded)
    assert conditions["Forecasting"]["status"] == "False"
    assert "no data" in conditions["Forecasting"]["message"]
    wait_for(
        "the minimum kept running",
        lambda: sum(c["spec"]["replicas"] for c in _children(cluster, "blind")) == 2,
    )


def test_restart_keeps_children_and_plan(cluster: LocalCluster, operator: ModuleOperator) -> None:
    # Steady demand, so the right plan does not change while the operator restarts: 18/s at
    # 4/s a replica, five replicas on on-demand.
    doc = _deployment(
        "steady", "Enforce", query="vector(18)", capacity={"spot": {"maxFraction": 0}}
    )
    _apply(cluster, doc)
    planned = wait_for("steady planned and running", lambda: _ready_children(cluster, "steady"))
    operator.wait_rounds(2)
    before = {c["metadata"]["name"]: c["spec"]["replicas"] for c in _children(cluster, "steady")}
    assert sum(before.values()) == sum(c["spec"]["replicas"] for c in planned.values())
    operator.kill()
    # What the old process would have measured by now (its model needs a day of refits to
    # measure anything): the achieved shortfall and its window, kept in status.
    achieved = {"achievedShortfall": "1.23%", "achievedWindow": "7d"}
    cluster.kubectl(
        "patch",
        "inferencedeployment",
        "steady",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"slo": achieved}}),
    )
    restarted = datetime.now(UTC)
    # Informational status (slo among it) is written at the heartbeat: a short one here, so
    # the new process writes what its model carries within seconds, not five minutes.
    module_args = operator.extra_args
    operator.extra_args = [*module_args, "--status-heartbeat", "5s"]
    operator.start()
    operator.wait_rounds(3)  # rounds of the new process
    after = {c["metadata"]["name"]: c["spec"]["replicas"] for c in _children(cluster, "steady")}
    assert set(after) == set(before)  # no duplicates, none lost
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    # Level-based: the new process found every child as planned and wrote none of them.
    assert operator.child_writes("steady", NS) == 0

    # The new process's model carries on the achieved shortfall the status kept (without it,
    # the new process writes its slo status without one until the model's second fit).
    def slo() -> dict[str, Any] | None:
        status = cluster.kubectl_json("get", "inferencedeployment", "steady", "-n", NS)["status"]
        written = datetime.fromisoformat(status.get("lastPlanTime") or "1970-01-01T00:00:00Z")
        found: dict[str, Any] = status.get("slo") or {}
        # A status the new process wrote from its model's first fit (margin set).
        return found if written > restarted and found.get("margin") else None

    try:
        kept = wait_for("the new model's slo status", slo)
        # (whole minutes of the 7 days: 124 of 10,080)
        assert float(kept.get("achievedShortfall", "0%").rstrip("%")) == pytest.approx(
            1.23, abs=0.01
        ), kept
        assert kept.get("achievedWindow", "").startswith("7d"), kept
    finally:  # the module's operator as the other tests know it
        operator.kill()
        operator.extra_args = module_args
        operator.start()
        operator.wait_rounds(2)


def _budget(namespace: str, hourly: float) -> dict[str, Any]:
    return manifests.budget(namespace, hourly=hourly)


def _apply_budget_pair(cluster: LocalCluster) -> None:
    """Two deployments under one Hard budget: both want the same constant demand on on-demand
    capacity ($10 a replica-hour); the cap fits the important one and part of the other."""
    constant = {"query": "vector(16)", "targetUtilization": 1.0}
    docs = []
    for name, priority in (("vip", 500), ("batch", 10)):
        doc = _deployment(name, "Enforce", priority=priority, capacity={"spot": {"maxFraction": 0}})
        doc["metadata"]["namespace"] = BUDGET_NS
        doc["spec"]["demand"] = constant
        docs.append(doc)
    _apply(cluster, _budget(BUDGET_NS, 60.0), *docs)


def test_hard_budget_lower_priority_gives_way(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    ns = BUDGET_NS
    _apply_budget_pair(cluster)

    def statuses() -> dict[str, dict[str, Any]] | None:
        out = {}
        for name in ("vip", "batch"):
            obj = cluster.kubectl_json("get", "inferencedeployment", name, "-n", ns)
            status = obj.get("status") or {}
            if not status.get("desiredReplicas"):
                return None
            out[name] = status
        return out

    found = wait_for("both planned", statuses)
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

    status = wait_for("the budget to name the limited deployment", budget_status)
    # What is billed: the namespace's share of the on-demand nodes (whole nodes, split by the
    # GPUs each namespace holds), so it can be above the plans' per-replica cost.
    assert status["hourlySpend"] > 0


def test_lost_spot_node_is_replaced_on_demand(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    # On spot while spot is calm (beside any on-demand floor): a node's worth of replicas.
    doc = _deployment("spotty", "Enforce", capacity={"spot": {"maxFraction": 1.0}})
    doc["spec"]["demand"] = {"query": "vector(12)", "targetUtilization": 1.0}
    _apply(cluster, doc)

    def on_spot() -> tuple[int, list[dict[str, Any]]] | None:
        """(replicas planned, the spot ones' Running pods) once the move to spot is over:
        while it runs, the on-demand child keeps its replicas until the spot ones are Ready,
        so the children hold more than the plan."""
        replicas = {
            c["metadata"]["labels"]["peakwise.dev/pool"]: c["spec"]["replicas"]
            for c in _children(cluster, "spotty")
        }
        planned = _status(cluster, "spotty").get("desiredReplicas") or 0
        pods = cluster.kubectl_json(
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "peakwise.dev/inference-deployment=spotty,peakwise.dev/pool=e2e-spot",
        )
        running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        spot = replicas.get("e2e-spot", 0)
        moved = spot > 0 and len(running) == spot and sum(replicas.values()) == planned
        return (planned, running) if moved else None

    total, running = wait_for("spotty running on spot", on_spot, timeout=120)
    for node in {p["spec"]["nodeName"] for p in running}:
        cluster.kubectl("delete", "node", node, "--wait=false")

    def replaced() -> int:
        """The replicas on on-demand once they hold the whole plan. Not `total`: spot replicas
        are counted at their expected survival, so a pool with interruptions already seen
        (by earlier tests) plans more of them than on-demand needs for the same demand."""
        now = {
            c["metadata"]["labels"]["peakwise.dev/pool"]: c["spec"]["replicas"]
            for c in _children(cluster, "spotty")
        }
        planned = _status(cluster, "spotty").get("desiredReplicas") or 0
        if planned < 1 or now.get("e2e-od", 0) < planned:
            pool = cluster.kubectl_json("get", "gpunodepool", "e2e-spot").get("status") or {}
            raise RuntimeError(
                f"children {now}, plan {planned} (on spot it was {total}); e2e-spot status {pool}"
            )
        return int(now["e2e-od"])

    # Spot cannot bring nodes back within its provisioning time: on-demand takes the replicas
    # within one timer interval (3 s) plus the watch and the apply.
    on_demand = wait_for("lost spot replicas moved to on-demand", replaced, timeout=20)

    def serving() -> bool:
        pods = cluster.kubectl_json(
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "peakwise.dev/inference-deployment=spotty,peakwise.dev/pool=e2e-od",
        )
        return sum(p["status"].get("phase") == "Running" for p in pods["items"]) >= on_demand

    wait_for("the replacements Running on on-demand nodes", serving, timeout=60)

    def counted() -> int:
        status = cluster.kubectl_json("get", "gpunodepool", "e2e-spot").get("status") or {}
        return int(status.get("interruptionsObserved", 0))

    wait_for("the interruption counted in the pool's status", counted, timeout=30)


def test_metrics_and_liveness_are_served(cluster: LocalCluster, operator: ModuleOperator) -> None:
    _apply(cluster, _deployment("chat", "Enforce"))
    _apply_budget_pair(cluster)

    def metrics() -> str | None:
        text = get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
        return text if 'peakwise_demand_forecast{name="chat",namespace="e2e-op"}' in text else None

    text = wait_for("metrics with a forecast", metrics)
    for name in (
        "peakwise_desired_replicas",
        "peakwise_cost_hourly",
        "peakwise_budget_limit_hourly",
        "peakwise_planning_round_seconds_count",
    ):
        assert name in text
    assert get(f"http://127.0.0.1:{operator.liveness_port}/healthz")


def _ready_children(cluster: LocalCluster, name: str) -> dict[str, dict[str, Any]] | None:
    """The children by pool once every one has rolled out completely, else None."""
    children = _children(cluster, name)
    out = {}
    for child in children:
        spec, status = child["spec"], child.get("status") or {}
        want = spec["replicas"]
        done = (
            status.get("observedGeneration", 0) >= child["metadata"]["generation"]
            and status.get("updatedReplicas", 0) == want
            and status.get("readyReplicas", 0) == want
            and status.get("replicas", 0) == want  # no old pods left
        )
        if not done:
            return None
        out[child["metadata"]["labels"]["peakwise.dev/pool"]] = child
    return out or None


def _container(child: dict[str, Any]) -> dict[str, Any]:
    return dict(child["spec"]["template"]["spec"]["containers"][0])


def test_template_change_rolls_out_to_every_child(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    # 20/s at 4/s a replica: five replicas, too many for one 4-GPU node, and at most half on
    # spot: a node in each pool (cheaper than two on-demand nodes), so one child per pool.
    doc = _deployment("roll", "Enforce", query="vector(20)", gpu="e2e-roll-gpu")
    _apply(cluster, doc)
    before = wait_for(
        "two children rolled out",
        lambda: (c := _ready_children(cluster, "roll")) and len(c) == 2 and c,
        timeout=60,
    )
    assert set(before) == {"e2e-roll-od", "e2e-roll-spot"}
    sizes = {pool: c["spec"]["replicas"] for pool, c in before.items()}
    cluster.kubectl(
        *("patch", "inferencedeployment", "roll", "-n", NS, "--type", "merge", "-p"),
        json.dumps(
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "server",
                                    "image": "e2e/server:2",
                                    "env": [{"name": "MODEL_REVISION", "value": "2"}],
                                }
                            ]
                        }
                    }
                }
            }
        ),
    )

    def rolled() -> dict[str, dict[str, Any]] | None:
        children = _ready_children(cluster, "roll")
        if not children or len(children) != 2:
            return None
        new = all(
            _container(c)["image"] == "e2e/server:2"
            and {"name": "MODEL_REVISION", "value": "2"} in _container(c).get("env", [])
            for c in children.values()
        )
        return children if new else None

    after = wait_for("the new template rolled out to both children", rolled, timeout=60)
    assert {pool: c["spec"]["replicas"] for pool, c in after.items()} == sizes
    for pool, child in after.items():
        # The pool's placement and GPUs are still there, under the new template.
        pod = child["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["peakwise.dev/pool"] == pool
        assert _container(child)["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert child["metadata"]["generation"] > before[pool]["metadata"]["generation"]
    pods = cluster.kubectl_json(
        "get", "pods", "-n", NS, "-l", "peakwise.dev/inference-deployment=roll"
    )["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == sum(sizes.values())
    assert {p["spec"]["containers"][0]["image"] for p in running} == {"e2e/server:2"}


def test_hand_edits_of_a_child_are_put_back_and_a_steady_round_writes_nothing(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    _apply(cluster, _deployment("edits", "Enforce", query="vector(20)", gpu="e2e-roll-gpu"))
    # Settled: its model is fitted (no provisional plan left), then its children rolled out.
    wait_for(
        "a fitted model",
        lambda: _conditions(_status(cluster, "edits"))["Forecasting"]["reason"] != "ModelPending",
    )
    operator.wait_rounds(1)
    planned = wait_for("edits rolled out", lambda: _ready_children(cluster, "edits"), timeout=90)
    first = sorted(planned.items())[0][1]
    child, want = first["metadata"]["name"], first["spec"]["replicas"]

    def live() -> dict[str, Any]:
        return dict(cluster.kubectl_json("get", "deployment", child, "-n", NS))

    # Nothing changes: rounds go by without a single write to the children.
    writes, generation = operator.child_writes("edits", NS), live()["metadata"]["generation"]
    operator.wait_rounds()
    assert operator.child_writes("edits", NS) == writes
    assert live()["metadata"]["generation"] == generation

    def back(check: Any, what: str) -> float:
        started = time.monotonic()
        # One timer interval, plus the watch event and the apply.
        wait_for(what, lambda: check(live()), timeout=INTERVAL_S + 5, every=0.2)
        return time.monotonic() - started

    cluster.kubectl("scale", "deployment", child, "-n", NS, "--replicas", str(want + 3))
    took = back(lambda d: d["spec"]["replicas"] == want, "the hand scaling undone")
    print(f"kubectl scale undone in {took:.1f}s")
    cluster.kubectl(
        *("patch", "deployment", child, "-n", NS, "-p"),
        '{"spec":{"template":{"spec":{"containers":[{"name":"server","image":"hand/edit:1"}]}}}}',
    )
    back(lambda d: _container(d)["image"] == "e2e/server:1", "the hand-edited image undone")
    cluster.kubectl(
        "label",
        "deployment",
        child,
        "-n",
        NS,
        "app.kubernetes.io/managed-by=someone",
        "--overwrite",
    )
    back(
        lambda d: d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "peakwise",
        "the hand-edited label undone",
    )
    assert operator.child_writes("edits", NS) >= writes + 3

    # Put back, it stays put: no flapping, no more writes.
    wait_for("edits rolled out again", lambda: _ready_children(cluster, "edits"), timeout=60)
    writes, generation = operator.child_writes("edits", NS), live()["metadata"]["generation"]
    operator.wait_rounds()
    assert operator.child_writes("edits", NS) == writes
    assert live()["metadata"]["generation"] == generation


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def _events(cluster: LocalCluster, namespace: str, name: str, reason: str) -> list[Any]:
    return list(
        cluster.kubectl_json(
            *("get", "events", "-n", namespace, "--field-selector"),
            f"involvedObject.name={name},reason={reason}",
        )["items"]
    )


def test_rbac_denials_are_reported_and_clear_once_granted(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    # Take away two permissions the chart grants: writing Deployments in one watched
    # namespace, and creating Nodes (the kwok provider) everywhere.
    write_role = next(
        d
        for d in operator.rbac
        if d["kind"] == "Role"
        and d["metadata"]["name"] == f"{SERVICE_ACCOUNT}-write"
        and d["metadata"]["namespace"] == DENY_NS
    )
    nodes_role = _rbac_object(operator.rbac, "ClusterRole", f"{SERVICE_ACCOUNT}-cluster-write")
    _apply(cluster, _without_rule(write_role, "deployments"), _without_rule(nodes_role, "nodes"))
    sa = f"system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}"
    denied = cluster.kubectl(
        "auth", "can-i", "create", "deployments", "-n", DENY_NS, "--as", sa, check=False
    )
    assert denied.stdout.strip() == "no"

    pool = _pool("e2e-deny-pool", "onDemand", 40.0, gpu="e2e-deny-gpu")
    doc = _deployment("denied", "Enforce", query="vector(4)", gpu="e2e-deny-gpu")
    doc["metadata"]["namespace"] = DENY_NS
    _apply(cluster, pool, doc)

    def infd_status() -> dict[str, Any]:
        obj = cluster.kubectl_json("get", "inferencedeployment", "denied", "-n", DENY_NS)
        return dict(obj.get("status") or {})

    def pool_status() -> dict[str, Any]:
        return dict(cluster.kubectl_json("get", "gpunodepool", "e2e-deny-pool").get("status") or {})

    def forbidden(status: dict[str, Any]) -> dict[str, Any] | None:
        degraded = _conditions(status).get("Degraded", {})
        ok = degraded.get("status") == "True" and degraded.get("reason") == "Forbidden"
        return degraded if ok else None

    degraded = wait_for(
        "Degraded=Forbidden on the InferenceDeployment", lambda: forbidden(infd_status())
    )
    message = degraded["message"]
    assert re.search(r"may not (patch|create) deployments\.apps in namespace e2e-deny", message), (
        message
    )
    pool_degraded = wait_for("Degraded=Forbidden on the pool", lambda: forbidden(pool_status()))
    assert re.search(r"may not create nodes at the cluster scope", pool_degraded["message"]), (
        pool_degraded["message"]
    )
    events = wait_for(
        "a Warning Event on the InferenceDeployment",
        lambda: _events(cluster, DENY_NS, "denied", "Forbidden"),
    )
    assert {e["type"] for e in events} == {"Warning"}
    wait_for(
        "a Warning Event on the pool",
        lambda: _events(cluster, "default", "e2e-deny-pool", "Forbidden"),
    )
    # The rest goes on: the plan is in status, other deployments are planned, the operator runs.
    assert infd_status()["desiredReplicas"] >= 1
    assert cluster.kubectl_json("get", "deployments", "-n", DENY_NS)["items"] == []
    operator.wait_rounds(2)
    assert operator.running()
    assert len(_events(cluster, DENY_NS, "denied", "Forbidden")) == len(events)  # not every round

    _apply(cluster, write_role, nodes_role)  # granted again
    wait_for(
        "the InferenceDeployment healthy and Ready",
        lambda: (
            (c := _conditions(infd_status()))["Degraded"]["status"] == "False"
            and c["Ready"]["status"] == "True"
        ),
        timeout=60,
    )
    # The pool's own timer writes its status: it follows within an interval.
    wait_for(
        "the pool healthy, with ready nodes",
        lambda: (
            _conditions(s := pool_status())["Degraded"]["status"] == "False"
            and s.get("readyNodes", 0) >= 1
        ),
        timeout=30,
    )
    children = cluster.kubectl_json("get", "deployments", "-n", DENY_NS)["items"]
    assert [c["metadata"]["name"] for c in children] == ["denied-e2e-deny-pool"]


def test_scales_up_ahead_of_a_daily_peak_and_back_down_after(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    """History with a daily peak (a minute at 20/s, 2/s otherwise), today's planned from the
    fixture on: replicas up at least one lead time before it, held through it, and released
    after it within the stabilisation window, for good."""
    peak = operator.peak
    assert peak is not None
    # The forecast window (from one lead time ahead of the current minute) leaves the peak one
    # lead time before the peak ends; the stabilisation window holds that target from then on.
    released = peak.end - PEAK_LEAD_S + PEAK_WINDOW_S
    # Slack: rounds come every interval, the sampler every second, and one forecast step (a
    # minute) in case the model's window starts a step later.
    earliest, latest = released - INTERVAL_S - 2, released + INTERVAL_S + 2 + 60
    up_at = wait_for(
        "the peak's replicas",
        lambda: peak.first(0, lambda n: n >= PEAK_REPLICAS),
        timeout=max(10.0, peak.start - time.time()),
    )
    down_at = wait_for(
        "the peak's replicas released",
        lambda: peak.first(up_at, lambda n: n <= BASE_REPLICAS),
        timeout=max(10.0, latest - time.time() + 5),
    )
    wait_for("a few samples after the release", lambda: peak.first(down_at + 5, lambda n: True))
    samples = list(peak.samples)
    print(
        f"peak {peak.start:.0f}..{peak.end:.0f}: up {up_at - peak.start:+.0f}s before it, "
        f"released {down_at - released:+.0f}s from {released - peak.end:+.0f}s after its end; "
        + " ".join(f"{t - peak.start:+.0f}:{n}" for t, n in samples[::5])
    )
    assert up_at <= peak.start - PEAK_LEAD_S, "not scaled up one lead time ahead"
    held = [n for t, n in samples if up_at <= t < earliest]
    assert min(held) >= PEAK_REPLICAS, "let go during the peak"
    assert earliest <= down_at <= latest, "not released within the stabilisation window"
    assert max(n for t, n in samples if t >= down_at) <= BASE_REPLICAS, "flapped back up"


def test_restart_loses_no_spend(cluster: LocalCluster, operator: ModuleOperator) -> None:
    _apply_budget_pair(cluster)

    def spend() -> dict[str, Any] | None:
        status = cluster.kubectl_json("get", "costbudget", "cap", "-n", BUDGET_NS).get("status")
        return status if status and status.get("spend", 0) > 0 else None

    before = wait_for("spend accrued", spend)
    operator.kill()
    operator.start()

    def accrued_again() -> dict[str, Any] | None:
        status = spend()
        return status if status and status["lastAccrualTime"] > before["lastAccrualTime"] else None

    after = wait_for("spend accrued after the restart", accrued_again, timeout=60)
    assert after["spend"] >= before["spend"]
    assert after["periodStart"] == before["periodStart"]


def test_deleting_a_pool_moves_its_replicas_first_then_removes_its_nodes(
    cluster: LocalCluster, operator: ModuleOperator
) -> None:
    """The platform deletes the pool a service runs on: the pool's finalizer holds it while
    the service's replicas move to another pool, the old child goes only once the new one is
    Ready (no moment with less Ready capacity than the plan), then the pool's nodes go."""
    gpu = "e2e-drain-gpu"
    cheap, dear = (
        _pool("e2e-drain-a", "onDemand", 20.0, gpu=gpu),
        _pool("e2e-drain-b", "onDemand", 40.0, gpu=gpu),
    )
    doc = _deployment("drainer", "Enforce", gpu=gpu, capacity={"spot": {"maxFraction": 0}})
    doc["spec"]["demand"] = {"query": "vector(8)", "targetUtilization": 1.0}
    _apply(cluster, cheap, dear, doc)

    def ready_by_pool() -> dict[str, int]:
        return {
            c["metadata"]["labels"]["peakwise.dev/pool"]: int(
                (c.get("status") or {}).get("readyReplicas") or 0
            )
            for c in _children(cluster, "drainer")
        }

    def on_cheap() -> dict[str, int] | None:
        ready = ready_by_pool()
        return ready if ready.get("e2e-drain-a", 0) >= 2 else None

    wait_for("drainer Ready on the cheap pool", on_cheap, timeout=120)
    try:
        cluster.kubectl("delete", "gpunodepool", "e2e-drain-a", "--wait=false")
        lowest, seen_terminating = 99, False
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ready = ready_by_pool()
            lowest = min(lowest, sum(ready.values()))
            pool = cluster.kubectl("get", "gpunodepool", "e2e-drain-a", "-o", "json", check=False)
            if pool.returncode != 0:
                break  # the finalizer let it go
            seen_terminating = True
            # The pool is only let go once no child of it is left.
            assert "deletionTimestamp" in json.loads(pool.stdout)["metadata"]
            time.sleep(0.5)
        else:
            raise AssertionError(f"e2e-drain-a not deleted within 180 s; children {ready}")
        assert seen_terminating
        assert lowest >= 2, f"Ready replicas fell to {lowest} during the drain"
        after = ready_by_pool()
        assert "e2e-drain-a" not in after and after.get("e2e-drain-b", 0) >= 2, after
        nodes = cluster.kubectl_json("get", "nodes", "-l", "peakwise.dev/pool=e2e-drain-a")
        assert nodes["items"] == [], "the deleted pool's nodes are left"
    finally:
        cluster.kubectl("delete", "inferencedeployment", "drainer", "-n", NS, "--timeout=60s")
        cluster.kubectl(
            "delete",
            "gpunodepool",
            "e2e-drain-a",
            "e2e-drain-b",
            "--ignore-not-found",
            "--timeout=90s",
            timeout=120,
        )

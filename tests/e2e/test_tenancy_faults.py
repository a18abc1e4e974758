"""Tenants and faults on the real cluster: what one team or a failing Prometheus does to the
others.

Three tenant namespaces run steady services on shared reserved, spot and on-demand kwok pools;
a fourth namespace is the attacker's. One operator watches all four, reading Prometheus
through a fault proxy. Each attack test applies what a careless or hostile team could apply
(everything the CRDs accept), lets rounds go by, and checks that every other service keeps at
least its minimum, the same tiers and its cost within 5%, and that every round completes.
The fault tests brown Prometheus out (slow, then 503s, then down) and kill the operator with
SIGKILL at random points, and check that no replica is removed, rounds stay within twice the
interval, recovery takes at most two rounds, and accrued spend stays within one interval of
the node-billed cost. Each test prints its figures (`-s` shows them; docs/tenancy.md quotes
them). Tests are independent of order: each attack is removed before its test ends.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml

from e2e.clusterfix import LocalCluster
from e2e.faultproxy import FaultProxy
from e2e.operatorproc import OperatorProcess
from e2e.polling import wait_for

pytestmark = pytest.mark.e2e

TENANTS = ("tn-a", "tn-b", "tn-c")
ATTACKER = "tn-x"
GPU = "tn-gpu"
INTERVAL_S = 3.0
ATTACKER_BUDGET = manifests.budget(ATTACKER, hourly=1.0)  # Hard, $1/h
SERVICES = {
    # (namespace, name): spec overrides. Constant demand, so the right plan never changes.
    ("tn-a", "chat"): {"query": "vector(14)", "replicas": {"min": 2, "max": 8}},
    ("tn-b", "search"): {
        "query": "vector(10)",
        "replicas": {"min": 2, "max": 6},
        "capacity": {"spot": {"maxFraction": 0.5}},
    },
    ("tn-c", "batch"): {"query": "vector(6)", "replicas": {"min": 1, "max": 4}},
}


def _apply(cluster: LocalCluster, *docs: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs), check=False)


def _service(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "demand": {"query": spec.pop("query"), "targetUtilization": 1.0},
        "forecast": {"history": "1h", "leadTime": "1m"},
        "capacity": {"spot": {"maxFraction": 0.0}},
    }
    base.update(spec)
    return manifests.deployment(name, namespace, gpu=GPU, throughput=2, **base)


@dataclass
class Plan:
    """What a service has now: desired replicas per tier, hourly cost, live child sizes."""

    tiers: dict[str, int]
    cost: float
    children: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.tiers.values())


def _plans(cluster: LocalCluster) -> dict[tuple[str, str], Plan]:
    out = {}
    for ns, name in SERVICES:
        status = cluster.kubectl_json("get", "infd", name, "-n", ns).get("status") or {}
        tiers: dict[str, int] = {"reserved": 0, "spot": 0, "onDemand": 0}
        for row in status.get("pools") or []:
            tiers[row["capacityType"]] += row["desiredReplicas"]
        children = cluster.kubectl_json(
            "get", "deployments", "-n", ns, "-l", f"peakwise.dev/inference-deployment={name}"
        )["items"]
        out[(ns, name)] = Plan(
            tiers=tiers,
            cost=float((status.get("cost") or {}).get("hourly", 0.0)),
            children={c["metadata"]["name"]: c["spec"]["replicas"] for c in children},
        )
    return out


@dataclass
class Suite:
    cluster: LocalCluster
    operator: OperatorProcess
    proxy: FaultProxy
    baseline: dict[tuple[str, str], Plan] = field(default_factory=dict)

    def steady(self) -> dict[tuple[str, str], Plan]:
        """The plans once two full rounds in a row agree."""

        def agreed() -> dict[tuple[str, str], Plan] | None:
            first = _plans(self.cluster)
            self.operator.wait_rounds(2)
            second = _plans(self.cluster)
            ready = all(p.total and sum(p.children.values()) == p.total for p in second.values())
            return second if ready and first == second else None

        return wait_for("steady plans", agreed, timeout=240, every=0)

    def assert_unharmed(self, what: str) -> dict[str, Any]:
        """Every tenant keeps >= its minimum, its tiers and its cost within 5% of the
        baseline; the deltas, printed."""
        now = _plans(self.cluster)
        deltas = {}
        for key, before in self.baseline.items():
            after = now[key]
            minimum = SERVICES[key]["replicas"]["min"]
            deltas["/".join(key)] = {
                "replicas": f"{before.total} -> {after.total}",
                "tiers": after.tiers,
                "cost": f"{before.cost:.2f} -> {after.cost:.2f}",
            }
            assert after.total >= minimum, f"{what}: {key} below its minimum: {after}"
            assert after.tiers == before.tiers, f"{what}: {key} tiers {before} -> {after}"
            assert after.cost == pytest.approx(before.cost, rel=0.05), f"{what}: {key} cost"
        print(f"\n{what}: {json.dumps(deltas)}")
        return deltas


@pytest.fixture(scope="module")
def suite(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    work = tmp_path_factory.mktemp("tenancy")
    cluster.kubectl("apply", "--server-side", "-f", str(Path(__file__).parents[2] / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for ns in (*TENANTS, ATTACKER):
        cluster.kubectl("create", "namespace", ns, check=False)
    taint = [{"key": "peakwise.dev/capacity-type", "value": "spot"}]
    pools = [
        manifests.pool("tn-res", "reserved", gpu=GPU, price=30, reservedNodes=2, maxNodes=2),
        manifests.pool("tn-spot", "spot", gpu=GPU, price=12, max_nodes=6, nodeTaints=taint),
        # Four nodes at least: room for a pod of the attacker's own (the shadow test).
        manifests.pool("tn-od", "onDemand", gpu=GPU, price=40, max_nodes=8, minNodes=4),
    ]
    for p in pools:
        p["spec"]["provisioningTime"] = "30s"
    budgets = [manifests.budget(ns, hourly=1_000, enforcement="Soft") for ns in TENANTS]
    services = [_service(ns, n, **dict(s)) for (ns, n), s in SERVICES.items()]
    # The attacker is a tenant like the others, with a $1/h Hard budget and an honest service
    # in the baseline that already wants more than its share of reserved capacity: what its
    # hostile objects add is what is measured.
    honest = _service(ATTACKER, "honest", query="vector(6)", replicas={"min": 1, "max": 4})
    _apply(cluster, *pools, *budgets, ATTACKER_BUDGET, honest, *services)
    proxy = FaultProxy(cluster.prometheus_url).start()
    operator = OperatorProcess(
        cluster,
        work / "operator.log",
        cluster.kubeconfig,
        (*TENANTS, ATTACKER),
        INTERVAL_S,
        prometheus_url=proxy.url,
        extra_args=("--fit-in", "thread"),
    )
    operator.start()
    suite = Suite(cluster, operator, proxy)
    try:
        suite.baseline = suite.steady()
        print(f"\nbaseline: { {'/'.join(k): v.tiers for k, v in suite.baseline.items()} }")
        yield suite
    finally:
        # Deleted while the operator runs: kopf's timers hold a finalizer it must release.
        for ns in (*TENANTS, ATTACKER):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        deleted = cluster.kubectl(
            "delete",
            "gpunodepool",
            "tn-res",
            "tn-spot",
            "tn-od",
            "--timeout=60s",
            check=False,
            timeout=90,
        )
        if deleted.returncode:
            left = cluster.kubectl("get", "gpunodepools", "-o", "yaml", check=False).stdout
            print(f"pools not deleted ({deleted.stderr.strip()}):\n{left[-3000:]}")
        operator.stop()
        proxy.stop()
        lines = operator.log.read_text().splitlines()
        print(f"operator log: {operator.log}; its last lines:")
        print("\n".join(line[:300] for line in lines[-30:]))


# --- faults ------------------------------------------------------------------------------------


class ChildSampler:
    """The tenants' child sizes, sampled every half second while running."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.lowest: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                plans = _plans(self.cluster)
            except Exception:  # a failed list is a missing sample
                continue
            for key, plan in plans.items():
                size = sum(plan.children.values())
                self.lowest[key] = min(self.lowest.get(key, size), size)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _round_seconds(operator: OperatorProcess) -> tuple[float, float]:
    return (
        operator.metric("peakwise_full_round_seconds_count"),
        operator.metric("peakwise_full_round_seconds_sum"),
    )


def test_prometheus_brownout_removes_no_replica(suite: Suite) -> None:
    """Slow answers, then 503s, then no Prometheus at all, then back: nothing is scaled down,
    rounds stay within twice the interval, and forecasts are back within two rounds."""
    # Each phase spans at least one whole minute: forecasts are made once a minute.
    phases = (("slow", 62.0), ("503", 62.0), ("down", 124.0))
    rounds = []
    with ChildSampler(suite.cluster) as sampler:
        for phase, seconds in phases:
            if phase == "slow":
                suite.proxy.slow(INTERVAL_S * 3)
            elif phase == "503":
                suite.proxy.failing(503)
            else:
                suite.proxy.down()
            before = _round_seconds(suite.operator)
            time.sleep(seconds)
            after = _round_seconds(suite.operator)
            completed = after[0] - before[0]
            mean = (after[1] - before[1]) / completed if completed else float("inf")
            rounds.append((phase, int(completed), round(mean, 2)))
        suite.proxy.healthy()
        recovered_at = time.monotonic()
        start = suite.operator.full_rounds()

        def forecasting_again() -> bool:
            for ns, name in SERVICES:
                status = suite.cluster.kubectl_json("get", "infd", name, "-n", ns)["status"]
                kinds = {c["type"]: c for c in status["conditions"]}
                if kinds["Forecasting"]["reason"] in ("NoForecast",):
                    return False
            return True

        wait_for("forecasts back", forecasting_again, timeout=60)
        recovery_rounds = suite.operator.full_rounds() - start
        recovery = time.monotonic() - recovered_at
    print(
        f"\nbrownout: rounds (phase, completed, mean full-round s) {rounds}; "
        f"recovered in {recovery:.1f}s ({recovery_rounds:.0f} rounds); lowest children "
        f"{ {'/'.join(k): v for k, v in sampler.lowest.items()} }"
    )
    for key, plan in suite.baseline.items():
        assert sampler.lowest.get(key, 0) >= sum(plan.children.values()), f"{key} scaled down"
    for phase, completed, mean in rounds:
        assert completed >= 1, f"no round completed while Prometheus was {phase}"
        assert mean <= 2 * INTERVAL_S + 1.0, f"rounds took {mean}s while Prometheus was {phase}"
    assert recovery_rounds <= 3, "recovery took more than two rounds after the first"
    suite.assert_unharmed("after the brownout")


def _accrued(cluster: LocalCluster, namespace: str) -> tuple[float, float] | None:
    """(spend, lastAccrualTime as epoch seconds) of the namespace's CostBudget, once accruing."""
    status = cluster.kubectl_json("get", "costbudget", "cap", "-n", namespace).get("status") or {}
    if not status.get("lastAccrualTime"):
        return None
    at = datetime.fromisoformat(status["lastAccrualTime"].replace("Z", "+00:00")).timestamp()
    return float(status.get("spend", 0.0)), at


def _billed_rate(cluster: LocalCluster, namespace: str) -> float:
    """$/h the namespace is billed for, from the cluster alone: each pool's nodes beyond its
    reserved ones at its price, split by the GPUs the namespaces' pods hold on the pool."""
    listed = cluster.kubectl_json("get", "gpunodepools")["items"]
    pools = {p["metadata"]["name"]: p["spec"] for p in listed}
    nodes = cluster.kubectl_json("get", "nodes", "-l", "peakwise.dev/pool")["items"]
    pool_of = {n["metadata"]["name"]: n["metadata"]["labels"]["peakwise.dev/pool"] for n in nodes}
    held: dict[str, dict[str, int]] = {}
    for pod in cluster.kubectl_json("get", "pods", "-A")["items"]:
        node = pod["spec"].get("nodeName")
        if node not in pool_of or pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        gpus = sum(
            int((c.get("resources") or {}).get("requests", {}).get("nvidia.com/gpu", 0))
            for c in pod["spec"]["containers"]
        )
        share = held.setdefault(pool_of[node], {})
        share[pod["metadata"]["namespace"]] = share.get(pod["metadata"]["namespace"], 0) + gpus
    rate = 0.0
    for name, spec in pools.items():
        count = sum(1 for pool in pool_of.values() if pool == name)
        free = min(count, spec.get("reservedNodes", 0)) if spec["capacityType"] == "reserved" else 0
        share = held.get(name, {})
        if sum(share.values()):
            rate += (
                (count - free)
                * spec["pricePerNodeHour"]
                * share.get(namespace, 0)
                / sum(share.values())
            )
    return rate


def test_kill_9_at_random_points_loses_no_spend(suite: Suite) -> None:
    """SIGKILL the operator at random points over many rounds: the budget's accrued spend
    stays within one interval's worth of the node-billed rate integrated over the same time."""
    ns = max(TENANTS, key=lambda n: max(p.cost for k, p in suite.baseline.items() if k[0] == n))
    first = wait_for("spend accruing", lambda: _accrued(suite.cluster, ns), timeout=60)
    rate = _billed_rate(suite.cluster, ns)
    assert rate > 0
    rng = random.Random(13)
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.5, 2 * INTERVAL_S))
        suite.operator.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, INTERVAL_S))
        suite.operator.start()
    suite.operator.wait_rounds(2)
    last = wait_for("an accrual after the kills", lambda: _accrued(suite.cluster, ns))
    accrued = last[0] - first[0]
    expected = rate * (last[1] - first[1]) / 3600
    error = abs(accrued - expected)
    one_interval = rate * INTERVAL_S / 3600
    print(
        f"\nkill -9 x{kills} in {ns}: accrued {accrued:.5f}, node-billed {expected:.5f} over "
        f"{last[1] - first[1]:.0f}s, error {error:.5f} (one interval: {one_interval:.5f})"
    )
    assert error <= one_interval
    suite.assert_unharmed("after the kills")


# --- attacks: what one team can apply, and what it does to the others ---------------------------


def _attack(suite: Suite, name: str, *docs: dict[str, Any]) -> str:
    """Apply the attacker's objects (as the team would: the API server may refuse some), let
    three rounds go by, check the tenants, remove it all; what the API server said."""
    applied = _apply(suite.cluster, *docs)
    refused = applied.stderr.strip() if applied.returncode else ""
    try:
        suite.operator.wait_rounds(3)
        assert suite.operator.running()
        suite.assert_unharmed(f"{name} (refused: {refused[:160]!r})")
    finally:
        for doc in docs:
            suite.cluster.kubectl(
                "delete",
                doc["kind"].lower(),
                doc["metadata"]["name"],
                "-n",
                doc["metadata"].get("namespace", ATTACKER),
                "--ignore-not-found",
                check=False,
            )
        suite.operator.wait_rounds(2)
    return refused


def _attacker(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"query": "vector(4)", "replicas": {"min": 1, "max": 4}}
    return _service(ATTACKER, name, **{**base, **spec})


@pytest.mark.parametrize(
    "name, spec",
    [
        ("far-lead-time", {"forecast": {"history": "1h", "leadTime": "3650000d"}}),
        ("huge-model-load", {"modelLoadTime": "1000000000d"}),
        ("long-history", {"forecast": {"history": "365d"}}),
        ("slow-model-load", {"modelLoadTime": "2h", "capacity": {"spot": {"maxFraction": 1}}}),
        ("huge-demand", {"query": "vector(1e9)", "replicas": {"min": 1, "max": 10}}),
        ("inflated-reserved", {"query": "vector(1e6)", "replicas": {"min": 1, "max": 16}}),
        ("top-priority", {"query": "vector(1e6)", "priority": 1000000, "replicas": {"max": 16}}),
    ],
)
def test_an_attacking_deployment_hurts_no_other_tenant(
    suite: Suite, name: str, spec: dict[str, Any]
) -> None:
    refused = _attack(suite, name, _attacker(name, **spec))
    if name in ("far-lead-time", "huge-model-load", "long-history"):
        assert "must be" in refused, refused  # the CRD's bounds refuse it, naming the field


@pytest.mark.parametrize(
    "name, pod",
    [
        ("host-network", {"hostNetwork": True}),
        (
            "privileged",
            {
                "containers": [
                    {"name": "server", "image": "x:1", "securityContext": {"privileged": True}}
                ]
            },
        ),
        (
            "gpu-sidecar",
            {
                "containers": [
                    {"name": "server", "image": "x:1"},
                    {
                        "name": "helper",
                        "image": "y:1",
                        "resources": {"limits": {"nvidia.com/gpu": "7"}},
                    },
                ]
            },
        ),
    ],
)
def test_a_template_the_team_could_not_run_itself_makes_no_child(
    suite: Suite, name: str, pod: dict[str, Any]
) -> None:
    doc = _attacker(name)
    template = doc["spec"]["template"]["spec"]
    template.update(pod)
    _apply(suite.cluster, doc)

    def rejected() -> dict[str, Any] | None:
        status = suite.cluster.kubectl_json("get", "infd", name, "-n", ATTACKER).get("status")
        kinds = {c["type"]: c for c in (status or {}).get("conditions", [])}
        degraded = kinds.get("Degraded", {})
        return degraded if degraded.get("reason") == "TemplateRejected" else None

    try:
        found = wait_for("Degraded=TemplateRejected", rejected)
        print(f"\n{name}: {found['message'][:200]}")
        children = suite.cluster.kubectl_json(
            "get", "deployments", "-n", ATTACKER, "-l", f"peakwise.dev/inference-deployment={name}"
        )["items"]
        assert children == []
        suite.assert_unharmed(name)
    finally:
        suite.cluster.kubectl("delete", "infd", name, "-n", ATTACKER, check=False)


def test_a_deployment_labelled_like_a_child_is_billed_and_shadows_nothing(suite: Suite) -> None:
    """A team labels its own Deployment like a child of another service and runs a GPU with it
    (on the free slot of an on-demand node): it is no child (no InferenceDeployment controls
    it), and its GPU is billed to it."""
    victim_ns, victim = "tn-a", "chat"
    fake = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "shadow",
            "namespace": ATTACKER,
            "labels": {"peakwise.dev/inference-deployment": victim, "peakwise.dev/pool": "tn-od"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "shadow"}},
            "template": {
                "metadata": {"labels": {"app": "shadow"}},
                "spec": {
                    "nodeSelector": {"peakwise.dev/pool": "tn-od"},
                    "containers": [
                        {
                            "name": "x",
                            "image": "x:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }
    suite.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(fake))
    try:
        before = float(
            (
                suite.cluster.kubectl_json("get", "costbudget", "cap", "-n", ATTACKER).get("status")
                or {}
            ).get("hourlySpend", 0.0)
        )

        def billed() -> float | None:
            status = (
                suite.cluster.kubectl_json("get", "costbudget", "cap", "-n", ATTACKER).get("status")
                or {}
            )
            rate = float(status.get("hourlySpend", 0.0))
            return rate if rate > before else None

        rate = wait_for("the attacker billed for its GPUs", billed, timeout=120)
        print(f"\nshadow deployment: attacker billed {rate:.2f}/h")
        suite.assert_unharmed("shadow deployment")
        # The victim's children are its own, by owner: the shadow is none of them.
        children = _plans(suite.cluster)[(victim_ns, victim)].children
        assert "shadow" not in children
    finally:
        suite.cluster.kubectl("delete", "deployment", "shadow", "-n", ATTACKER, check=False)

"""`helm install` into the real local cluster, and what the installed RBAC allows.

Two releases share the session's cluster:

* ``pw`` in ``peakwise-system`` with the default values, into a namespace that enforces
  the ``restricted`` Pod Security Standard;
* ``pwns`` in ``peakwise-ns``: watches ``team-a`` only, kwok provider and peering on, two
  peered instances, user roles left to the first release.

The operator image does not exist in the kwok cluster, so nothing waits for its pods to
become Ready; the tests check the objects and ask the API server (``kubectl auth can-i``
impersonating the ServiceAccounts and users) what each identity may do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from e2e.clusterfix import LocalCluster

from chart.chartlib import CHART

pytestmark = pytest.mark.e2e

NS = "peakwise-system"
SA = f"system:serviceaccount:{NS}:pw-peakwise"
NS_NS = "peakwise-ns"
SA_NS = f"system:serviceaccount:{NS_NS}:pwns-peakwise"
PEAKWISE_CRDS = [
    "costbudgets.peakwise.dev",
    "gpunodepools.peakwise.dev",
    "inferencedeployments.peakwise.dev",
]
KOPF_CRDS = ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> Iterator[LocalCluster]:
    for namespace in ("team-a", "team-b"):
        cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
    try:
        cluster.helm("install", "pw", str(CHART), "--namespace", NS)
        cluster.helm(
            *("install", "pwns", str(CHART), "--namespace", NS_NS, "--create-namespace"),
            *("--set", "watchNamespaces={team-a}", "--set", "providers.kwok.enabled=true"),
            *("--set", "peering.enabled=true", "--set", "replicaCount=2"),
            *("--set", "userRoles.create=false"),
        )
        yield cluster
    finally:
        for release, namespace in (("pwns", NS_NS), ("pw", NS)):
            cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        # Kept on uninstall by design (shared by kopf operators); this cluster is shared by
        # the other end-to-end tests, whose operators must not find a peering CRD.
        # --wait=false: the API server removes the instances first, which can take a while
        # on a loaded machine; the teardown must not time out on it.
        cluster.kubectl(
            "delete", "crd", *KOPF_CRDS, "--ignore-not-found", "--wait=false", check=False
        )
        cluster.kubectl(
            *("delete", "namespace", "team-a", "team-b", NS, NS_NS),
            *("--ignore-not-found", "--wait=false"),
            check=False,
        )


def can_i(cluster: LocalCluster, who: str, verb: str, resource: str, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", *args, check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, proc.stdout + proc.stderr
    return answer == "yes"


# --- what the install created ------------------------------------------------------------


def test_install_creates_the_operator_and_its_rbac(installed: LocalCluster) -> None:
    deployment = installed.kubectl_json("get", "deployment", "pw-peakwise", "-n", NS)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "pw-peakwise"
    installed.kubectl_json("get", "serviceaccount", "pw-peakwise", "-n", NS)
    installed.kubectl_json("get", "service", "pw-peakwise-metrics", "-n", NS)
    selector = "app.kubernetes.io/instance=pw"
    roles = installed.kubectl_json("get", "clusterroles", "-l", selector)["items"]
    assert {r["metadata"]["name"] for r in roles} == {
        "pw-peakwise-cluster-read",
        "pw-peakwise-cluster-write",
        "pw-peakwise-namespaced-read",
        "pw-peakwise-namespaced-write",
        "peakwise-platform-admin",
        "peakwise-app-team",
        "peakwise-view",
    }
    bindings = installed.kubectl_json("get", "clusterrolebindings", "-l", selector)["items"]
    assert len(bindings) == 4
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "pw-peakwise", "namespace": NS}
        ]


def test_operator_pod_is_admitted_under_restricted_pod_security(installed: LocalCluster) -> None:
    """The namespace enforces `restricted`; a non-compliant pod would never be created."""
    deadline = time.monotonic() + 60
    pods: list[dict[str, object]] = []
    while time.monotonic() < deadline and not pods:
        pods = installed.kubectl_json(
            "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=pw"
        )["items"]
        if not pods:
            time.sleep(1)
    assert pods, installed.kubectl("get", "events", "-n", NS).stdout
    replicasets = installed.kubectl_json("get", "replicasets", "-n", NS)["items"]
    for rs in replicasets:
        for condition in rs["status"].get("conditions", []):
            assert condition["type"] != "ReplicaFailure", condition


def test_crds_are_served(installed: LocalCluster) -> None:
    names = installed.kubectl("get", "crd", "-o", "name").stdout.split()
    for crd in PEAKWISE_CRDS + KOPF_CRDS:
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in names
    for crd in PEAKWISE_CRDS:
        status = installed.kubectl_json("get", "crd", crd)["status"]
        established = {c["type"]: c["status"] for c in status["conditions"]}
        assert established["Established"] == "True"
    resources = installed.kubectl("api-resources", "--api-group=peakwise.dev", "-o", "name")
    assert set(resources.stdout.split()) == set(PEAKWISE_CRDS)
    assert installed.kubectl("get", "inferencedeployments,costbudgets", "-A").returncode == 0
    assert installed.kubectl("get", "gpunodepools").returncode == 0


def test_peering_object_is_created_and_survives_an_upgrade(installed: LocalCluster) -> None:
    peering = installed.kubectl_json("get", "kopfpeering", "peakwise", "-n", "team-a")
    assert peering["kind"] == "KopfPeering"
    deployments = installed.kubectl_json("get", "deployments", "-n", NS_NS)["items"]
    priorities = sorted(
        arg
        for d in deployments
        for arg in d["spec"]["template"]["spec"]["containers"][0]["args"]
        if arg.startswith("--priority=")
    )
    assert priorities == ["--priority=100", "--priority=90"]
    installed.helm("upgrade", "pwns", str(CHART), "--namespace", NS_NS, "--reuse-values")
    installed.kubectl_json("get", "kopfpeering", "peakwise", "-n", "team-a")


# --- the operator's ServiceAccount: what it needs, and nothing more ----------------------

SA_CAN = [
    ("list", "inferencedeployments.peakwise.dev", "--all-namespaces"),
    ("watch", "inferencedeployments.peakwise.dev", "-n", "team-a"),
    ("patch", "inferencedeployments.peakwise.dev", "-n", "team-a"),
    ("patch", "inferencedeployments.peakwise.dev", "--subresource=status", "-n", "team-a"),
    ("update", "inferencedeployments.peakwise.dev", "--subresource=status", "-n", "team-a"),
    ("watch", "costbudgets.peakwise.dev", "--all-namespaces"),
    ("patch", "costbudgets.peakwise.dev", "--subresource=status", "-n", "team-b"),
    ("list", "gpunodepools.peakwise.dev"),
    ("patch", "gpunodepools.peakwise.dev"),
    ("update", "gpunodepools.peakwise.dev", "--subresource=status"),
    ("create", "deployments.apps", "-n", "team-a"),
    ("delete", "deployments.apps", "-n", "team-b"),
    ("watch", "pods", "-n", "team-a"),
    ("watch", "nodes"),
    ("create", "events", "-n", "team-a"),
    ("patch", "events.events.k8s.io", "-n", "default"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"),
]
SA_CANNOT = [
    ("delete", "costbudgets.peakwise.dev", "-n", "team-a"),
    ("create", "costbudgets.peakwise.dev", "-n", "team-a"),
    ("update", "costbudgets.peakwise.dev", "-n", "team-a"),
    ("delete", "inferencedeployments.peakwise.dev", "-n", "team-a"),
    ("create", "gpunodepools.peakwise.dev"),
    ("delete", "gpunodepools.peakwise.dev"),
    ("create", "nodes"),
    ("delete", "nodes"),
    ("get", "secrets", "-n", "team-a"),
    ("list", "secrets", "--all-namespaces"),
    ("get", "configmaps", "-n", "team-a"),
    ("create", "pods", "-n", "team-a"),
    ("delete", "pods", "-n", "team-a"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-n", "team-a"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
    ("impersonate", "serviceaccounts", "-n", NS),
]


@pytest.mark.parametrize("check", SA_CAN, ids=" ".join)
def test_operator_sa_can(installed: LocalCluster, check: tuple[str, ...]) -> None:
    assert can_i(installed, SA, *check)


@pytest.mark.parametrize("check", SA_CANNOT, ids=" ".join)
def test_operator_sa_cannot(installed: LocalCluster, check: tuple[str, ...]) -> None:
    assert not can_i(installed, SA, *check)


def test_watch_namespaces_and_kwok_change_what_the_sa_may_do(installed: LocalCluster) -> None:
    patch_infd = ("patch", "inferencedeployments.peakwise.dev")
    assert can_i(installed, SA_NS, *patch_infd, "-n", "team-a")
    assert can_i(installed, SA_NS, *patch_infd, "--subresource=status", "-n", "team-a")
    assert not can_i(installed, SA_NS, *patch_infd, "-n", "team-b")
    assert not can_i(installed, SA_NS, "list", "inferencedeployments.peakwise.dev", "-A")
    assert not can_i(installed, SA_NS, "create", "deployments.apps", "-n", "team-b")
    assert can_i(installed, SA_NS, "create", "deployments.apps", "-n", "team-a")
    assert can_i(installed, SA_NS, "create", "events", "-n", "default")
    assert not can_i(installed, SA_NS, "create", "events", "-n", "team-b")
    # cluster-scoped pools stay cluster-wide; kwok lets it manage Node objects
    assert can_i(installed, SA_NS, "patch", "gpunodepools.peakwise.dev")
    for verb in ("create", "patch", "delete"):
        assert can_i(installed, SA_NS, verb, "nodes")
    # namespaced peering in the watched namespace only
    assert can_i(installed, SA_NS, "patch", "kopfpeerings.kopf.dev", "-n", "team-a")
    assert not can_i(installed, SA_NS, "patch", "kopfpeerings.kopf.dev", "-n", "team-b")
    assert not can_i(installed, SA_NS, "patch", "clusterkopfpeerings.kopf.dev")


# --- people ----------------------------------------------------------------------------


def test_user_roles_keep_budgets_with_the_platform_team(installed: LocalCluster) -> None:
    kubectl = installed.kubectl
    kubectl(
        *("create", "rolebinding", "alice-app-team", "-n", "team-a"),
        *("--clusterrole=peakwise-app-team", "--user=alice"),
    )
    kubectl(
        *("create", "clusterrolebinding", "bob-platform-admin"),
        *("--clusterrole=peakwise-platform-admin", "--user=bob"),
    )
    kubectl(
        "create", "rolebinding", "carol-edit", "-n", "team-a", "--clusterrole=edit", "--user=carol"
    )
    kubectl(
        "create", "rolebinding", "dave-view", "-n", "team-a", "--clusterrole=view", "--user=dave"
    )
    try:
        infd, budget = "inferencedeployments.peakwise.dev", "costbudgets.peakwise.dev"
        # the application team: its deployments, not its budget
        assert can_i(installed, "alice", "create", infd, "-n", "team-a")
        assert can_i(installed, "alice", "update", infd, "--subresource=scale", "-n", "team-a")
        assert can_i(installed, "alice", "get", budget, "-n", "team-a")
        for verb in ("create", "update", "patch", "delete"):
            assert not can_i(installed, "alice", verb, budget, "-n", "team-a"), verb
        assert not can_i(installed, "alice", "patch", infd, "--subresource=status", "-n", "team-a")
        assert not can_i(installed, "alice", "create", infd, "-n", "team-b")
        # the platform team: budgets and pools everywhere, deployments read-only
        assert can_i(installed, "bob", "patch", budget, "-n", "team-a")
        assert can_i(installed, "bob", "create", "gpunodepools.peakwise.dev")
        assert can_i(installed, "bob", "list", infd, "-A")
        assert not can_i(installed, "bob", "create", infd, "-n", "team-a")
        # aggregation (by the controller manager, so poll): edit manages deployments, not
        # budgets; view reads
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            can_i(installed, "carol", "create", infd, "-n", "team-a")
            and can_i(installed, "dave", "list", budget, "-n", "team-a")
        ):
            time.sleep(0.5)
        assert can_i(installed, "carol", "create", infd, "-n", "team-a")
        assert not can_i(installed, "carol", "patch", budget, "-n", "team-a")
        assert can_i(installed, "dave", "list", budget, "-n", "team-a")
        assert can_i(installed, "dave", "get", infd, "-n", "team-a")
        assert not can_i(installed, "dave", "patch", infd, "-n", "team-a")
    finally:
        kubectl("delete", "clusterrolebinding", "bob-platform-admin", check=False)

"""Node-pool providers against the real API server of the local cluster.

* Cluster API: the real MachineDeployment CRD (from the ``sigs.k8s.io/cluster-api`` Go
  module) is installed, a MachineDeployment that passes its schema is created, and
  ``ClusterAPIProvider.set_nodes`` scales it through the scale subresource.
* Karpenter: the real NodePool CRD (``sigs.k8s.io/karpenter``); ``KarpenterProvider.set_nodes``
  sets ``spec.limits["nvidia.com/gpu"]`` (the plan plus ``headroomNodes``) and the schema
  accepts it.
* kwok: ``KwokProvider.set_nodes`` creates Nodes that kwok makes Ready, with the pool's labels,
  taints and GPUs, and removes the newest first.

The CRDs are read from the Go module cache at test time (tests/e2e/third_party_crds.py);
nothing of them is in the repository. Names here start with ``e2e-prov`` so they do not meet
the operator's end-to-end test (namespace e2e-op, pools e2e-od and e2e-spot).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import manifests
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e import third_party_crds
from e2e.clusterfix import LocalCluster
from e2e.polling import wait_for
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.labels import GPU_RESOURCE, POOL
from peakwise.operator.providers import (
    ClusterAPIProvider,
    KarpenterProvider,
    KwokProvider,
    ProviderError,
    clusterapi,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NS = "e2e-providers"
CAPI_GROUP = "cluster.x-k8s.io"
KARPENTER_GROUP, KARPENTER_VERSION = "karpenter.sh", "v1"


def _crd_exists(cluster: LocalCluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, check=False).returncode == 0


def _install_crd(cluster: LocalCluster, definition: dict[str, Any]) -> Iterator[None]:
    """Apply a third-party CRD; delete it afterwards only if this test brought it."""
    name = definition["metadata"]["name"]
    existed = _crd_exists(cluster, name)
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(definition)
    )
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    try:
        yield
    finally:
        if not existed:
            cluster.kubectl("delete", "crd", name, "--wait=true", "--timeout=60s", check=False)


@pytest.fixture(scope="module")
def peakwise_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture(scope="module")
def namespace(cluster: LocalCluster) -> Iterator[str]:
    cluster.kubectl("create", "namespace", NS, check=False)
    try:
        yield NS
    finally:
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def machine_deployment_crd(cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    yield from _with(cluster, third_party_crds.machine_deployment_crd())


@pytest.fixture(scope="module")
def nodepool_crd(cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    yield from _with(cluster, third_party_crds.nodepool_crd())


def _with(cluster: LocalCluster, definition: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for _ in _install_crd(cluster, definition):
        yield definition


def _gpu_pool(
    cluster: LocalCluster, name: str, provider: dict[str, Any], **spec: Any
) -> GPUNodePool:
    """Create the GPUNodePool in the cluster (our CRD's schema checks it) and parse it back."""
    body = manifests.pool(
        name, gpu="nvidia-h100-80gb", gpus_per_node=8, price=98.3, provider=provider, **spec
    )
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    return GPUNodePool.model_validate(cluster.kubectl_json("get", "gpunodepool", name))


def _delete_pool(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("delete", "gpunodepool", name, "--ignore-not-found", check=False)


# --- Cluster API ---------------------------------------------------------------------------


def _machine_deployment(name: str, version: str, replicas: int) -> dict[str, Any]:
    """A MachineDeployment as Cluster API v1.14 documents it (v1beta2 and v1beta1 shapes)."""
    labels = {"cluster.x-k8s.io/cluster-name": "e2e-prov", "peakwise.dev/md": name}
    if version == "v1beta1":
        infra: dict[str, Any] = {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1",
            "kind": "DockerMachineTemplate",
            "name": f"{name}-infra",
        }
    else:
        infra = {
            "apiGroup": "infrastructure.cluster.x-k8s.io",
            "kind": "DockerMachineTemplate",
            "name": f"{name}-infra",
        }
    return {
        "apiVersion": f"{CAPI_GROUP}/{version}",
        "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "clusterName": "e2e-prov",
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "clusterName": "e2e-prov",
                    "version": "v1.36.3",
                    "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                    "infrastructureRef": infra,
                },
            },
        },
    }


def test_cluster_api_provider_scales_machine_deployment(
    cluster: LocalCluster,
    peakwise_crds: None,
    namespace: str,
    machine_deployment_crd: dict[str, Any],
) -> None:
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    clusterapi.forget_version(api)
    version = clusterapi.served_version(api)
    # The provider speaks what the real CRD serves and stores (v1beta2 since Cluster API 1.11).
    assert version in third_party_crds.served_versions(machine_deployment_crd)
    assert version == third_party_crds.storage_version(machine_deployment_crd)
    assert version in clusterapi.KNOWN_VERSIONS

    name = "e2e-prov-md"
    custom.create_namespaced_custom_object(
        CAPI_GROUP, version, NS, "machinedeployments", _machine_deployment(name, version, 1)
    )
    try:
        pool = _gpu_pool(
            cluster, "e2e-prov-capi", {"clusterAPI": {"machineDeployment": name, "namespace": NS}}
        )
        provider = ClusterAPIProvider(api)
        for n in (4, 0, 2):
            assert provider.set_nodes(pool, n) == n
            scale = custom.get_namespaced_custom_object_scale(
                CAPI_GROUP, version, NS, "machinedeployments", name
            )
            # autoscaling/v1 Scale omits replicas when 0 (omitempty).
            assert scale["spec"].get("replicas", 0) == n
            assert scale["kind"] == "Scale"
            obj = custom.get_namespaced_custom_object(
                CAPI_GROUP, version, NS, "machinedeployments", name
            )
            assert obj["spec"]["replicas"] == n
            # The rest of the spec is untouched.
            assert obj["spec"]["template"]["spec"]["bootstrap"]["dataSecretName"] == (
                f"{name}-bootstrap"
            )
    finally:
        _delete_pool(cluster, "e2e-prov-capi")
        custom.delete_namespaced_custom_object(CAPI_GROUP, version, NS, "machinedeployments", name)


def test_cluster_api_schema_rejects_what_it_should(
    cluster: LocalCluster, namespace: str, machine_deployment_crd: dict[str, Any]
) -> None:
    """The installed CRD really validates: an object without clusterName is refused."""
    api = cluster.api_client()
    version = clusterapi.served_version(api)
    body = _machine_deployment("e2e-prov-bad", version, 1)
    del body["spec"]["clusterName"]
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            CAPI_GROUP, version, NS, "machinedeployments", body
        )
    assert refused.value.status == 422
    assert "clusterName" in str(refused.value.body)


def test_cluster_api_provider_missing_machine_deployment(
    cluster: LocalCluster,
    peakwise_crds: None,
    namespace: str,
    machine_deployment_crd: dict[str, Any],
) -> None:
    pool = _gpu_pool(
        cluster,
        "e2e-prov-capi-missing",
        {"clusterAPI": {"machineDeployment": "e2e-prov-nowhere", "namespace": NS}},
    )
    try:
        with pytest.raises(ProviderError) as error:
            ClusterAPIProvider(cluster.api_client()).set_nodes(pool, 3)
        message = str(error.value)
        assert f"MachineDeployment {NS}/e2e-prov-nowhere" in message
        assert "not found" in message
        assert "e2e-prov-capi-missing" in message
    finally:
        _delete_pool(cluster, "e2e-prov-capi-missing")


# --- Karpenter -----------------------------------------------------------------------------


def _nodepool(name: str) -> dict[str, Any]:
    """A Karpenter v1 NodePool as its documentation shows one (AWS node class reference)."""
    return {
        "apiVersion": f"{KARPENTER_GROUP}/{KARPENTER_VERSION}",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": {"peakwise.dev/pool": "e2e-prov-karpenter"}},
                "spec": {
                    "nodeClassRef": {
                        "group": "karpenter.k8s.aws",
                        "kind": "EC2NodeClass",
                        "name": "default",
                    },
                    "requirements": [
                        {
                            "key": "karpenter.sh/capacity-type",
                            "operator": "In",
                            "values": ["spot"],
                        },
                        {
                            "key": "node.kubernetes.io/instance-type",
                            "operator": "In",
                            "values": ["p5.48xlarge"],
                        },
                    ],
                    "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}],
                    "expireAfter": "720h",
                },
            },
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m"},
            "limits": {"cpu": "1000"},
        },
    }


def test_karpenter_provider_sets_gpu_limit(
    cluster: LocalCluster, peakwise_crds: None, nodepool_crd: dict[str, Any]
) -> None:
    assert KARPENTER_VERSION in third_party_crds.served_versions(nodepool_crd)
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    name = "e2e-prov-nodepool"
    custom.create_cluster_custom_object(
        KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", _nodepool(name)
    )
    try:
        pool = _gpu_pool(
            cluster,
            "e2e-prov-karpenter",
            {"karpenter": {"nodePool": name}},
            capacityType="spot",
        )
        provider = KarpenterProvider(api)
        for n in (3, 0, 5):
            assert provider.set_nodes(pool, n) == n
            obj = custom.get_cluster_custom_object(
                KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", name
            )
            # The plan plus one node of headroom (headroomNodes' default) for replacements.
            assert obj["spec"]["limits"][GPU_RESOURCE] == str((n + 1) * 8)
            assert obj["spec"]["limits"]["cpu"] == "1000"  # other limits are kept
            assert obj["spec"]["template"]["spec"]["nodeClassRef"]["name"] == "default"
        # The real schema is in force: a limit that is no quantity is refused.
        with pytest.raises(ApiException) as refused:
            custom.patch_cluster_custom_object(
                KARPENTER_GROUP,
                KARPENTER_VERSION,
                "nodepools",
                name,
                {"spec": {"limits": {GPU_RESOURCE: "plenty"}}},
            )
        assert refused.value.status == 422
    finally:
        _delete_pool(cluster, "e2e-prov-karpenter")
        custom.delete_cluster_custom_object(KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", name)


def test_karpenter_provider_missing_nodepool(
    cluster: LocalCluster, peakwise_crds: None, nodepool_crd: dict[str, Any]
) -> None:
    pool = _gpu_pool(cluster, "e2e-prov-karpenter-missing", {"karpenter": {"nodePool": "nowhere"}})
    try:
        with pytest.raises(ProviderError) as error:
            KarpenterProvider(cluster.api_client()).set_nodes(pool, 2)
        assert "NodePool nowhere" in str(error.value)
        assert "not found" in str(error.value)
    finally:
        _delete_pool(cluster, "e2e-prov-karpenter-missing")


# --- kwok ----------------------------------------------------------------------------------


def _pool_nodes(core: client.CoreV1Api, pool: str) -> dict[str, client.V1Node]:
    listed = core.list_node(label_selector=f"{POOL}={pool}").items
    return {
        n.metadata.name: n for n in listed if n.metadata and n.metadata.deletion_timestamp is None
    }


def _ready(node: client.V1Node) -> bool:
    for c in (node.status and node.status.conditions) or []:
        if c.type == "Ready":
            return bool(c.status == "True")
    return False


def test_kwok_provider_creates_ready_gpu_nodes_and_removes_newest_first(
    cluster: LocalCluster, peakwise_crds: None
) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)
    name = "e2e-prov-kwok"
    pool = _gpu_pool(
        cluster,
        name,
        {"kwok": {"nodeNamePrefix": "e2e-prov-kn"}},
        capacityType="spot",
        gpusPerNode=4,
        nodeLabels={"peakwise.dev/capacity-type": "spot", "e2e/zone": "z1"},
        nodeTaints=[{"key": "peakwise.dev/capacity-type", "value": "spot"}],
    )
    provider = KwokProvider(api)
    try:
        assert provider.set_nodes(pool, 3) == 3
        nodes = wait_for(
            "three Ready kwok nodes",
            lambda: (
                (n := _pool_nodes(core, name))
                and len(n) == 3
                and all(map(_ready, n.values()))
                and n
            ),
        )
        assert sorted(nodes) == ["e2e-prov-kn-0", "e2e-prov-kn-1", "e2e-prov-kn-2"]
        for node in nodes.values():
            labels = node.metadata.labels
            assert labels["peakwise.dev/capacity-type"] == "spot"
            assert labels["e2e/zone"] == "z1"
            assert labels[POOL] == name
            taints = [(t.key, t.value, t.effect) for t in node.spec.taints or []]
            assert ("peakwise.dev/capacity-type", "spot", "NoSchedule") in taints
            assert node.status.capacity[GPU_RESOURCE] == "4"
            assert node.status.allocatable[GPU_RESOURCE] == "4"

        # Idempotent: asking again for 3 changes nothing.
        assert provider.set_nodes(pool, 3) == 3
        assert sorted(_pool_nodes(core, name)) == sorted(nodes)

        # Down to one: the newest two go.
        assert provider.set_nodes(pool, 1) == 1
        wait_for("one node left", lambda: list(_pool_nodes(core, name)) == ["e2e-prov-kn-0"])

        # Up again: the freed name is reused, and kwok makes it Ready.
        assert provider.set_nodes(pool, 2) == 2
        wait_for(
            "two Ready nodes",
            lambda: (
                sorted(n := _pool_nodes(core, name)) == ["e2e-prov-kn-0", "e2e-prov-kn-1"]
                and all(map(_ready, n.values()))
            ),
        )

        assert provider.set_nodes(pool, 0) == 0
        wait_for("no nodes left", lambda: not _pool_nodes(core, name))
    finally:
        for node_name in _pool_nodes(core, name):
            core.delete_node(node_name)
        _delete_pool(cluster, name)

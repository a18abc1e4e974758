"""Cluster API: the pool's nodes are a MachineDeployment, scaled through its scale subresource.

Which API version: Cluster API v1.11 and later serve MachineDeployments as `v1beta2` (the
storage version) and still `v1beta1` (deprecated, to be removed); older releases serve only
`v1beta1`. Rather than pin one, the provider asks the API server's discovery (readable by
every authenticated user, no extra RBAC) for the versions of `cluster.x-k8s.io` in the
server's order of preference and uses the first that serves `machinedeployments/scale`: today
`v1beta2`, `v1beta1` on an old management cluster. The scale subresource is the same in both
(`spec.replicas`), so nothing else depends on the version. The choice is remembered per API
server and looked up again when a request answers 404 (e.g. Cluster API was upgraded).
"""

from __future__ import annotations

import threading

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import ClusterAPIProviderSpec, GPUNodePool
from peakwise.operator.providers.base import ProviderError, backend_call

GROUP, PLURAL, KIND = "cluster.x-k8s.io", "machinedeployments", "MachineDeployment"
KNOWN_VERSIONS = ("v1beta2", "v1beta1")
"""What the provider has been tested with (against Cluster API v1.14's CRD)."""

_versions: dict[str, str] = {}
_versions_lock = threading.Lock()


def _server(api_client: object) -> str:
    configuration = getattr(api_client, "configuration", None)
    return str(getattr(configuration, "host", "") or id(api_client))


def served_version(api_client: object) -> str:
    """The preferred version of cluster.x-k8s.io that serves machinedeployments/scale."""
    server = _server(api_client)
    with _versions_lock:
        if server in _versions:
            return _versions[server]
    try:
        groups = client.ApisApi(api_client).get_api_versions().groups or []
        group = next((g for g in groups if g.name == GROUP), None)
        if group is None:
            raise ProviderError(
                f"Cluster API is not installed: the API server serves no {GROUP} API group "
                f"(install Cluster API, or its {KIND} CRD)"
            )
        ordered = [group.preferred_version.version] if group.preferred_version else []
        ordered += [v.version for v in group.versions or [] if v.version not in ordered]
        custom = client.CustomObjectsApi(api_client)
        for version in ordered:
            resources = custom.get_api_resources(GROUP, version).resources or []
            if any(r.name == f"{PLURAL}/scale" for r in resources):
                with _versions_lock:
                    _versions[server] = version
                return version
    except ApiException as error:
        raise ProviderError(
            f"discovering the {GROUP} API versions failed: {error.status} {error.reason}"
        ) from error
    raise ProviderError(
        f"{GROUP} is served ({', '.join(ordered)}) but no version serves {PLURAL} with a "
        "scale subresource: is the MachineDeployment CRD installed?"
    )


def forget_version(api_client: object) -> None:
    with _versions_lock:
        _versions.pop(_server(api_client), None)


class ClusterAPIProvider:
    def __init__(self, api_client: object) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        ref = pool.spec.provider.cluster_api
        if ref is None:
            raise ProviderError(f"{pool.metadata.name}: provider.clusterAPI is not set")
        where = f"{KIND} {ref.namespace}/{ref.machine_deployment} (pool {pool.metadata.name})"
        with backend_call(
            "clusterAPI",
            f"scaling {where} to {nodes}",
            "patch",
            "machinedeployments/scale",
            ref.namespace,
            not_found=f"not found ({GROUP}): create it, or fix the pool's provider.clusterAPI "
            "name and namespace",
        ):
            try:
                self._scale(ref, served_version(self.api_client), nodes)
            except ApiException as error:
                if error.status != 404:
                    raise
                # The CRD may have changed versions (an upgrade): look again, once.
                forget_version(self.api_client)
                self._scale(ref, served_version(self.api_client), nodes)
        return nodes

    def _scale(self, ref: ClusterAPIProviderSpec, version: str, nodes: int) -> None:
        self.custom.patch_namespaced_custom_object_scale(
            GROUP,
            version,
            ref.namespace,
            PLURAL,
            ref.machine_deployment,
            {"spec": {"replicas": nodes}},
        )

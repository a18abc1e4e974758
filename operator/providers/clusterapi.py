"""Cluster API: the pool's nodes are a MachineDeployment, scaled through its scale subresource."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.providers.base import ProviderError

GROUP, VERSION, PLURAL = "cluster.x-k8s.io", "v1beta1", "machinedeployments"


class ClusterAPIProvider:
    def __init__(self, api_client: object) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        ref = pool.spec.provider.cluster_api
        if ref is None:
            raise ProviderError(f"{pool.metadata.name}: provider.clusterAPI is not set")
        try:
            self.custom.patch_namespaced_custom_object_scale(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                ref.machine_deployment,
                {"spec": {"replicas": nodes}},
            )
        except ApiException as error:
            raise ProviderError(
                f"MachineDeployment {ref.namespace}/{ref.machine_deployment}: "
                f"{error.status} {error.reason}"
            ) from error
        return nodes

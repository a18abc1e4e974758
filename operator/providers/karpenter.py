"""Karpenter: the pool is a NodePool; Peakwise bounds it through its nvidia.com/gpu limit.

Karpenter launches nodes for pending pods itself, so the pool's size follows the replicas
Peakwise schedules; the limit makes sure it never grows past the plan.
"""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.labels import GPU_RESOURCE
from peakwise.operator.providers.base import ProviderError

GROUP, VERSION, PLURAL = "karpenter.sh", "v1", "nodepools"


class KarpenterProvider:
    def __init__(self, api_client: object) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        ref = pool.spec.provider.karpenter
        if ref is None:
            raise ProviderError(f"{pool.metadata.name}: provider.karpenter is not set")
        limit = str(nodes * pool.spec.gpus_per_node)
        try:
            self.custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, ref.node_pool, {"spec": {"limits": {GPU_RESOURCE: limit}}}
            )
        except ApiException as error:
            raise ProviderError(
                f"Karpenter NodePool {ref.node_pool}: {error.status} {error.reason}"
            ) from error
        return nodes

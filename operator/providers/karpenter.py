"""Karpenter: the pool is a NodePool; Peakwise bounds it through its nvidia.com/gpu limit.

Karpenter launches nodes for pending pods itself, so the pool's size follows the replicas
Peakwise schedules; the limit makes sure it never grows past the plan.

Version: `karpenter.sh/v1`, the only version Karpenter's NodePool CRD has served since
Karpenter 1.0 (checked against v1.14's CRD by tests/e2e/test_providers.py). The limit is a
resource quantity string (`"16"`), as the CRD's `spec.limits` schema asks; a merge patch
touches only that key, so other limits (cpu, memory) the platform team set are kept.
"""

from __future__ import annotations

from kubernetes import client

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.labels import GPU_RESOURCE
from peakwise.operator.providers.base import ProviderError, backend_call

GROUP, VERSION, PLURAL = "karpenter.sh", "v1", "nodepools"


class KarpenterProvider:
    def __init__(self, api_client: object) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        ref = pool.spec.provider.karpenter
        if ref is None:
            raise ProviderError(f"{pool.metadata.name}: provider.karpenter is not set")
        limit = str(nodes * pool.spec.gpus_per_node)
        where = f"Karpenter NodePool {ref.node_pool} (pool {pool.metadata.name})"
        with backend_call(
            "karpenter",
            f"setting {where} limit {GPU_RESOURCE}={limit}",
            "patch",
            "nodepools.karpenter.sh",
            not_found=f"not found ({GROUP}/{VERSION}): is Karpenter installed and the pool's "
            "provider.karpenter.nodePool right?",
        ):
            self.custom.patch_cluster_custom_object(
                GROUP, VERSION, PLURAL, ref.node_pool, {"spec": {"limits": {GPU_RESOURCE: limit}}}
            )
        return nodes

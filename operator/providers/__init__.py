"""Node-pool backends behind one narrow interface: one file per backend, one switch here."""

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.providers.base import NodePoolProvider, ProviderError, ProviderForbiddenError
from peakwise.operator.providers.clusterapi import ClusterAPIProvider
from peakwise.operator.providers.karpenter import KarpenterProvider
from peakwise.operator.providers.kwok import KwokProvider

__all__ = [
    "ClusterAPIProvider",
    "KarpenterProvider",
    "KwokProvider",
    "NodePoolProvider",
    "ProviderError",
    "ProviderForbiddenError",
    "provider_for",
]


def provider_for(pool: GPUNodePool, api_client: object) -> NodePoolProvider:
    """The backend a pool's spec.provider names."""
    spec = pool.spec.provider
    if spec.kwok is not None:
        return KwokProvider(api_client)
    if spec.cluster_api is not None:
        return ClusterAPIProvider(api_client)
    return KarpenterProvider(api_client)

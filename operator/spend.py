"""What a namespace spends now: $/h of the replicas its children run, at their share of a node.

Pure: parsed objects and the child index in, a rate out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator.children import profile_for
from peakwise.operator.indexes import Key, children_of


def namespace_spend_rate(
    namespace: str,
    deployments: Mapping[Key, InferenceDeployment],
    pools: Mapping[str, GPUNodePool],
    child_index: Mapping[Any, Any],
) -> float:
    """$/h of the replicas running in the namespace, at their share of a node."""
    rate = 0.0
    for (ns, _), infd in deployments.items():
        if ns != namespace:
            continue
        for child in children_of(child_index, ns, infd.metadata.uid or ""):
            pool = pools.get(child["pool"])
            profile = profile_for(infd, pool) if pool else None
            if pool is None or profile is None or pool.spec.capacity_type == "reserved":
                continue
            slots = pool.spec.gpus_per_node // profile.gpus_per_replica
            rate += child["ready"] * pool.spec.price_per_node_hour / slots
    return rate

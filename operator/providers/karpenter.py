"""Karpenter: the pool is a NodePool; Peakwise bounds it through its nvidia.com/gpu limit.

Karpenter launches nodes for pending pods itself, so the pool's size follows the replicas
Peakwise schedules; the limit makes sure it never grows past the plan. The limit carries
`provider.karpenter.headroomNodes` (default 1) nodes' worth of GPUs above the plan: a limit
exactly at the plan blocks the replacement node Karpenter launches before draining one
(drift, expiry, consolidation), and a launch retried after a failure.

`mapping_problems` checks the NodePool against what the pool says (`GPUNodePool` status,
condition `NodePoolMapping`): one capacity type and one instance type, the pool's labels
and taints in its template, and no pool label that only exists after a node boots.

Version: `karpenter.sh/v1`, the only version Karpenter's NodePool CRD has served since
Karpenter 1.0 (checked against v1.14's CRD by tests/e2e/test_providers.py). The limit is a
resource quantity string (`"16"`), as the CRD's `spec.limits` schema asks; a merge patch
touches only that key, so other limits (cpu, memory) the platform team set are kept.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.labels import GPU_RESOURCE, POOL
from peakwise.operator.providers.base import ProviderError, backend_call

GROUP, VERSION, PLURAL = "karpenter.sh", "v1", "nodepools"


class KarpenterProvider:
    def __init__(self, api_client: object) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        ref = pool.spec.provider.karpenter
        if ref is None:
            raise ProviderError(f"{pool.metadata.name}: provider.karpenter is not set")
        limit = str((nodes + ref.headroom_nodes) * pool.spec.gpus_per_node)
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


CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
KARPENTER_CAPACITY_TYPES = {"spot": "spot", "onDemand": "on-demand", "reserved": "reserved"}
BOOT_TIME_PREFIXES = ("nvidia.com/", "feature.node.kubernetes.io/", "amd.com/")
"""Labels set by GPU feature discovery or node feature discovery once a node runs: a pod
selecting one is never launched a node for (Karpenter does not know the label will come)."""


def _single_values(requirements: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {
        str(r.get("key")): [str(v) for v in r.get("values") or []]
        for r in requirements
        if r.get("operator") == "In"
    }


def mapping_problems(pool: GPUNodePool, node_pool: dict[str, Any]) -> list[str]:
    """How the Karpenter NodePool differs from the mapping the GPUNodePool needs."""
    template = (node_pool.get("spec") or {}).get("template") or {}
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    spec = template.get("spec") or {}
    requirements = _single_values(list(spec.get("requirements") or []))
    problems = []
    want = KARPENTER_CAPACITY_TYPES[pool.spec.capacity_type]
    types = requirements.get(CAPACITY_TYPE_LABEL)
    if types != [want]:
        problems.append(
            f"requirements must pin {CAPACITY_TYPE_LABEL} In [{want}] (one capacity type per "
            f"pool), not {types or 'unset'}"
        )
    sizes = requirements.get(INSTANCE_TYPE_LABEL)
    if sizes is None or len(sizes) != 1:
        problems.append(
            f"requirements must pin one {INSTANCE_TYPE_LABEL} (gpusPerNode and the price are "
            f"per node of one size), not {sizes or 'unset'}"
        )
    carried = {**{k: v[0] for k, v in requirements.items() if len(v) == 1}, **labels}
    for key, value in {**pool.spec.node_labels, POOL: pool.metadata.name}.items():
        if key.startswith(BOOT_TIME_PREFIXES):
            problems.append(
                f"nodeLabels {key} exists only after a node boots (feature discovery): "
                "Karpenter launches no node for pods selecting it; select on a template label"
            )
        elif carried.get(key) != value:
            problems.append(f"template.metadata.labels must set {key}={value}")
    taints = {
        (t.get("key"), t.get("value") or "", t.get("effect")) for t in spec.get("taints") or []
    }
    for t in pool.spec.node_taints:
        if (t.key, t.value, t.effect) not in taints:
            problems.append(f"template.spec.taints must carry {t.key}={t.value}:{t.effect}")
    return problems


def check_mapping(pool: GPUNodePool, api_client: object) -> list[str]:
    """Read the pool's NodePool and check its mapping (raises ProviderError if unreadable)."""
    ref = pool.spec.provider.karpenter
    if ref is None:
        return []
    custom = client.CustomObjectsApi(api_client)
    with backend_call(
        "karpenter",
        f"reading Karpenter NodePool {ref.node_pool} (pool {pool.metadata.name})",
        "get",
        "nodepools.karpenter.sh",
        not_found=f"not found ({GROUP}/{VERSION}): is Karpenter installed and the pool's "
        "provider.karpenter.nodePool right?",
    ):
        body = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, ref.node_pool)
    return mapping_problems(pool, body if isinstance(body, dict) else {})

"""Simulated nodes for local clusters and tests: Node objects that kwok keeps Ready."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.labels import GPU_RESOURCE, MANAGED_BY, MANAGER, POOL
from peakwise.operator.providers.base import ProviderError, backend_call

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


def node_manifest(pool: GPUNodePool, name: str) -> dict[str, Any]:
    capacity = {
        "cpu": "96",
        "memory": "1Ti",
        "pods": "110",
        GPU_RESOURCE: str(pool.spec.gpus_per_node),
    }
    labels = {
        **pool.spec.node_labels,
        POOL: pool.metadata.name,
        MANAGED_BY: MANAGER,
        "kubernetes.io/hostname": name,
        "type": "kwok",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {
            "taints": [
                {"key": t.key, "value": t.value, "effect": t.effect} for t in pool.spec.node_taints
            ]
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class KwokProvider:
    """Creates and deletes simulated Nodes named `<prefix>-<n>`, newest deleted first."""

    def __init__(self, api_client: object) -> None:
        self.core = client.CoreV1Api(api_client)

    def _nodes(self, pool: GPUNodePool) -> list[str]:
        listed = self.core.list_node(label_selector=f"{POOL}={pool.metadata.name}")
        return [
            str(n.metadata.name)
            for n in listed.items
            if n.metadata is not None and n.metadata.deletion_timestamp is None
        ]

    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        prefix = pool.spec.provider.kwok.node_name_prefix if pool.spec.provider.kwok else ""
        prefix = prefix or pool.metadata.name
        what = f"kwok nodes of {pool.metadata.name}"

        def index(name: str) -> int:
            tail = name.rsplit("-", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        with backend_call("kwok", what, "list", "nodes"):
            existing = sorted(self._nodes(pool), key=index)
        if len(existing) < nodes:
            used = {index(n) for n in existing}
            free = (i for i in range(10**6) if i not in used)
            for _ in range(nodes - len(existing)):
                try:
                    with backend_call("kwok", what, "create", "nodes"):
                        self.core.create_node(node_manifest(pool, f"{prefix}-{next(free)}"))  # type: ignore[arg-type]
                except ProviderError as error:
                    if _conflict(error):  # created by a concurrent round: the next converges
                        return nodes
                    raise
        for name in reversed(existing[nodes:]):
            with backend_call("kwok", what, "delete", "nodes"):
                self.core.delete_node(name)
        return nodes


def _conflict(error: ProviderError) -> bool:
    cause = error.__cause__
    return isinstance(cause, ApiException) and cause.status == 409

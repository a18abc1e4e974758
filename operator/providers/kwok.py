"""Simulated nodes for local clusters and tests: Node objects that kwok keeps Ready."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.kube import forbidden
from peakwise.operator.labels import GPU_RESOURCE, MANAGED_BY, MANAGER, POOL
from peakwise.operator.providers.base import ProviderError, ProviderForbiddenError

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

    def __init__(self, api_client: object, on_delete: Callable[[str], None] | None = None) -> None:
        self.core = client.CoreV1Api(api_client)
        self.on_delete = on_delete

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

        def index(name: str) -> int:
            tail = name.rsplit("-", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        verb = "list"
        try:
            existing = sorted(self._nodes(pool), key=index)
            if len(existing) < nodes:
                verb = "create"
                used = {index(n) for n in existing}
                free = (i for i in range(10**6) if i not in used)
                for _ in range(nodes - len(existing)):
                    name = f"{prefix}-{next(free)}"
                    self.core.create_node(node_manifest(pool, name))  # type: ignore[arg-type]
            verb = "delete"
            for name in reversed(existing[nodes:]):
                if self.on_delete:
                    self.on_delete(name)  # a scale-down, not an interruption
                self.core.delete_node(name)
        except ApiException as error:
            if error.status == 409:  # created by a concurrent round: next round converges
                return nodes
            if error.status == 403:
                raise ProviderForbiddenError(
                    f"kwok nodes of {pool.metadata.name}: {forbidden(error, verb, 'nodes')}"
                ) from error
            raise ProviderError(f"kwok nodes of {pool.metadata.name}: {error.reason}") from error
        return nodes

"""The provider interface: how many nodes a pool should have. Nothing more.

Observing nodes is the same for every backend (Nodes carry the pool's labels), so it lives in
the Kubernetes adapter; a provider only turns "this pool should have N nodes" into whatever its
backend understands. Implementations are synchronous (the kubernetes client is); the operator
runs them in a thread.
"""

from __future__ import annotations

from typing import Protocol

from peakwise.api.gpunodepool import GPUNodePool


class ProviderError(RuntimeError):
    """The backend refused or failed; the message says what to fix."""


class ProviderForbiddenError(ProviderError):
    """The API server answered 403: the operator's RBAC lacks the permission the message
    names (verb, resource, namespace). Reported as such in the pool's status."""


class NodePoolProvider(Protocol):
    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        """Ask the backend for `nodes` nodes in `pool`; return how many it now asks for."""
        ...

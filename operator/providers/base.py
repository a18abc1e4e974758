"""The provider interface: how many nodes a pool should have. Nothing more.

Observing nodes is the same for every backend (Nodes carry the pool's labels), so it lives in
the operator's watches; a provider only turns "this pool should have N nodes" into whatever
its backend understands. Implementations are synchronous (the kubernetes client is); the
operator runs them in a thread.

Every call to a backend goes through `backend_call`, which turns the API server's answer into
a `ProviderError` (or `ProviderForbiddenError` for a 403) worded the same way for every
backend, and counts the call in `peakwise_provider_requests_total`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from kubernetes.client.exceptions import ApiException

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.operator.kube import forbidden, server_message
from peakwise.operator.metrics import provider_requests


class ProviderError(RuntimeError):
    """The backend refused or failed; the message says what to fix."""


class ProviderForbiddenError(ProviderError):
    """The API server answered 403: the operator's RBAC lacks the permission the message
    names (verb, resource, namespace). Reported as such in the pool's status."""


class NodePoolProvider(Protocol):
    def set_nodes(self, pool: GPUNodePool, nodes: int) -> int:
        """Ask the backend for `nodes` nodes in `pool`; return how many it now asks for."""
        ...


@contextmanager
def backend_call(
    provider: str,
    what: str,
    verb: str,
    resource: str,
    namespace: str | None = None,
    not_found: str = "",
) -> Iterator[None]:
    """Run one backend request: `what` says what it does ("scaling MachineDeployment x/y"),
    `verb` and `resource` what RBAC it needs, `not_found` what a 404 means to the user."""
    try:
        yield
    except ApiException as error:
        provider_requests.labels(provider, str(error.status)).inc()
        if error.status == 403:
            raise ProviderForbiddenError(
                f"{what}: {forbidden(error, verb, resource, namespace)}"
            ) from error
        if error.status == 404 and not_found:
            raise ProviderError(f"{what}: {not_found}") from error
        detail = server_message(error)
        raise ProviderError(
            f"{what}: {error.status} {error.reason}" + (f": {detail}" if detail else "")
        ) from error
    provider_requests.labels(provider, "ok").inc()

"""Reading a cluster's Peakwise objects through the kubeconfig, as the operator sees them.

``read_fleet_objects`` lists every InferenceDeployment, GPUNodePool and CostBudget (all
namespaces, or the ones given) and returns them as the API server sends them, status
included (a pool's observed interruption rate feeds the backtest and the advice). It only
reads: list permission on the three resources is all it needs.

Credentials: the kubeconfig given, else ``$KUBECONFIG`` or ``~/.kube/config``; inside a pod
(no kubeconfig given and the service environment set), its ServiceAccount.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "peakwise.dev", "v1alpha1"
RESOURCES = (
    ("gpunodepools", "GPUNodePool", False),
    ("inferencedeployments", "InferenceDeployment", True),
    ("costbudgets", "CostBudget", True),
)
"""(plural, kind, namespaced) of what a fleet backtest reads."""
PAGE = 500


class ClusterReadError(RuntimeError):
    """The cluster's objects could not be read; the message says why, fit to show as is."""


def _api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    try:
        made: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except (config.ConfigException, OSError) as error:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterReadError(f"cannot load the kubeconfig {where}: {error}") from None
    return made


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", ""))[:300] or str(error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


def _list(api: client.CustomObjectsApi, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": PAGE}
        if token:
            kwargs["_continue"] = token
        if namespace is None:
            answer = api.list_cluster_custom_object(GROUP, VERSION, plural, **kwargs)
        else:
            answer = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, **kwargs)
        page: dict[str, Any] = answer if isinstance(answer, dict) else {}
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def read_fleet_objects(
    kubeconfig: str | None = None,
    context: str | None = None,
    namespaces: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every GPUNodePool, and the InferenceDeployments and CostBudgets of `namespaces` (all
    namespaces when empty), as plain dicts with their kind and apiVersion."""
    api_client = _api_client(kubeconfig, context)
    custom = client.CustomObjectsApi(api_client)
    objects: list[dict[str, Any]] = []
    try:
        for plural, kind, namespaced in RESOURCES:
            scopes: Sequence[str | None] = list(namespaces) if namespaced and namespaces else [None]
            for scope in scopes:
                try:
                    found = _list(custom, plural, scope)
                except ApiException as error:
                    where = f"in namespace {scope}" if scope else "in the cluster"
                    if error.status == 404:
                        raise ClusterReadError(
                            f"the API server has no {plural}.{GROUP} {where}: are the Peakwise "
                            "CRDs installed (kubectl apply -f crds/)?"
                        ) from None
                    if error.status in (401, 403):
                        raise ClusterReadError(
                            f"not allowed to list {plural}.{GROUP} {where} "
                            f"(HTTP {error.status}): {_message(error)}"
                        ) from None
                    raise ClusterReadError(
                        f"listing {plural}.{GROUP} {where} failed (HTTP {error.status}): "
                        f"{_message(error)}"
                    ) from None
                for item in found:
                    item.setdefault("kind", kind)
                    item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
                    objects.append(item)
    except ClusterReadError:
        raise
    except Exception as error:  # the client's transport errors (connection refused, TLS)
        host = api_client.configuration.host
        raise ClusterReadError(
            f"cannot reach the API server at {host}: {type(error).__name__}"
        ) from None
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
    return objects

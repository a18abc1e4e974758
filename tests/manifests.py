"""The Peakwise objects tests build, written once: plain dicts as `kubectl apply` takes them.

Each builder gives a small valid object; keyword arguments override or add spec fields
(`deployment("chat", replicas={"min": 2, "max": 8})`), nested dicts replacing whole fields.
"""

from __future__ import annotations

from typing import Any

from peakwise.api.inferencedeployment import InferenceDeploymentSpec

API_VERSION = "peakwise.dev/v1alpha1"


def deployment(
    name: str,
    namespace: str = "default",
    *,
    mode: str = "Enforce",
    query: str = "demand",
    gpu: str = "g",
    throughput: float = 4,
    image: str = "server:1",
    **spec: Any,
) -> dict[str, Any]:
    """An InferenceDeployment: one container, one GPU profile, a demand query."""
    body: dict[str, Any] = {
        "mode": mode,
        "template": {"spec": {"containers": [{"name": "server", "image": image}]}},
        "gpuProfiles": [{"gpuType": gpu, "gpusPerReplica": 1, "throughputPerReplica": throughput}],
        "demand": {"query": query},
        "replicas": {"min": 1, "max": 4},
        "forecast": {"history": "1d"},
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def deployment_spec(**fields: Any) -> InferenceDeploymentSpec:
    """The spec of `deployment(...)`, parsed (for unit tests of the forecasting glue)."""
    return InferenceDeploymentSpec.model_validate(deployment("x", **fields)["spec"])


def pool(
    name: str,
    capacity_type: str = "onDemand",
    *,
    gpu: str = "g",
    gpus_per_node: int = 4,
    price: float = 10.0,
    max_nodes: int = 10,
    provider: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A GPUNodePool, kwok-backed unless `provider` says otherwise."""
    body: dict[str, Any] = {
        "gpuType": gpu,
        "gpusPerNode": gpus_per_node,
        "capacityType": capacity_type,
        "pricePerNodeHour": price,
        "maxNodes": max_nodes,
        "provider": provider if provider is not None else {"kwok": {}},
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "GPUNodePool",
        "metadata": {"name": name},
        "spec": body,
    }


def budget(
    namespace: str,
    name: str = "cap",
    *,
    hourly: float | None = None,
    monthly: float | None = None,
    enforcement: str = "Hard",
    **spec: Any,
) -> dict[str, Any]:
    """A CostBudget with the given limits."""
    limits = {k: v for k, v in (("hourly", hourly), ("monthly", monthly)) if v is not None}
    return {
        "apiVersion": API_VERSION,
        "kind": "CostBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"limits": limits, "enforcement": enforcement, **spec},
    }

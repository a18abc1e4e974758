"""The in-memory view every round plans from: kopf indexes fed by the watches.

Each index function turns one watched object into the few fields a round needs; `snapshot`
turns the indexes into the plain mappings a round starts from. Child Deployments are found
by their controller owner's UID (an InferenceDeployment's), never by labels alone: a
Deployment a team labels like a child is not taken for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peakwise.operator.children import owned_view
from peakwise.operator.labels import POOL
from peakwise.operator.status import PoolObservation
from peakwise.operator.template_policy import pod_gpus

Key = tuple[str, str]
"""(namespace, name) of an InferenceDeployment."""
Body = Mapping[str, Any]

NAMES = ("infd_index", "pool_index", "budget_index", "child_index", "node_index", "pod_index")
"""The kopf indexes every round reads; kopf passes them to handlers by these names."""


def infd_index(body: Body, namespace: str, name: str, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


def pool_index(body: Body, name: str, **_: Any) -> Any:
    return {name: dict(body)}


def budget_index(body: Body, namespace: str, **_: Any) -> Any:
    # Keyed by namespace: the round sees every CostBudget of a namespace and picks the one
    # in force (several are reported, not silently resolved).
    return {namespace: dict(body)}


def controller_uid(body: Body) -> str | None:
    """The UID of the InferenceDeployment that controls this Deployment, if one does."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == "InferenceDeployment"
            and str(ref.get("apiVersion", "")).startswith("peakwise.dev/")
        ):
            return str(ref.get("uid"))
    return None


def child_index(body: Body, namespace: str, name: str, labels: Mapping[str, str], **_: Any) -> Any:
    owner = controller_uid(body)
    if owner is None:
        return None  # labelled like a child, but no InferenceDeployment controls it
    return {
        (namespace, owner): {
            "name": name,
            "pool": labels[POOL],
            "replicas": (body.get("spec") or {}).get("replicas", 0),
            "ready": (body.get("status") or {}).get("readyReplicas", 0) or 0,
            "generation": (body.get("metadata") or {}).get("generation"),
            # What the operator sets, to compare with the plan without a GET per round.
            "live": owned_view(body),
        }
    }


def node_ready(status: Mapping[str, Any]) -> bool:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def node_index(body: Body, name: str, labels: Mapping[str, str], **_: Any) -> Any:
    status = body.get("status") or {}
    allocatable = status.get("allocatable") or {}
    return {
        labels[POOL]: {
            "name": name,
            "ready": node_ready(status),
            "gpus": int(allocatable.get("nvidia.com/gpu", 0) or 0),
        }
    }


def pod_index(body: Body, namespace: str, **_: Any) -> Any:
    """The GPUs a pod holds on its node, for billing: every pod bound to a node and not
    finished counts, Ready or not, whoever created it."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    node = spec.get("nodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed"):
        return None
    gpus = pod_gpus(spec)
    return {node: (namespace, gpus)} if gpus else None


# --- what a round starts from ----------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the indexes held when a round started (plain dicts, as kopf gives them)."""

    deployments: Mapping[Key, Body]
    pools: Mapping[str, Body]
    budgets: Mapping[str, tuple[Body, ...]]
    children: Mapping[Key, Mapping[str, int]]
    """Replicas per pool asked of each deployment's children (their spec.replicas)."""
    pool_nodes: Mapping[str, PoolObservation]
    scheduled_gpus: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Per pool, per namespace: GPUs its pods hold on the pool's nodes (for billing)."""
    pool_node_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The names of each pool's nodes (OpenCost prices are per node)."""


def _first(store: Any) -> Any:
    return next(iter(store), None)


def uid_of(body: Body) -> str:
    return str((body.get("metadata") or {}).get("uid", ""))


def pool_observation(node_store: Mapping[Any, Any], pool: str) -> PoolObservation:
    nodes = list(node_store.get(pool, []))
    return PoolObservation(
        nodes=len(nodes),
        ready_nodes=sum(1 for n in nodes if n["ready"]),
        allocatable_gpus=sum(n["gpus"] for n in nodes if n["ready"]),
    )


def children_of(child_store: Mapping[Any, Any], namespace: str, uid: str) -> list[dict[str, Any]]:
    """The live children of the InferenceDeployment with this UID (a copy: the store changes
    under a handler that awaits)."""
    return list(child_store.get((namespace, uid), []))


def snapshot(indexes: Mapping[str, Mapping[Any, Any]]) -> Snapshot:
    deployments = {k: _first(v) for k, v in indexes["infd_index"].items()}
    children: dict[Key, dict[str, int]] = {}
    for key, body in deployments.items():
        for child in children_of(indexes["child_index"], key[0], uid_of(body)):
            children.setdefault(key, {})[child["pool"]] = child["replicas"]
    node_store = indexes["node_index"]
    return Snapshot(
        deployments=deployments,
        pools={k: _first(v) for k, v in indexes["pool_index"].items()},
        budgets={k: tuple(v) for k, v in indexes["budget_index"].items()},
        children=children,
        pool_nodes={pool: pool_observation(node_store, pool) for pool in node_store},
        scheduled_gpus=scheduled_gpus(node_store, indexes.get("pod_index", {})),
        pool_node_names={
            pool: tuple(sorted(n["name"] for n in node_store.get(pool, []))) for pool in node_store
        },
    )


def scheduled_gpus(
    node_store: Mapping[Any, Any], pod_store: Mapping[Any, Any]
) -> dict[str, dict[str, int]]:
    """Per pool, per namespace: the GPUs held by pods bound to the pool's nodes."""
    pool_of = {n["name"]: pool for pool, nodes in node_store.items() for n in nodes}
    out: dict[str, dict[str, int]] = {}
    for node, pods in pod_store.items():
        pool = pool_of.get(node)
        if pool is None:
            continue
        for namespace, gpus in pods:
            held = out.setdefault(pool, {})
            held[namespace] = held.get(namespace, 0) + gpus
    return out

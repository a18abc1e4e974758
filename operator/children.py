"""The child Deployments of an InferenceDeployment: one per GPU pool the plan uses.

Pure: manifests in, manifests out. The Kubernetes adapter applies them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import GPUProfile, InferenceDeployment
from peakwise.operator.labels import (
    GPU_RESOURCE,
    INFERENCE_DEPLOYMENT,
    MANAGED_BY,
    MANAGER,
    POOL,
)
from peakwise.operator.template_policy import (
    TemplatePolicy,
    TemplateRejectedError,
    check_template,
    pod_gpus,
)

Manifest = dict[str, Any]
DEFAULT_POLICY = TemplatePolicy()


def child_name(parent: str, pool: str) -> str:
    """`<parent>-<pool>`, shortened with a hash when over the 63-character label limit."""
    name = f"{parent}-{pool}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-.')}-{digest}"


def selector_labels(parent: str, pool: str | None = None) -> dict[str, str]:
    labels = {INFERENCE_DEPLOYMENT: parent}
    if pool is not None:
        labels[POOL] = pool
    return labels


def profile_for(infd: InferenceDeployment, pool: GPUNodePool) -> GPUProfile | None:
    """The GPU profile a replica uses on this pool: the most throughput per GPU that fits."""
    fitting = [
        p
        for p in infd.spec.gpu_profiles
        if p.gpu_type == pool.spec.gpu_type and p.gpus_per_replica <= pool.spec.gpus_per_node
    ]
    if not fitting:
        return None
    return max(
        fitting, key=lambda p: (p.throughput_per_replica / p.gpus_per_replica, -p.gpus_per_replica)
    )


def child_deployment(
    infd: InferenceDeployment,
    uid: str,
    pool: GPUNodePool,
    replicas: int,
    policy: TemplatePolicy = DEFAULT_POLICY,
) -> Manifest:
    """The Deployment running `replicas` of the model server on `pool`.

    Raises TemplateRejectedError when the template asks for what the policy forbids: the
    operator never creates for a team a pod the team could not create itself.
    """
    if infd.spec.template is None:
        raise ValueError(f"{infd.metadata.name} has a targetRef: it runs no children")
    review = check_template(infd.spec.template, policy)
    if not review.allowed:
        raise TemplateRejectedError(review)
    profile = profile_for(infd, pool)
    if profile is None:
        raise ValueError(f"pool {pool.metadata.name} offers no GPU type of {infd.metadata.name}")
    parent, pool_name = infd.metadata.name, pool.metadata.name
    labels = {MANAGED_BY: MANAGER, **selector_labels(parent, pool_name)}
    template: Manifest = copy.deepcopy(infd.spec.template)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**meta.get("labels", {}), **labels}
    pod = template.setdefault("spec", {})
    node_selector = {**pod.get("nodeSelector", {}), **pool.spec.node_labels, POOL: pool_name}
    pod["nodeSelector"] = node_selector
    tolerations = list(pod.get("tolerations", []))
    for taint in pool.spec.node_taints:
        toleration = {
            "key": taint.key,
            "operator": "Equal",
            "value": taint.value,
            "effect": taint.effect,
        }
        if toleration not in tolerations:
            tolerations.append(toleration)
    if tolerations:
        pod["tolerations"] = tolerations
    containers = pod.get("containers") or []
    if not containers:
        raise ValueError(f"{parent}: spec.template.spec.containers is empty")
    # The first container is the model server: it gets the profile's GPUs, and no other
    # container has any (the policy rejects accelerators in templates).
    resources = containers[0].setdefault("resources", {})
    gpus = str(profile.gpus_per_replica)
    resources.setdefault("limits", {})[GPU_RESOURCE] = gpus
    resources.setdefault("requests", {})[GPU_RESOURCE] = gpus
    if pod_gpus(pod) != profile.gpus_per_replica:  # what the planner planned and charges
        raise ValueError(f"{parent}: the pod would hold {pod_gpus(pod)} GPUs, not {gpus}")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(parent, pool_name),
            "namespace": infd.metadata.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "peakwise.dev/v1alpha1",
                    "kind": "InferenceDeployment",
                    "name": parent,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(parent, pool_name)},
            "template": template,
        },
    }


# --- Is the live child what the plan wants? -----------------------------------------------
# The operator server-side applies its children, so only the fields it sets are its own;
# fields the API server defaults (or other managers add) are never compared, or a child
# would look changed on every round and be re-applied for nothing.

TEMPLATE_HASH = "peakwise.dev/template-hash"


def template_hash(manifest: Manifest) -> str:
    """A digest of everything the operator sets except `spec.replicas` (which changes on its
    own), kept on the child so that a field removed from the parent is noticed too."""
    spec = {k: v for k, v in manifest["spec"].items() if k != "replicas"}
    body = {"metadata": {k: manifest["metadata"].get(k) for k in ("labels", "ownerReferences")}}
    return hashlib.sha256(json.dumps([spec, body], sort_keys=True).encode()).hexdigest()[:16]


def with_template_hash(manifest: Manifest) -> Manifest:
    manifest["metadata"]["annotations"] = {TEMPLATE_HASH: template_hash(manifest)}
    return manifest


def owned_view(body: Mapping[str, Any]) -> Manifest:
    """The parts of a live Deployment the operator may set (what the child index keeps)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return {
        "metadata": {
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k == TEMPLATE_HASH
            },
            "ownerReferences": list(meta.get("ownerReferences") or []),
        },
        "spec": {k: spec[k] for k in ("replicas", "selector", "template") if k in spec},
    }


def drift(desired: Any, live: Any, path: str = "") -> list[str]:
    """Where `live` differs from `desired` in the fields `desired` sets (dotted paths).

    Lists of objects with a `name` (containers, env, volumes) are matched by name, as server-side
    apply merges them; other lists (tolerations, args) must be equal item by item.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."]
        out: list[str] = []
        for key, value in desired.items():
            if key not in live:
                if value not in (None, {}, []):
                    out.append(f"{path}.{key}")
                continue
            out += drift(value, live[key], f"{path}.{key}")
        return out
    if isinstance(desired, list):
        if not isinstance(live, list):
            return [path]
        if desired and all(isinstance(d, Mapping) and "name" in d for d in desired):
            by_name = {i.get("name"): i for i in live if isinstance(i, Mapping)}
            out = []
            for item in desired:
                found = by_name.get(item["name"])
                where = f"{path}[{item['name']}]"
                out += [where] if found is None else drift(item, found, where)
            return out
        if len(desired) != len(live):
            return [path]
        out = []
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            out += drift(d, v, f"{path}[{i}]")
        return out
    return [] if desired == live else [path]


def needs_apply(
    desired: Manifest,
    live: Manifest | None,
    live_generation: int | None,
    applied: tuple[str, int] | None,
) -> str:
    """Why the child must be (re-)applied, or '' when it already is what the plan wants.

    `applied` is (template hash, generation) of this process's last apply of the child: when
    only `spec` fields differ and nobody changed the spec since (same generation), the
    difference is the API server's normalisation (e.g. a quantity "0.5" stored as "500m"),
    not an edit, and re-applying would change nothing.
    """
    if live is None:
        return "missing"
    paths = drift(owned_view(desired), live)
    if not paths:
        return ""
    spec_only = all(p.startswith(".spec.") for p in paths)
    unchanged = (
        applied is not None
        and live_generation is not None
        and applied == (template_hash(desired), live_generation)
        and live["spec"].get("replicas") == desired["spec"]["replicas"]
    )
    if spec_only and unchanged:
        return ""
    return "differs at " + ", ".join(paths[:5])

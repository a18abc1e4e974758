"""The child Deployments of an InferenceDeployment: one per GPU pool the plan uses.

Pure: manifests in, manifests out. The Kubernetes adapter applies them.
"""

from __future__ import annotations

import copy
import hashlib
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

Manifest = dict[str, Any]


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
    infd: InferenceDeployment, uid: str, pool: GPUNodePool, replicas: int
) -> Manifest:
    """The Deployment running `replicas` of the model server on `pool`."""
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
    # The first container is the model server: it gets the profile's GPUs.
    resources = containers[0].setdefault("resources", {})
    gpus = str(profile.gpus_per_replica)
    resources.setdefault("limits", {})[GPU_RESOURCE] = gpus
    resources.setdefault("requests", {})[GPU_RESOURCE] = gpus
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

"""targetRef: an existing Deployment, StatefulSet or LeaderWorkerSet that Peakwise right-sizes.

Pure: the workload and the autoscalers as the API server returned them in, what Peakwise
needs to plan and report out. The Kubernetes adapter (`kube.py`) reads them and writes the
scale subresource; the controller reads every target once per round.

- **Group size.** A LeaderWorkerSet replica is a group of `leaderWorkerTemplate.size` pods.
  `gpuProfiles[].gpusPerReplica` says what one pod holds, so the planner is given a replica
  of `size x gpusPerReplica` GPUs (`planning_spec`): nodes and cost count the whole group.
- **Ownership.** An HPA or a KEDA ScaledObject whose scaleTargetRef names the same workload
  owns its replicas: Peakwise reports it (status, condition, Event) and does not write
  `/scale`; the node pools are still sized for the plan, so an autoscaler following
  `peakwise_service_desired_replicas` finds the nodes there.
- **Placement.** One workload, several pools: its pods must be allowed onto every pool the
  plan may use (node selector or required node affinity matching the pool's labels,
  tolerations for its taints). `placement_problems` says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import (
    InferenceDeployment,
    InferenceDeploymentSpec,
    TargetRef,
)
from peakwise.operator.labels import GPU_RESOURCE, POOL

Body = Mapping[str, Any]
KEDA_GROUP, KEDA_VERSION = "keda.sh", "v1alpha1"
LWS_GROUP, LWS_VERSION = "leaderworkerset.x-k8s.io", "v1"


@dataclass(frozen=True)
class TargetObservation:
    """A targetRef's workload as read this round."""

    kind: str
    name: str
    found: bool
    problem: str = ""
    """Why it could not be read (missing, forbidden), for the TargetFound condition."""
    replicas: int | None = None
    """spec.replicas."""
    ready_replicas: int = 0
    group_size: int = 1
    group_gpus: int = 0
    """GPUs one replica's pods request, from the workload's pod templates."""
    pod_specs: tuple[Body, ...] = ()
    """The pod specs its replicas run (a LeaderWorkerSet: leader and worker)."""
    scaled_by: tuple[str, ...] = ()
    """Autoscalers scaling the same workload ("HorizontalPodAutoscaler name", ...)."""
    autoscaler_problem: str = ""
    """Why autoscalers could not be listed, if they could not."""


def _gpus(pod_spec: Body) -> int:
    total = 0
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU_RESOURCE) or (
            resources.get("requests") or {}
        ).get(GPU_RESOURCE)
        try:
            total += int(str(amount)) if amount is not None else 0
        except ValueError:
            continue
    return total


def observe_workload(ref: TargetRef, body: Body) -> TargetObservation:
    """What Peakwise needs of the workload `body` (a Deployment, StatefulSet or LWS)."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    replicas = spec.get("replicas")
    ready = int(status.get("readyReplicas") or 0)
    if ref.kind == "LeaderWorkerSet":
        group = spec.get("leaderWorkerTemplate") or {}
        size = max(1, int(group.get("size") or 1))
        worker = (group.get("workerTemplate") or {}).get("spec") or {}
        leader = (group.get("leaderTemplate") or {}).get("spec") or worker
        pods: tuple[Body, ...] = (leader, worker) if leader is not worker else (worker,)
        gpus = _gpus(leader) + (size - 1) * _gpus(worker)
    else:
        size = 1
        pod = (spec.get("template") or {}).get("spec") or {}
        pods, gpus = (pod,), _gpus(pod)
    return TargetObservation(
        kind=ref.kind,
        name=ref.name,
        found=True,
        replicas=int(replicas) if replicas is not None else 1,
        ready_replicas=ready,
        group_size=size,
        group_gpus=gpus,
        pod_specs=pods,
    )


def _names_target(scale_target: Body, ref: TargetRef, default_kind: str = "") -> bool:
    kind = scale_target.get("kind") or default_kind
    api_version = scale_target.get("apiVersion") or (
        "apps/v1" if kind in ("Deployment", "StatefulSet") else ""
    )
    group = api_version.split("/")[0] if "/" in api_version else ""
    return bool(
        scale_target.get("name") == ref.name
        and kind == ref.kind
        and group == (ref.api_version.split("/")[0] if "/" in ref.api_version else "")
    )


def autoscalers_of(
    ref: TargetRef, hpas: Sequence[Body], scaled_objects: Sequence[Body]
) -> list[str]:
    """The HPAs and ScaledObjects scaling `ref`. An HPA that a ScaledObject made (KEDA owns
    one per ScaledObject) is reported as its ScaledObject."""
    found = []
    for so in scaled_objects:
        target = (so.get("spec") or {}).get("scaleTargetRef") or {}
        if _names_target(target, ref, default_kind="Deployment"):
            found.append(f"ScaledObject {(so.get('metadata') or {}).get('name', '')}")
    for hpa in hpas:
        meta = hpa.get("metadata") or {}
        if any(o.get("kind") == "ScaledObject" for o in meta.get("ownerReferences") or []):
            continue
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if _names_target(target, ref):
            found.append(f"HorizontalPodAutoscaler {meta.get('name', '')}")
    return found


def planning_spec(
    spec: InferenceDeploymentSpec, group_size: int = 1, hold: int | None = None
) -> InferenceDeploymentSpec:
    """The spec the planner sees: a replica of a group of `group_size` pods holds the GPUs of
    every pod (gpusPerReplica is one pod's); with `hold` (a suspended service) exactly that
    many replicas, whatever the forecast (a Hard budget still applies)."""
    update: dict[str, Any] = {}
    if group_size > 1:
        update["gpu_profiles"] = [
            p.model_copy(update={"gpus_per_replica": p.gpus_per_replica * group_size})
            for p in spec.gpu_profiles
        ]
    if hold is not None:
        hold = min(hold, 10000)
        update["replicas"] = spec.replicas.model_copy(
            update={"min": hold, "max": max(hold, 1), "floor": None}
        )
        update["capacity"] = spec.capacity.model_copy(
            update={
                "on_demand": spec.capacity.on_demand.model_copy(
                    update={"min_replicas": min(spec.capacity.on_demand.min_replicas, hold)}
                )
            }
        )
    return spec.model_copy(update=update) if update else spec


def usable_pools(infd: InferenceDeployment, pools: Mapping[str, GPUNodePool]) -> list[str]:
    """Pools with a GPU type of the service's profiles, the never-interrupted ones first."""
    types = {p.gpu_type for p in infd.spec.gpu_profiles}
    order = {"reserved": 0, "onDemand": 1, "spot": 2}
    usable = [n for n, p in pools.items() if p.spec.gpu_type in types]
    return sorted(usable, key=lambda n: (order[pools[n].spec.capacity_type], n))


def target_current(
    infd: InferenceDeployment,
    observed: TargetObservation | None,
    pools: Mapping[str, GPUNodePool],
) -> dict[str, int]:
    """The replicas a target runs now, per pool: its spec.replicas spread as the last plan
    placed them (status.pools), the rest on the first usable pool (never-interrupted first).
    Which pool a pod really landed on does not matter to the plan: what it holds does."""
    if observed is None or not observed.found or not observed.replicas:
        return {}
    left = observed.replicas
    out: dict[str, int] = {}
    last = infd.status.pools if infd.status else []
    for row in last:
        if row.pool in pools and row.desired_replicas > 0 and left > 0:
            take = min(row.desired_replicas, left)
            out[row.pool] = take
            left -= take
    usable = usable_pools(infd, pools)
    if left > 0 and usable:
        first = next((n for n in out if n in usable), usable[0])
        out[first] = out.get(first, 0) + left
    return out


# --- placement ------------------------------------------------------------------------------


def _tolerates(tolerations: Sequence[Body], key: str, value: str, effect: str) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != effect:
            continue
        operator = t.get("operator") or "Equal"
        if operator == "Exists" and (not t.get("key") or t.get("key") == key):
            return True
        if operator == "Equal" and t.get("key") == key and (t.get("value") or "") == value:
            return True
    return False


def _expression_matches(expr: Body, labels: Mapping[str, str]) -> bool:
    key, operator = expr.get("key", ""), expr.get("operator", "")
    values = [str(v) for v in expr.get("values") or []]
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            have, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def _required_terms(pod_spec: Body) -> list[Body]:
    affinity = (pod_spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return list(required.get("nodeSelectorTerms") or [])


def pool_labels(pool: GPUNodePool) -> dict[str, str]:
    """The labels every node of the pool carries."""
    return {**pool.spec.node_labels, POOL: pool.metadata.name}


def placement_problems(pod_specs: Sequence[Body], pools: Sequence[GPUNodePool]) -> list[str]:
    """What keeps the workload's pods off the pools the plan may put it in ([] if nothing)."""
    problems: list[str] = []
    for pod in pod_specs:
        selector = pod.get("nodeSelector") or {}
        terms = _required_terms(pod)
        if not selector and not terms:
            problems.append(
                "the pods select no pool (no nodeSelector or required node affinity): they may "
                "run on nodes Peakwise does not size"
            )
        tolerations = pod.get("tolerations") or []
        for pool in pools:
            labels = pool_labels(pool)
            name = pool.metadata.name
            wrong = [f"{k}={v}" for k, v in selector.items() if labels.get(k) != v]
            if wrong:
                problems.append(f"nodeSelector {', '.join(wrong)} excludes pool {name}")
            if terms and not any(
                all(_expression_matches(e, labels) for e in t.get("matchExpressions") or [])
                for t in terms
            ):
                problems.append(f"required node affinity excludes pool {name}")
            for taint in pool.spec.node_taints:
                if taint.effect == "PreferNoSchedule":
                    continue
                if not _tolerates(tolerations, taint.key, taint.value, taint.effect):
                    problems.append(
                        f"no toleration for pool {name}'s taint "
                        f"{taint.key}={taint.value}:{taint.effect}"
                    )
    return list(dict.fromkeys(problems))


@dataclass(frozen=True)
class TargetPlan:
    """What a round does to one target."""

    replicas: int | None
    """Replicas to write through /scale; None: write nothing."""
    why_not: str = ""
    """Why nothing is written (Recommend, suspended, an autoscaler owns it, not found)."""
    reason: str = "Scaling"
    """ScalingActive's reason."""
    notes: list[str] = field(default_factory=list)


def target_plan(
    mode: str,
    suspended: bool,
    pinned: int | None,
    planned_total: int,
    observed: TargetObservation,
) -> TargetPlan:
    """Whether and to what the target is scaled this round."""
    if not observed.found:
        return TargetPlan(None, f"the target cannot be read: {observed.problem}", "TargetMissing")
    if mode != "Enforce":
        return TargetPlan(None, "Recommend mode: nothing is scaled", "Recommending")
    if observed.scaled_by:
        return TargetPlan(
            None,
            f"{', '.join(observed.scaled_by)} scales {observed.kind} {observed.name}: Peakwise "
            "does not write its replicas (let the autoscaler follow "
            "peakwise_service_desired_replicas, or remove it)",
            "AutoscalerConflict",
        )
    if suspended and pinned is None:
        return TargetPlan(None, "suspended: replicas are left as they are", "Suspended")
    want = pinned if suspended and pinned is not None else planned_total
    return TargetPlan(want, reason="Suspended" if suspended else "Scaling")

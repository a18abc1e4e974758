"""kopf handlers: read the object, call the core, write status.

Every handler is a module-level function; `register` only applies kopf's decorators with the
interval from the command line. Reconciliation is level-based: timers re-plan from observed
state (the shared round, `controller.py`), make the cluster follow (`actuation.py`) and write
the status built by `status.py`, only when it changed. The create/update handler checks the
object and rolls template changes out at once.

Errors, on purpose: an object that does not validate is a `kopf.PermanentError` in its
create/update handler (retrying cannot fix it) and Degraded in its status; a failed write to
a child is a `kopf.TemporaryError` retried after one interval; a 403 is reported (Degraded,
Forbidden, one Warning Event) and retried by the next timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from peakwise.api.common import Condition
from peakwise.api.costbudget import CostBudget
from peakwise.api.errors import describe
from peakwise.api.gpunodepool import GPUNodePool, GPUNodePoolStatus
from peakwise.api.inferencedeployment import InferenceDeployment, InferenceDeploymentStatus
from peakwise.operator import advice, indexes, metrics
from peakwise.operator.actuation import Actuator
from peakwise.operator.controller import Controller, Round, object_name
from peakwise.operator.conventions import (
    apportion,
    fallback,
    retention_short,
    scaling_active,
    scaling_limited,
    target_conditions,
    target_status,
)
from peakwise.operator.kube import ForbiddenError
from peakwise.operator.labels import GPU_RESOURCE, INFERENCE_DEPLOYMENT, POOL
from peakwise.operator.providers import ProviderError
from peakwise.operator.providers.karpenter import check_mapping
from peakwise.operator.scale_target import (
    TargetObservation,
    TargetPlan,
    placement_problems,
    target_plan,
    usable_pools,
)
from peakwise.operator.status import (
    MESSAGE_LIMIT,
    changed_fields,
    condition,
    deployment_status,
    invalid_status,
    pool_status,
    wire,
)
from peakwise.operator.status import budget_status as build_budget_status
from peakwise.planner import DeploymentPlan

GROUP, VERSION = "peakwise.dev", "v1alpha1"
log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)

INFORMATIONAL = ("lastPlanTime", "forecast", "recentTargets", "slo")
"""Status fields that change every round without a decision changing: written with the next
decision, or by the heartbeat."""


@dataclass
class Runtime:
    """What the handlers share; lives in kopf's memo."""

    controller: Controller
    actuator: Actuator
    interval: timedelta
    status_heartbeat: timedelta = timedelta(minutes=5)
    """Longest a status goes unwritten while nothing changes."""


def _now() -> datetime:
    return datetime.now(UTC)


def parse(model: type[Model], body: Mapping[str, Any]) -> Model:
    """The object as its model, or a PermanentError naming the field at fault."""
    try:
        return model.model_validate(dict(body))
    except ValidationError as error:
        raise kopf.PermanentError(f"invalid {model.__name__}: {describe(error)}") from None
    except (ArithmeticError, ValueError) as error:  # e.g. a duration too large to represent
        raise kopf.PermanentError(f"invalid {model.__name__}: out of range: {error}") from None


def parse_or_report(
    model: type[Model], body: Mapping[str, Any], patch: kopf.Patch, now: datetime
) -> Model | None:
    """The object as its model; or None, with Degraded=InvalidSpec (the field at fault) in
    its status and one Warning Event, so the object itself says why it is not used."""
    try:
        return parse(model, body)
    except kopf.PermanentError as error:
        message = str(error)
    generation = (body.get("metadata") or {}).get("generation")
    previous = _conditions(body)
    degraded = condition(previous, "Degraded", True, "InvalidSpec", message, now, generation)
    status = {"observedGeneration": generation, "conditions": [wire(degraded)]}
    if write_status(patch, body, status, model.__name__, now, None) and _newly(
        body, "Degraded", "InvalidSpec", message
    ):
        kopf.warn(body, reason="InvalidSpec", message=message[:MESSAGE_LIMIT])
    return None


def _conditions(body: Mapping[str, Any]) -> list[Condition]:
    raw = (body.get("status") or {}).get("conditions") or []
    out = []
    for item in raw:
        try:
            out.append(Condition.model_validate(item))
        except ValidationError:
            continue  # someone wrote a malformed condition: it is replaced
    return out


def _newly(body: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
    """The object's condition `type_` is not already True with this reason and message, so a
    Warning Event is posted once per problem, not once per round. Read from the live body:
    a shared round's parsed objects may predate the last status patch."""
    old = next((c for c in _conditions(body) if c.type == type_), None)
    return not (
        old is not None
        and old.status == "True"
        and old.reason == reason
        and old.message == message[:MESSAGE_LIMIT]
    )


def _decision(status: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The part of a status whose change must be written at once: the `keys` written, but the
    informational ones, and conditions by type, status and reason (a message alone changing
    waits for the heartbeat)."""
    out = {k: status.get(k) for k in keys if k not in INFORMATIONAL and k != "conditions"}
    out["conditions"] = [
        (c.get("type"), c.get("status"), c.get("reason"))
        for c in status.get("conditions") or []
        if isinstance(c, Mapping)
    ]
    return out


def write_status(
    patch: kopf.Patch,
    body: Mapping[str, Any],
    status: dict[str, Any],
    kind: str,
    now: datetime,
    heartbeat: timedelta | None,
) -> bool:
    """Put `status` into kopf's patch when it differs from the live status; True if written.

    With a `heartbeat`, informational fields alone changing (INFORMATIONAL, condition
    messages) are written only once the last write is that old.
    """
    live = body.get("status") or {}
    if heartbeat is None:
        due = bool(changed_fields(status, live))
    else:
        due = _decision(status, list(status)) != _decision(live, list(status))
        if not due and changed_fields(status, live, ignore=("lastPlanTime",)):
            last = _parse_time(live.get("lastPlanTime"))
            due = last is None or now - last >= heartbeat
            if due:
                metrics.status_heartbeat_writes.labels(kind).inc()
    if due:
        patch.setdefault("status", {}).update(with_removals(status, live))
        metrics.status_writes.labels(kind).inc()
    return due


def with_removals(new: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """`new` as a merge patch over `live`: inside each object `new` writes, a field `live` has
    and `new` no longer has is set to null, which removes it. (Status is written without its
    unset fields, and a merge patch leaves a field it does not name as it was: a figure that
    became unknown, e.g. slo.achievedShortfall, would stay on show with the value it had.)
    Top-level fields `new` does not name are left alone: they may not be the operator's."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = live.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = with_removals(value, before)
            nested.update({k: None for k in before if k not in value})
            out[key] = nested
        else:
            out[key] = value
    return out


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _snapshot(index_kwargs: Mapping[str, Any]) -> indexes.Snapshot:
    return indexes.snapshot({name: index_kwargs[name] for name in indexes.NAMES})


# --- InferenceDeployment -----------------------------------------------------------------------


async def check_and_roll_out(
    body: kopf.Body,
    uid: str,
    namespace: str,
    memo: kopf.Memo,
    child_index: kopf.Index[Any, Any],
    pool_index: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """On create, resume and spec change: check the object; roll a template change out to
    every child at its current size now rather than at the next timer (denials are
    reported by the timer, which retries them)."""
    infd = parse(InferenceDeployment, body)
    if infd.spec.mode != "Enforce" or infd.spec.template is None or infd.spec.suspend:
        return
    runtime: Runtime = memo.runtime
    pools = {}
    for name, store in pool_index.items():
        try:
            pools[name] = GPUNodePool.model_validate(next(iter(store)))
        except (ValidationError, StopIteration):
            continue  # an invalid pool is reported by its own timer
    children = indexes.children_of(child_index, namespace, uid)
    sizes = {c["pool"]: c["replicas"] for c in children if c["replicas"] > 0}
    problems = await runtime.actuator.apply_children(infd, uid, sizes, pools, children)
    for problem in problems:
        log.warning("rolling out %s/%s: %s", namespace, infd.metadata.name, problem)


async def reconcile_deployment(
    body: kopf.Body,
    uid: str,
    namespace: str,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **index_kwargs: Any,
) -> None:
    """Every interval: plan (shared round), make the children follow, write status."""
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    generation = (body.get("metadata") or {}).get("generation")
    round_ = await runtime.controller.round(lambda: _snapshot(index_kwargs), key, generation)
    try:
        infd = round_.deployments.get(key)
        if infd is None:
            _report_left_out(body, patch, round_, key, generation)
            return
        await _reconcile_planned(runtime, body, uid, infd, round_, patch, index_kwargs)
    finally:
        runtime.controller.reported(round_, key)


def _report_left_out(
    body: kopf.Body,
    patch: kopf.Patch,
    round_: Round,
    key: tuple[str, str],
    generation: int | None,
) -> None:
    reason_text = round_.invalid.get(object_name("InferenceDeployment", key), "not indexed yet")
    if reason_text.startswith("pod template rejected"):
        reason = "TemplateRejected"
    elif "cannot be planned" in reason_text:
        reason = "Unplannable"
    else:
        reason = "InvalidSpec"
    status = invalid_status(_conditions(body), reason, reason_text, round_.at, generation)
    if write_status(patch, body, wire(status), "InferenceDeployment", round_.at, None) and _newly(
        body, "Degraded", reason, reason_text
    ):
        kopf.warn(body, reason=reason, message=reason_text[:MESSAGE_LIMIT])


async def _reconcile_planned(
    runtime: Runtime,
    body: kopf.Body,
    uid: str,
    infd: InferenceDeployment,
    round_: Round,
    patch: kopf.Patch,
    index_kwargs: Mapping[str, Any],
) -> None:
    namespace, name = infd.metadata.namespace or "default", infd.metadata.name
    key = (namespace, name)
    planned = round_.plan.deployments[key]
    children = indexes.children_of(index_kwargs["child_index"], namespace, uid)
    ready = {c["pool"]: c["ready"] for c in children}
    problems: list[Exception] = []
    effective = round_.effective.get(namespace)
    # Fail closed: without a budget in force the plan is shown, and what runs is left alone.
    unbudgeted = effective.reason if effective is not None and not effective.enforce else ""
    observed = round_.targets.get(key)
    target: TargetPlan | None = None
    suspended = infd.spec.suspend and infd.spec.suspend_replicas is None
    if infd.spec.target_ref is not None:
        target = _target_plan(infd, planned.total, observed)
        if target.replicas is not None and observed is not None and not unbudgeted:
            problems = await runtime.actuator.scale_target(infd, observed, target.replicas)
        ready = apportion(
            observed.ready_replicas if observed else 0,
            dict(planned.replicas),
            usable_pools(infd, round_.pools),
        )
    elif infd.spec.mode == "Enforce" and not suspended and not unbudgeted:
        # Children of a pool that is missing or invalid keep their size: no drain, no loss.
        hold = [c["pool"] for c in children if c["pool"] not in round_.pools]
        problems = await runtime.actuator.follow_plan(
            infd, uid, planned.replicas, round_.pools, children, hold, round_.at
        )
    budget = effective.budget if effective is not None else None
    status = deployment_status(
        infd,
        planned,
        round_.plan.namespaces.get(namespace),
        round_.forecasts.get(key),
        ready,
        round_.pools,
        round_.at,
        budget.spec.currency if budget else "USD",
        round_.leads.get(key),
        unbudgeted=unbudgeted,
    )
    _add_conventions(body, infd, status, round_, planned, observed, target)
    if problems:
        _report_actuation(body, infd, status.conditions, problems, round_.at)
    previous = infd.status.desired_replicas if infd.status else None
    if previous is None or previous != planned.total:
        verb = "Recommend" if infd.spec.mode == "Recommend" else "Scale"
        kopf.info(body, reason=f"{verb}Replicas", message="; ".join(planned.reasons)[:1000])
    limited = next(c for c in status.conditions if c.type == "BudgetLimited")
    if planned.budget_limited and _newly(body, "BudgetLimited", limited.reason, limited.message):
        kopf.warn(body, reason="BudgetLimited", message=limited.message)
    for pool_name, n in ready.items():
        pool = round_.pools.get(pool_name)
        tier = pool.spec.capacity_type if pool else "unknown"
        metrics.replicas.labels(namespace, name, pool_name, tier).set(n)
    write_status(
        patch,
        body,
        wire(status),
        "InferenceDeployment",
        round_.at,
        runtime.status_heartbeat,
    )
    failed = [p for p in problems if not isinstance(p, ForbiddenError)]
    if failed:
        # Status (with the Degraded reason) is still written: kopf applies the patch on
        # every attempt. A 403 is not retried sooner: the next timer tries again.
        raise kopf.TemporaryError(
            f"scaling children failed: {failed[0]}", delay=runtime.interval.total_seconds()
        )


def _target_plan(
    infd: InferenceDeployment, planned_total: int, observed: TargetObservation | None
) -> TargetPlan:
    spec = infd.spec
    if observed is None:
        return TargetPlan(None, "the target was not read this round", "TargetMissing")
    return target_plan(spec.mode, spec.suspend, spec.suspend_replicas, planned_total, observed)


def _add_conventions(
    body: kopf.Body,
    infd: InferenceDeployment,
    status: InferenceDeploymentStatus,
    round_: Round,
    planned: DeploymentPlan,
    observed: TargetObservation | None,
    target: TargetPlan | None,
) -> None:
    """ScalingActive, Fallback, ScalingLimited (and for a targetRef TargetFound, Placement and
    `status.target`; RetentionShort when Prometheus says its retention), with a Warning
    Event when an autoscaler conflict, a placement gap or short retention is new."""
    key = (infd.metadata.namespace or "default", infd.metadata.name)
    previous = infd.status.conditions if infd.status else []
    now, gen = round_.at, infd.metadata.generation
    added = [
        scaling_active(previous, infd, target, now),
        fallback(previous, round_.forecasts.get(key), now, gen),
        scaling_limited(previous, infd, planned, now),
    ]
    if infd.spec.target_ref is not None:
        placement: list[str] = []
        if observed is not None and observed.found:
            pools = [round_.pools[n] for n in usable_pools(infd, round_.pools)]
            placement = placement_problems(observed.pod_specs, pools)
            per_pod = observed.group_gpus // max(1, observed.group_size)
            wanted = {p.gpus_per_replica for p in infd.spec.gpu_profiles}
            if per_pod and per_pod not in wanted:
                placement.append(
                    f"the pods request {per_pod} {GPU_RESOURCE}, gpuProfiles say "
                    f"{', '.join(str(w) for w in sorted(wanted))} (per pod)"
                )
        added += target_conditions(previous, infd, observed, placement, now)
        status.target = target_status(observed)
    short = retention_short(previous, infd, round_.retention, now)
    if short is not None:
        added.append(short)
    status.conditions[1:1] = added
    for c in added:
        warn = (c.type == "ScalingActive" and c.reason == "AutoscalerConflict") or (
            c.type in ("Placement", "TargetFound") and c.status == "False"
        )
        warn = warn or (c.type == "RetentionShort" and c.status == "True")
        if warn and _changed(body, c):
            kopf.warn(body, reason=c.reason, message=c.message)


def _changed(body: Mapping[str, Any], new: Condition) -> bool:
    """The live object's condition of this type has another status or reason (an Event is
    posted once per change, not every round)."""
    old = next((c for c in _conditions(body) if c.type == new.type), None)
    return old is None or old.status != new.status or old.reason != new.reason


def _report_actuation(
    body: kopf.Body,
    infd: InferenceDeployment,
    conditions: list[Condition],
    problems: Sequence[Exception],
    now: datetime,
) -> None:
    """Degraded=True with the reason (Forbidden for a 403, naming verb, resource and
    namespace), and a Warning Event when that is new. The plan in status stays as it is."""
    denied = [p for p in problems if isinstance(p, ForbiddenError)]
    reason = "Forbidden" if denied else "ApplyFailed"
    message = "; ".join(dict.fromkeys(str(p) for p in (denied or problems)))[:MESSAGE_LIMIT]
    previous = infd.status.conditions if infd.status else []
    degraded = condition(previous, "Degraded", True, reason, message, now, infd.metadata.generation)
    conditions[:] = [degraded if c.type == "Degraded" else c for c in conditions]
    if _newly(body, "Degraded", reason, message):
        kopf.warn(body, reason=reason, message=message)


def forget_deployment(namespace: str, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Deleted: drop its model, its recent targets, its metric series and apply memo. (Its
    children go with it: they are owned by it.)"""
    runtime: Runtime = memo.runtime
    runtime.controller.forget((namespace, name))
    actuator = runtime.actuator
    actuator.applied = {
        k: v for k, v in actuator.applied.items() if not _child_of(k, namespace, name)
    }
    actuator.unplanned_since = {
        k: v for k, v in actuator.unplanned_since.items() if not _child_of(k, namespace, name)
    }
    metrics.forget_deployment(namespace, name)


def _child_of(child: tuple[str, str], namespace: str, parent: str) -> bool:
    return child[0] == namespace and child[1].startswith(f"{parent}-")


# --- GPUNodePool ---------------------------------------------------------------------------------


async def reconcile_pool(
    body: kopf.Body,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **index_kwargs: Any,
) -> None:
    """Every interval: size the pool for the Enforce-mode plan, write its status."""
    runtime: Runtime = memo.runtime
    pool = parse_or_report(GPUNodePool, body, patch, _now())
    if pool is None:
        return  # its children are held at their size by their deployments' rounds
    round_ = await runtime.controller.round(
        lambda: _snapshot(index_kwargs), follower=("GPUNodePool", name)
    )
    observed = indexes.pool_observation(index_kwargs["node_index"], name)
    used_by_enforce = any(
        d.spec.mode == "Enforce"
        and any(p.gpu_type == pool.spec.gpu_type for p in d.spec.gpu_profiles)
        for d in round_.deployments.values()
    )
    desired = round_.pool_targets.get(name, observed.nodes) if used_by_enforce else observed.nodes
    scaling = await runtime.actuator.scale_pool(pool, observed, desired, round_.at)
    if scaling.error and _newly(body, "Degraded", scaling.error_reason, scaling.error):
        kopf.warn(body, reason=scaling.error_reason, message=scaling.error[:MESSAGE_LIMIT])
    seen = runtime.actuator.interruptions.take(name)
    if seen:
        kopf.warn(
            body, reason="SpotInterruption", message=f"{seen} node(s) interrupted; re-planning"
        )
    status = pool_status(pool, observed, scaling, seen, runtime.interval, round_.at)
    await _pool_integrations(runtime, body, pool, status, round_)
    write_status(patch, body, wire(status), "GPUNodePool", round_.at, None)


async def _pool_integrations(
    runtime: Runtime, body: kopf.Body, pool: GPUNodePool, status: GPUNodePoolStatus, round_: Round
) -> None:
    """The price the round planned with (PriceSource, with priceSource) and the Karpenter
    NodePool's mapping (NodePoolMapping), each with a Warning Event when it goes wrong."""
    previous = pool.status.conditions if pool.status else []
    gen, now = pool.metadata.generation, round_.at
    reading = round_.prices.get(pool.metadata.name)
    if reading is not None:
        status.price_per_node_hour = reading.price
        status.price_source = reading.source
        if pool.spec.price_source is not None:
            live = condition(
                previous,
                "PriceSource",
                reading.live,
                "LivePrice" if reading.live else "FallbackPrice",
                f"{reading.price:g}/node-hour from {reading.source}"
                + (f": {reading.problem}" if reading.problem else ""),
                now,
                gen,
            )
            status.conditions.append(live)
            if not reading.live and _changed(body, live):
                kopf.warn(body, reason="FallbackPrice", message=live.message)
    if pool.spec.provider.karpenter is not None:
        try:
            problems = await asyncio.to_thread(check_mapping, pool, runtime.actuator.api_client)
        except ProviderError as error:
            problems = [str(error)]
        mapping = condition(
            previous,
            "NodePoolMapping",
            not problems,
            "Mapped" if not problems else "MappingInvalid",
            "; ".join(problems)
            or "the NodePool pins one capacity type and instance type and "
            "carries the pool's labels and taints",
            now,
            gen,
        )
        status.conditions.append(mapping)
        if problems and _changed(body, mapping):
            kopf.warn(body, reason="MappingInvalid", message=mapping.message)


async def drain_pool(
    body: kopf.Body, name: str, meta: kopf.Meta, memo: kopf.Memo, **index_kwargs: Any
) -> None:
    """A pool being deleted: its finalizer holds it until no child runs on it (the rounds
    move its replicas elsewhere, make before break), then scales it to zero nodes."""
    runtime: Runtime = memo.runtime
    # Children of an InferenceDeployment that is itself going (deleted, or its namespace is)
    # go with it: only those whose owner stays are waited for.
    staying = {
        (key[0], indexes.uid_of(body))
        for key, store in index_kwargs["infd_index"].items()
        for body in store
        if not (body.get("metadata") or {}).get("deletionTimestamp")
    }
    on_pool = sorted(
        child["name"]
        for owner, children in index_kwargs["child_index"].items()
        if owner in staying
        for child in children
        if child["pool"] == name
    )
    since = datetime.fromisoformat(str(meta.get("deletionTimestamp") or _now().isoformat()))
    waited = _now() - since
    if on_pool and waited < runtime.actuator.drain_timeout:
        raise kopf.TemporaryError(
            f"draining: {len(on_pool)} child Deployment(s) still on the pool "
            f"({', '.join(on_pool[:5])}); their replicas move once the replacements are Ready",
            delay=runtime.interval.total_seconds(),
        )
    if on_pool:
        kopf.warn(
            body,
            reason="DrainTimeout",
            message=f"scaled to zero after {waited} with {len(on_pool)} child(ren) still on it",
        )
    try:
        pool = GPUNodePool.model_validate(dict(body))
    except ValidationError:
        log.warning("GPUNodePool %s is invalid: deleted without scaling its nodes", name)
        return
    observed = indexes.pool_observation(index_kwargs["node_index"], name)
    scaling = await runtime.actuator.scale_pool(pool, observed, 0, _now())
    if scaling.error:
        raise kopf.TemporaryError(
            f"scaling to zero: {scaling.error}", delay=runtime.interval.total_seconds()
        )


def watch_nodes(
    event: Mapping[str, Any], name: str, labels: Mapping[str, str], memo: kopf.Memo, **_: Any
) -> None:
    """A pool's node changed or went away: count interruptions, re-plan at once on one."""
    runtime: Runtime = memo.runtime
    node = event.get("object") or {}
    taints = [t.get("key", "") for t in (node.get("spec") or {}).get("taints") or []]
    deleted = event.get("type") == "DELETED"
    pool = labels[POOL]
    if runtime.actuator.interruptions.node_event(pool, name, taints, deleted, _now()):
        runtime.controller.record_interruption(pool)


# --- CostBudget ---------------------------------------------------------------------------------


async def accrue_budget(
    body: kopf.Body,
    namespace: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **index_kwargs: Any,
) -> None:
    """Every interval: accrue the namespace's spend, write the budget's status."""
    runtime: Runtime = memo.runtime
    budget = parse_or_report(CostBudget, body, patch, _now())
    if budget is None:
        return
    round_ = await runtime.controller.round(
        lambda: _snapshot(index_kwargs), follower=("CostBudget", namespace, budget.metadata.name)
    )
    now = _now()
    # Billed, not Ready: the namespace's share of the nodes that exist (planner/billing.py).
    rate = round_.spend.billed.get(namespace, 0.0) if round_.spend is not None else 0.0
    status = build_budget_status(
        budget, rate, now, round_.plan.namespaces.get(namespace), round_.effective.get(namespace)
    )
    changed = budget.status is None or budget.status.state != status.state
    if changed and status.state != "Within":
        kopf.warn(body, reason=f"Budget{status.state}", message=status.conditions[-1].message)
    metrics.budget_spend.labels(namespace).set(status.spend)
    write_status(patch, body, wire(status), "CostBudget", now, None)


# --- registration -------------------------------------------------------------------------------


def register(
    registry: kopf.OperatorRegistry, interval: timedelta, *, commitment_advice: bool = True
) -> None:
    """Apply kopf's decorators to the handlers above, with the configured interval.

    The timers fire twice an interval: a handler that already followed the current round
    waits inside for the next one (see Controller.round), so each object follows each round
    right after it is planned."""
    every = max(1.0, interval.total_seconds() / 2)
    on = {"registry": registry}

    kopf.index(GROUP, VERSION, "inferencedeployments", id="infd_index", **on)(indexes.infd_index)
    kopf.index(GROUP, VERSION, "gpunodepools", id="pool_index", **on)(indexes.pool_index)
    kopf.index(GROUP, VERSION, "costbudgets", id="budget_index", **on)(indexes.budget_index)
    children = {INFERENCE_DEPLOYMENT: kopf.PRESENT, POOL: kopf.PRESENT}
    kopf.index("apps", "v1", "deployments", labels=children, id="child_index", **on)(
        indexes.child_index
    )
    kopf.index("", "v1", "nodes", labels={POOL: kopf.PRESENT}, id="node_index", **on)(
        indexes.node_index
    )
    kopf.index("", "v1", "pods", id="pod_index", **on)(indexes.pod_index)

    deployments = (GROUP, VERSION, "inferencedeployments")
    rolled_out = kopf.on.create(*deployments, **on)(check_and_roll_out)
    rolled_out = kopf.on.resume(*deployments, **on)(rolled_out)
    kopf.on.update(*deployments, field="spec", **on)(rolled_out)
    kopf.timer(*deployments, interval=every, initial_delay=1.0, **on)(reconcile_deployment)
    # optional: no finalizer, so deleting a namespace or uninstalling never waits on us.
    kopf.on.delete(*deployments, optional=True, **on)(forget_deployment)

    kopf.timer(GROUP, VERSION, "gpunodepools", interval=every, initial_delay=2.0, **on)(
        reconcile_pool
    )
    kopf.on.delete(GROUP, VERSION, "gpunodepools", **on)(drain_pool)
    kopf.on.event("", "v1", "nodes", labels={POOL: kopf.PRESENT}, **on)(watch_nodes)
    kopf.timer(GROUP, VERSION, "costbudgets", interval=every, initial_delay=3.0, **on)(
        accrue_budget
    )
    if commitment_advice:  # --no-commitment-advice turns it off (docs/advice.md)
        advice.register(registry)

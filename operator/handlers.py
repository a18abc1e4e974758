"""kopf handlers: read the object, call the core, write status through kopf's patch.

Registered on a registry by `register`, so the timer interval and the namespaces come from the
command line rather than from module globals. Reconciliation is level-based: timers re-plan
from observed state and compare every child with what the plan wants (so a manual edit or a
missed event is put right on the next round, and an unchanged child costs no write); the
create/update handler only checks the object and rolls template changes out at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from peakwise.api.costbudget import CostBudget
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator import metrics
from peakwise.operator.children import (
    TEMPLATE_HASH,
    child_deployment,
    needs_apply,
    owned_view,
    profile_for,
    with_template_hash,
)
from peakwise.operator.controller import Controller, Snapshot
from peakwise.operator.kube import ForbiddenError, KubeAdapter
from peakwise.operator.labels import INFERENCE_DEPLOYMENT, POOL
from peakwise.operator.providers import (
    KwokProvider,
    NodePoolProvider,
    ProviderError,
    ProviderForbiddenError,
    provider_for,
)
from peakwise.operator.state import (
    PoolObservation,
    condition,
    deployment_status,
)
from peakwise.planner.budget import hours_left_in_month, month_start

GROUP, VERSION = "peakwise.dev", "v1alpha1"
log = logging.getLogger(__name__)
# Taints cloud providers and node termination handlers put on a spot node about to go.
INTERRUPTION_TAINTS = (
    "peakwise.dev/interrupted",
    "aws-node-termination-handler/spot-itn",
    "cloud.google.com/impending-node-termination",
    "kubernetes.azure.com/scalesetpriority-evicting",
)


@dataclass
class Runtime:
    """What the handlers share; lives in kopf's memo."""

    controller: Controller
    kube: KubeAdapter
    api_client: Any
    interruptions: dict[str, int] = field(default_factory=dict)
    """Spot interruptions seen per pool since its status last counted them."""
    interrupted_nodes: set[str] = field(default_factory=set)
    deleting: set[str] = field(default_factory=set)
    """Nodes this operator deletes itself (not interruptions)."""
    applied: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    """(template hash, generation) of each child after this process last applied it."""

    def provider(self, pool: GPUNodePool) -> NodePoolProvider:
        if pool.spec.provider.kwok is not None:
            return KwokProvider(self.api_client, on_delete=self.deleting.add)
        return provider_for(pool, self.api_client)


def _now() -> datetime:
    return datetime.now(UTC)


def _first_value(store: Any) -> Any:
    return next(iter(store), None)


def _pool_observation(node_index: Mapping[Any, Any], pool: str) -> PoolObservation:
    nodes = list(node_index.get(pool, []))
    return PoolObservation(
        nodes=len(nodes),
        ready_nodes=sum(1 for n in nodes if n["ready"]),
        allocatable_gpus=sum(n["gpus"] for n in nodes if n["ready"]),
    )


def snapshot(
    infd_index: Mapping[Any, Any],
    pool_index: Mapping[Any, Any],
    budget_index: Mapping[Any, Any],
    child_index: Mapping[Any, Any],
    node_index: Mapping[Any, Any],
) -> Snapshot:
    children: dict[tuple[str, str], dict[str, int]] = {}
    for key, store in child_index.items():
        for child in store:
            children.setdefault(key, {})[child["pool"]] = child["replicas"]
    pool_nodes = {pool: _pool_observation(node_index, pool) for pool in node_index}
    return Snapshot(
        deployments={k: _first_value(v) for k, v in infd_index.items()},
        pools={k: _first_value(v) for k, v in pool_index.items()},
        budgets={k: _first_value(v) for k, v in budget_index.items()},
        children=children,
        pool_nodes=pool_nodes,
    )


INDEXES = ("infd_index", "pool_index", "budget_index", "child_index", "node_index")
"""The kopf indexes every round reads; kopf passes them to handlers by these names."""


def snapshot_of(indexes: Mapping[str, Any]) -> Snapshot:
    return snapshot(*(indexes[name] for name in INDEXES))


def _ready_by_pool(child_index: Mapping[Any, Any], key: tuple[str, str]) -> dict[str, int]:
    if key not in child_index:
        return {}
    return {c["pool"]: c["ready"] for c in child_index[key]}


def _node_ready(status: Mapping[str, Any]) -> bool:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def register(registry: kopf.OperatorRegistry, interval: timedelta) -> None:
    every = interval.total_seconds()

    # --- Indexes: the in-memory view every round plans from (fed by kopf's watches). ---

    @kopf.index(GROUP, VERSION, "inferencedeployments", registry=registry, id="infd_index")
    def infd_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> Any:
        return {(namespace, name): dict(body)}

    @kopf.index(GROUP, VERSION, "gpunodepools", registry=registry, id="pool_index")
    def pool_index(body: kopf.Body, name: str, **_: Any) -> Any:
        return {name: dict(body)}

    @kopf.index(GROUP, VERSION, "costbudgets", registry=registry, id="budget_index")
    def budget_index(body: kopf.Body, namespace: str, **_: Any) -> Any:
        return {namespace: dict(body)}

    @kopf.index(
        "apps",
        "v1",
        "deployments",
        labels={INFERENCE_DEPLOYMENT: kopf.PRESENT, POOL: kopf.PRESENT},
        registry=registry,
        id="child_index",
    )
    def child_index(
        body: kopf.Body, namespace: str, name: str, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {
            (namespace, labels[INFERENCE_DEPLOYMENT]): {
                "name": name,
                "pool": labels[POOL],
                "replicas": body.get("spec", {}).get("replicas", 0),
                "ready": body.get("status", {}).get("readyReplicas", 0) or 0,
                "generation": body.get("metadata", {}).get("generation"),
                # What the operator sets, to compare with the plan without a GET per round.
                "live": owned_view(body),
            }
        }

    @kopf.index("", "v1", "nodes", labels={POOL: kopf.PRESENT}, registry=registry, id="node_index")
    def node_index(body: kopf.Body, name: str, labels: Mapping[str, str], **_: Any) -> Any:
        capacity = body.get("status", {}).get("allocatable", {}) or {}
        return {
            labels[POOL]: {
                "name": name,
                "ready": _node_ready(body.get("status", {})),
                "gpus": int(capacity.get("nvidia.com/gpu", 0) or 0),
            }
        }

    # --- InferenceDeployment ---

    @kopf.on.create(GROUP, VERSION, "inferencedeployments", registry=registry)
    @kopf.on.resume(GROUP, VERSION, "inferencedeployments", registry=registry)
    @kopf.on.update(GROUP, VERSION, "inferencedeployments", field="spec", registry=registry)
    async def check_and_roll_out(
        body: kopf.Body,
        uid: str,
        namespace: str,
        memo: kopf.Memo,
        child_index: kopf.Index[Any, Any],
        pool_index: kopf.Index[Any, Any],
        **_: Any,
    ) -> None:
        try:
            infd = InferenceDeployment.model_validate(dict(body))
        except ValidationError as error:
            raise kopf.PermanentError(
                f"invalid InferenceDeployment: {error.errors()[0]['msg']}"
            ) from None
        if infd.spec.mode != "Enforce":
            return
        # The template changed: roll it out to every child at its current size now, rather
        # than at the next timer. Denials are reported by the timer, which retries them.
        runtime: Runtime = memo.runtime
        key = (namespace, infd.metadata.name)
        pools = {
            name: GPUNodePool.model_validate(_first_value(store))
            for name, store in pool_index.items()
        }
        children = list(child_index.get(key, []))
        sizes = {c["pool"]: c["replicas"] for c in children if c["replicas"] > 0}
        problems = await _apply_children(runtime, infd, uid, sizes, pools, children)
        for problem in problems:
            log.warning("rolling out %s/%s: %s", namespace, infd.metadata.name, problem)

    @kopf.timer(
        GROUP, VERSION, "inferencedeployments", interval=every, initial_delay=1.0, registry=registry
    )
    async def reconcile_deployment(
        body: kopf.Body,
        uid: str,
        namespace: str,
        name: str,
        patch: kopf.Patch,
        memo: kopf.Memo,
        **indexes: Any,
    ) -> None:
        runtime: Runtime = memo.runtime
        key = (namespace, name)
        round_ = await runtime.controller.round(
            lambda: snapshot_of(indexes), key, body.get("metadata", {}).get("generation")
        )
        infd = round_.deployments.get(key)
        if infd is None:
            reason = round_.invalid.get(
                f"InferenceDeployment {namespace}/{name}", "not indexed yet"
            )
            patch.setdefault("status", {})["conditions"] = [
                condition(
                    [],
                    "Degraded",
                    True,
                    "InvalidSpec",
                    reason,
                    _now(),
                    body.get("metadata", {}).get("generation"),
                )
            ]
            return
        planned = round_.plan.deployments[key]
        child_index, budget_index = indexes["child_index"], indexes["budget_index"]
        ready = _ready_by_pool(child_index, key)
        problems: list[Exception] = []
        if infd.spec.mode == "Enforce":
            problems = await _actuate(
                runtime, infd, uid, planned.replicas, round_.pools, child_index.get(key, [])
            )
        budget = round_.plan.namespaces.get(namespace)
        currency = "USD"
        if namespace in budget_index:
            currency = (_first_value(budget_index[namespace]).get("spec") or {}).get(
                "currency", "USD"
            )
        status = deployment_status(
            infd,
            planned,
            budget,
            round_.forecasts.get(key),
            ready,
            round_.pools,
            round_.at,
            currency,
        )
        previous = infd.status.desired_replicas if infd.status else None
        if previous is None or previous != planned.total:
            verb = "Recommend" if infd.spec.mode == "Recommend" else "Scale"
            kopf.info(body, reason=f"{verb}Replicas", message="; ".join(planned.reasons)[:1000])
        if planned.budget_limited:
            kopf.warn(
                body,
                reason="BudgetLimited",
                message="; ".join(r for r in planned.reasons if "budget" in r)[:1000],
            )
        for pool_name, n in ready.items():
            tier = (
                round_.pools[pool_name].spec.capacity_type
                if pool_name in round_.pools
                else "unknown"
            )
            metrics.replicas.labels(namespace, name, pool_name, tier).set(n)
        if problems:
            _report_actuation(body, infd, status, problems, round_.at)
        patch.setdefault("status", {}).update(status)
        failed = [p for p in problems if not isinstance(p, ForbiddenError)]
        if failed:
            # Status (with the Degraded reason) is still written: kopf applies the patch on
            # every attempt. A 403 is not retried sooner: the next timer tries again.
            raise kopf.TemporaryError(f"scaling children failed: {failed[0]}", delay=every)

    # --- GPUNodePool ---

    @kopf.timer(
        GROUP, VERSION, "gpunodepools", interval=every, initial_delay=2.0, registry=registry
    )
    async def reconcile_pool(
        body: kopf.Body,
        name: str,
        patch: kopf.Patch,
        memo: kopf.Memo,
        **indexes: Any,
    ) -> None:
        runtime: Runtime = memo.runtime
        try:
            pool = GPUNodePool.model_validate(dict(body))
        except ValidationError as error:
            raise kopf.PermanentError(f"invalid GPUNodePool: {error.errors()[0]['msg']}") from None
        round_ = await runtime.controller.round(lambda: snapshot_of(indexes))
        observed = _pool_observation(indexes["node_index"], name)
        used_by_enforce = any(
            d.spec.mode == "Enforce"
            and any(p.gpu_type == pool.spec.gpu_type for p in d.spec.gpu_profiles)
            for d in round_.deployments.values()
        )
        desired = round_.pool_targets.get(name, observed.nodes)
        conditions = []
        now = _now()
        previous = pool.status.conditions if pool.status else []
        if used_by_enforce and desired != observed.nodes:
            try:
                await asyncio.to_thread(runtime.provider(pool).set_nodes, pool, desired)
                conditions.append(
                    condition(
                        previous,
                        "Degraded",
                        False,
                        "Scaling",
                        f"asked for {desired} nodes",
                        now,
                        pool.metadata.generation,
                    )
                )
            except ProviderError as error:
                metrics.reconcile_errors.labels("provider").inc()
                reason = (
                    "Forbidden" if isinstance(error, ProviderForbiddenError) else "ProviderError"
                )
                conditions.append(
                    condition(
                        previous,
                        "Degraded",
                        True,
                        reason,
                        str(error),
                        now,
                        pool.metadata.generation,
                    )
                )
                if _newly(body, "Degraded", reason, str(error)):
                    kopf.warn(body, reason=reason, message=str(error)[:1000])
        else:
            conditions.append(
                condition(
                    previous,
                    "Degraded",
                    False,
                    "Steady",
                    "the pool has what the plan needs",
                    now,
                    pool.metadata.generation,
                )
            )
        conditions.append(
            condition(
                previous,
                "Ready",
                observed.ready_nodes >= observed.nodes,
                "NodesReady" if observed.ready_nodes >= observed.nodes else "NodesStarting",
                f"{observed.ready_nodes} of {observed.nodes} nodes ready",
                now,
                pool.metadata.generation,
            )
        )
        seen = runtime.interruptions.pop(name, 0)
        old = pool.status
        count = (old.interruptions_observed if old else 0) + seen
        rate = old.interruption_rate if old else 0.0
        last = old.last_interruption_time if old else None
        elapsed_h = every / 3600.0
        # An exponentially decaying rate (one-hour memory) of interruptions per node-hour.
        rate = rate * math.exp(-elapsed_h) + (seen / max(observed.nodes + seen, 1)) * 1.0
        status: dict[str, Any] = {
            "observedGeneration": pool.metadata.generation,
            "conditions": conditions,
            "nodes": observed.nodes,
            "readyNodes": observed.ready_nodes,
            "desiredNodes": desired if used_by_enforce else observed.nodes,
            "allocatableGpus": observed.allocatable_gpus,
            "interruptionsObserved": count,
            "interruptionRate": round(rate, 6),
        }
        if seen:
            last = now
            kopf.warn(
                body,
                reason="SpotInterruption",
                message=f"{seen} node(s) interrupted; re-planning",
            )
        if last is not None:
            status["lastInterruptionTime"] = last.isoformat()
        patch.setdefault("status", {}).update(status)

    @kopf.on.event("", "v1", "nodes", labels={POOL: kopf.PRESENT}, registry=registry)
    def watch_nodes(
        event: Mapping[str, Any], name: str, labels: Mapping[str, str], memo: kopf.Memo, **_: Any
    ) -> None:
        runtime: Runtime = memo.runtime
        pool = labels[POOL]
        body = event.get("object") or {}
        taints = {t.get("key") for t in (body.get("spec") or {}).get("taints") or []}
        gone = event.get("type") == "DELETED"
        if gone and name in runtime.deleting:
            runtime.deleting.discard(name)
            runtime.interrupted_nodes.discard(name)
            return
        interrupted = gone or bool(taints & set(INTERRUPTION_TAINTS))
        if interrupted and name not in runtime.interrupted_nodes:
            runtime.interrupted_nodes.add(name)
            runtime.interruptions[pool] = runtime.interruptions.get(pool, 0) + 1
            runtime.controller.record_interruption(pool)
        if gone:
            runtime.interrupted_nodes.discard(name)

    # --- CostBudget ---

    @kopf.timer(GROUP, VERSION, "costbudgets", interval=every, initial_delay=3.0, registry=registry)
    async def accrue_budget(
        body: kopf.Body,
        namespace: str,
        patch: kopf.Patch,
        memo: kopf.Memo,
        **indexes: Any,
    ) -> None:
        runtime: Runtime = memo.runtime
        try:
            budget = CostBudget.model_validate(dict(body))
        except ValidationError as error:
            raise kopf.PermanentError(f"invalid CostBudget: {error.errors()[0]['msg']}") from None
        round_ = await runtime.controller.round(lambda: snapshot_of(indexes))
        now = _now()
        rate = _namespace_spend_rate(
            namespace, round_.deployments, round_.pools, indexes["child_index"]
        )
        status = budget_status(budget, rate, now, round_.plan.namespaces.get(namespace))
        changed = budget.status is None or budget.status.state != status["state"]
        if changed and status["state"] != "Within":
            kopf.warn(
                body,
                reason=f"Budget{status['state']}",
                message=status["conditions"][-1]["message"],
            )
        metrics.budget_spend.labels(namespace).set(status["spend"])
        patch.setdefault("status", {}).update(status)


async def _apply_children(
    runtime: Runtime,
    infd: InferenceDeployment,
    uid: str,
    replicas: Mapping[str, int],
    pools: Mapping[str, GPUNodePool],
    children: Any,
) -> list[Exception]:
    """Apply each child whose live state differs from what `replicas` wants; the failures.

    Level-based: the live child (from the watch-fed index) is compared with the desired one
    on the fields the operator sets, so a hand edit, a missed event or a restart converges,
    and a child that already matches costs no request at all.
    """
    existing = {c["pool"]: c for c in children}
    namespace = infd.metadata.namespace or "default"
    problems: list[Exception] = []
    for pool_name, n in replicas.items():
        pool = pools.get(pool_name)
        if pool is None or n <= 0:
            continue
        manifest = with_template_hash(child_deployment(infd, uid, pool, n))
        name = manifest["metadata"]["name"]
        child = existing.get(pool_name)
        why = needs_apply(
            manifest,
            child["live"] if child else None,
            child["generation"] if child else None,
            runtime.applied.get((namespace, name)),
        )
        if not why:
            continue
        log.info("applying child %s/%s: %s", namespace, name, why)
        try:
            generation = await asyncio.to_thread(runtime.kube.apply_deployment, manifest)
        except Exception as error:  # one child failing must not stop the others
            metrics.reconcile_errors.labels("actuate").inc()
            problems.append(error)
            continue
        if generation is not None:
            digest = manifest["metadata"]["annotations"][TEMPLATE_HASH]
            runtime.applied[(namespace, name)] = (digest, generation)
    return problems


async def _actuate(
    runtime: Runtime,
    infd: InferenceDeployment,
    uid: str,
    replicas: Mapping[str, int],
    pools: Mapping[str, GPUNodePool],
    children: Any,
) -> list[Exception]:
    """Make the children match the plan: apply what differs, delete unused pools' children.
    Returns what failed (403s included); the rest is done regardless."""
    children = list(children)  # kopf's index store changes under us while we await
    problems = await _apply_children(runtime, infd, uid, replicas, pools, children)
    namespace, parent = infd.metadata.namespace or "default", infd.metadata.name
    for child in children:
        if replicas.get(child["pool"], 0) > 0:
            continue
        try:
            await asyncio.to_thread(
                runtime.kube.delete_deployment, namespace, child["name"], parent
            )
        except Exception as error:
            metrics.reconcile_errors.labels("actuate").inc()
            problems.append(error)
        runtime.applied.pop((namespace, child["name"]), None)
    return problems


def _newly(body: kopf.Body, type_: str, reason: str, message: str) -> bool:
    """The object's condition `type_` is not already True with this reason and message, so a
    Warning Event is posted once per problem, not once per round. Read from the live body:
    a shared round's parsed objects may predate the last status patch."""
    conditions = (body.get("status") or {}).get("conditions") or []
    old = next((c for c in conditions if c.get("type") == type_), None)
    return not (
        old is not None
        and old.get("status") == "True"
        and old.get("reason") == reason
        and old.get("message") == message[:1000]
    )


def _report_actuation(
    body: kopf.Body,
    infd: InferenceDeployment,
    status: dict[str, Any],
    problems: list[Exception],
    now: datetime,
) -> None:
    """Degraded=True with the reason (Forbidden for a 403, naming verb, resource and
    namespace), and a Warning Event when that is new. The plan in status stays as it is."""
    denied = [p for p in problems if isinstance(p, ForbiddenError)]
    reason = "Forbidden" if denied else "ApplyFailed"
    message = "; ".join(dict.fromkeys(str(p) for p in (denied or problems)))[:1000]
    previous = infd.status.conditions if infd.status else []
    degraded = condition(previous, "Degraded", True, reason, message, now, infd.metadata.generation)
    status["conditions"] = [
        degraded if c["type"] == "Degraded" else c for c in status["conditions"]
    ]
    if _newly(body, "Degraded", reason, message):
        kopf.warn(body, reason=reason, message=message)


def _namespace_spend_rate(
    namespace: str,
    deployments: Mapping[tuple[str, str], InferenceDeployment],
    pools: Mapping[str, GPUNodePool],
    child_index: Mapping[Any, Any],
) -> float:
    """$/h of the replicas actually running in the namespace, at their share of a node."""
    rate = 0.0
    for key, infd in deployments.items():
        if key[0] != namespace:
            continue
        for pool_name, ready in _ready_by_pool(child_index, key).items():
            pool = pools.get(pool_name)
            profile = profile_for(infd, pool) if pool else None
            if pool is None or profile is None or pool.spec.capacity_type == "reserved":
                continue
            slots = pool.spec.gpus_per_node // profile.gpus_per_replica
            rate += ready * pool.spec.price_per_node_hour / slots
    return rate


def budget_status(budget: CostBudget, rate: float, now: datetime, planned: Any) -> dict[str, Any]:
    """Accrue spend since the last accrual at `rate` $/h; roll over at the month's start."""
    old = budget.status
    period = month_start(now)
    spend = old.spend if old and old.period_start and old.period_start >= period else 0.0
    since = old.last_accrual_time if old and old.last_accrual_time else now
    since = max(since, period)
    spend += rate * max(0.0, (now - since).total_seconds()) / 3600.0
    projected = spend + rate * hours_left_in_month(now)
    limits = budget.spec.limits
    shares = []
    if limits.hourly:
        shares.append(rate / limits.hourly)
    if limits.monthly:
        shares.append(projected / limits.monthly)
    share = max(shares, default=0.0)
    thresholds = sorted(budget.spec.alert_thresholds)
    if share > 1.0 + 1e-9:
        state = "Exceeded"
    elif thresholds and share >= thresholds[0]:
        state = "Warning"
    else:
        state = "Within"
    crossed = [t for t in thresholds if share >= t]
    message = (
        f"spending {rate:,.2f} {budget.spec.currency}/h; {spend:,.2f} so far this month, "
        f"{projected:,.2f} projected"
    )
    if crossed:
        message += f"; at {share:.0%} of a limit (alert threshold {crossed[-1]:.0%})"
    previous = old.conditions if old else []
    gen = budget.metadata.generation
    headroom = (limits.hourly - rate) if limits.hourly else None
    limited = list(planned.limited) if planned is not None else []
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "periodStart": period.isoformat(),
        "spend": round(spend, 6),
        "projectedSpend": round(projected, 4),
        "hourlySpend": round(rate, 4),
        "limitedDeployments": limited,
        "lastAccrualTime": now.isoformat(),
        "state": state,
        "conditions": [
            condition(previous, "Exceeded", state == "Exceeded", state, message, now, gen),
            condition(previous, "Warning", state != "Within", state, message, now, gen),
            condition(previous, "Ready", True, "Accruing", message, now, gen),
        ],
    }
    if headroom is not None:
        status["hourlyHeadroom"] = round(headroom, 4)
    return status

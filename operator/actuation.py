"""Making the cluster follow the plan: child Deployments and pool sizes.

Level-based: the live child (from the watch-fed index) is compared with the desired one on
the fields the operator sets, so a hand edit, a missed event or a restart converges, and a
child that already matches costs no request at all. Each child and each pool is its own
error scope: one failing never stops the others; what failed is returned for status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator import metrics
from peakwise.operator.children import (
    TEMPLATE_HASH,
    child_deployment,
    children_to_remove,
    needs_apply,
    with_template_hash,
)
from peakwise.operator.interruptions import InterruptionTracker
from peakwise.operator.kube import KubeAdapter
from peakwise.operator.providers import (
    NodePoolProvider,
    ProviderError,
    ProviderForbiddenError,
    provider_for,
)
from peakwise.operator.scale_target import TargetObservation
from peakwise.operator.status import PoolObservation, PoolScaling
from peakwise.operator.template_policy import TemplatePolicy, TemplateRejectedError

log = logging.getLogger(__name__)


@dataclass
class Actuator:
    """What applying the plan needs and remembers between rounds (lives in kopf's memo)."""

    kube: KubeAdapter
    api_client: Any
    template_policy: TemplatePolicy = field(default_factory=TemplatePolicy)
    """What a tenant's pod template may ask for: children are only built under it."""
    interruptions: InterruptionTracker = field(default_factory=InterruptionTracker)
    applied: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    """(template hash, generation) of each child after this process last applied it."""
    drain_timeout: timedelta = timedelta(minutes=10)
    """How long a child the plan dropped waits for its replacement to be Ready."""
    unplanned_since: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """When the plan first dropped each child still waiting for its replacement."""

    def provider(self, pool: GPUNodePool) -> NodePoolProvider:
        return provider_for(pool, self.api_client)

    def forget_children(self, namespace: str, names: Sequence[str]) -> None:
        for name in names:
            self.applied.pop((namespace, name), None)

    async def apply_children(
        self,
        infd: InferenceDeployment,
        uid: str,
        replicas: Mapping[str, int],
        pools: Mapping[str, GPUNodePool],
        children: Sequence[Mapping[str, Any]],
    ) -> list[Exception]:
        """Apply each child whose live state differs from what `replicas` wants; the failures."""
        existing = {c["pool"]: c for c in children}
        namespace = infd.metadata.namespace or "default"
        problems: list[Exception] = []
        for pool_name, n in replicas.items():
            pool = pools.get(pool_name)
            if pool is None or n <= 0:
                continue
            try:
                manifest = with_template_hash(
                    child_deployment(infd, uid, pool, n, self.template_policy)
                )
            except TemplateRejectedError as rejected:  # never a child the team could not make
                problems.append(rejected)
                break
            name = manifest["metadata"]["name"]
            child = existing.get(pool_name)
            why = needs_apply(
                manifest,
                child["live"] if child else None,
                child["generation"] if child else None,
                self.applied.get((namespace, name)),
            )
            if not why:
                continue
            log.info("applying child %s/%s: %s", namespace, name, why)
            try:
                generation = await asyncio.to_thread(self.kube.apply_deployment, manifest)
            except Exception as error:  # one child failing must not stop the others
                metrics.reconcile_errors.labels("actuate").inc()
                problems.append(error)
                continue
            if generation is not None:
                digest = manifest["metadata"]["annotations"][TEMPLATE_HASH]
                self.applied[(namespace, name)] = (digest, generation)
        return problems

    async def follow_plan(
        self,
        infd: InferenceDeployment,
        uid: str,
        replicas: Mapping[str, int],
        pools: Mapping[str, GPUNodePool],
        children: Sequence[Mapping[str, Any]],
        hold: Sequence[str],
        now: datetime,
    ) -> list[Exception]:
        """Make the children match the plan: apply what differs, delete the children of pools
        the plan no longer uses once their replacements are Ready (children_to_remove), except
        those of pools in `hold` (missing or invalid pools: their children keep their size
        until the pool is back or removed for good).
        Returns what failed (403s included); the rest is done regardless."""
        problems = await self.apply_children(infd, uid, replicas, pools, children)
        namespace, parent = infd.metadata.namespace or "default", infd.metadata.name
        unused = {
            c["name"] for c in children if replicas.get(c["pool"], 0) <= 0 and c["pool"] not in hold
        }
        since = {}
        for name in unused:
            since[name] = self.unplanned_since.setdefault((namespace, name), now)
        for c in children:  # planned again: its wait starts afresh next time
            if c["name"] not in unused:
                self.unplanned_since.pop((namespace, c["name"]), None)
        removable = set(
            children_to_remove(children, replicas, hold, since, now, self.drain_timeout)
        )
        for child in children:
            if child["name"] not in removable:
                continue
            self.unplanned_since.pop((namespace, child["name"]), None)
            try:
                await asyncio.to_thread(
                    self.kube.delete_deployment, namespace, child["name"], parent
                )
            except Exception as error:
                metrics.reconcile_errors.labels("actuate").inc()
                problems.append(error)
            self.applied.pop((namespace, child["name"]), None)
        return problems

    async def scale_target(
        self, infd: InferenceDeployment, observed: TargetObservation, replicas: int
    ) -> list[Exception]:
        """Write a targetRef's replicas through /scale when they differ; the failures."""
        if observed.replicas == replicas:
            return []
        namespace = infd.metadata.namespace or "default"
        log.info(
            "scaling %s %s/%s from %s to %d",
            observed.kind,
            namespace,
            observed.name,
            observed.replicas,
            replicas,
        )
        try:
            await asyncio.to_thread(
                self.kube.scale_workload,
                namespace,
                observed.kind,
                observed.name,
                replicas,
                infd.metadata.name,
            )
        except Exception as error:
            metrics.reconcile_errors.labels("actuate").inc()
            return [error]
        return []

    async def scale_pool(
        self, pool: GPUNodePool, observed: PoolObservation, desired: int, now: datetime
    ) -> PoolScaling:
        """Ask the pool's provider for `desired` nodes when it has another number."""
        if desired == observed.nodes:
            return PoolScaling(desired)
        name = pool.metadata.name
        try:
            await asyncio.to_thread(self.provider(pool).set_nodes, pool, desired)
        except ProviderError as error:
            metrics.reconcile_errors.labels("provider").inc()
            reason = "Forbidden" if isinstance(error, ProviderForbiddenError) else "ProviderError"
            return PoolScaling(desired, asked=True, error=str(error), error_reason=reason)
        # Removals that follow are the operator's own, not interruptions.
        self.interruptions.scaled(name, observed.nodes, desired, now)
        return PoolScaling(desired, asked=True)

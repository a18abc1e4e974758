"""Billing-true spend: what each namespace is billed for the GPU nodes that exist, not for the
replicas that happen to be Ready.

A cloud bills nodes, Ready or not, whatever runs on them. So the $/h of a pool is its nodes
(beyond the reserved ones, which are paid for already) at its price, and that is shared among
the namespaces whose pods hold its GPUs, by the GPUs they hold: the GPU requests of pods
*scheduled* on the pool's nodes (bound to a node, not finished, Ready or not), or those the
plan wants there when more (nodes provisioned ahead of pods). Every pod counts, whoever
created it and however it is labelled, so neither a pod that never turns Ready nor a
Deployment labelled like a child escapes the bill. A namespace pays for the GPUs it holds, at
the pool's price per GPU, never for a GPU it does not hold: the free GPUs of a part-used node,
idle minimum nodes and nodes draining are `unattributed`, the platform's. So what a
namespace is billed is at most what the planner priced its replicas at, and a Hard budget
that caps the plan caps the bill (the free slot beside another team's pod is no one's debt).

Pure: counts in, dollars out. The operator gathers the counts (nodes per pool, scheduled
pods' GPU requests per namespace and pool) and accrues the result per interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from peakwise.api.gpunodepool import GPUNodePoolSpec


@dataclass(frozen=True)
class PoolUsage:
    """One pool as observed: its nodes, and the GPUs each namespace holds on them."""

    name: str
    spec: GPUNodePoolSpec
    nodes: int
    """Nodes that exist (provisioning, Ready or not): what the provider bills."""
    scheduled_gpus: Mapping[str, int] = field(default_factory=dict)
    """Per namespace: GPU requests of its pods bound to this pool's nodes and not finished."""
    planned_gpus: Mapping[str, int] = field(default_factory=dict)
    """Per namespace: GPUs the plan wants on this pool (desired replicas × GPUs each)."""


@dataclass(frozen=True)
class Spend:
    """The $/h each namespace is billed now, and what is left to the platform."""

    billed: Mapping[str, float]
    """Per namespace: its share of billed nodes (spot, on-demand, reserved overflow)."""
    reserved: Mapping[str, float]
    """Per namespace: its share of reserved nodes at their effective price (already paid
    for; reported, not billed again)."""
    unattributed: float
    """Billed $/h of nodes no namespace holds GPUs on (minimum nodes, idle capacity)."""
    by_pool: Mapping[str, float]
    """Billed $/h of each pool."""

    @property
    def total(self) -> float:
        return sum(self.billed.values()) + self.unattributed


def _split(amount: float, holders: Mapping[str, int]) -> dict[str, float]:
    held = sum(n for n in holders.values() if n > 0)
    if held <= 0 or amount <= 0:
        return {}
    return {ns: amount * n / held for ns, n in sorted(holders.items()) if n > 0}


def namespace_spend(pools: Sequence[PoolUsage]) -> Spend:
    """Each pool's billed $/h split among namespaces by the GPUs they hold on it; the GPUs
    no one holds are the platform's."""
    billed: dict[str, float] = {}
    reserved: dict[str, float] = {}
    by_pool: dict[str, float] = {}
    unattributed = 0.0
    for pool in pools:
        spec = pool.spec
        nodes = max(0, pool.nodes)
        free = min(nodes, spec.reserved_nodes) if spec.capacity_type == "reserved" else 0
        cost = (nodes - free) * spec.price_per_node_hour
        by_pool[pool.name] = cost
        holders = {
            ns: max(pool.scheduled_gpus.get(ns, 0), pool.planned_gpus.get(ns, 0))
            for ns in {*pool.scheduled_gpus, *pool.planned_gpus}
        }
        held = sum(n for n in holders.values() if n > 0)
        gpus, free_gpus = nodes * spec.gpus_per_node, free * spec.gpus_per_node
        # Held GPUs fill the paid-for reserved nodes first; past them each is billed at the
        # price per GPU, and held beyond what exists (pods planned ahead of their nodes) the
        # nodes that do exist are all theirs.
        in_use = min(held, gpus)
        billed_gpus = max(0, in_use - free_gpus)
        per_gpu = spec.price_per_node_hour / spec.gpus_per_node
        shares = _split(per_gpu * billed_gpus, holders)
        unattributed += max(0.0, cost - sum(shares.values()))
        for ns, amount in shares.items():
            billed[ns] = billed.get(ns, 0.0) + amount
        for ns, amount in _split(per_gpu * min(in_use, free_gpus), holders).items():
            reserved[ns] = reserved.get(ns, 0.0) + amount
    return Spend(billed=billed, reserved=reserved, unattributed=unattributed, by_pool=by_pool)

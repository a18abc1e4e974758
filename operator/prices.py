"""Live node prices from OpenCost, read through the Prometheus the operator already uses.

A GPUNodePool with `priceSource.openCost` is priced at the mean of OpenCost's
`node_total_hourly_cost` (or `node_gpu_hourly_cost`) over the pool's nodes, matched on the
series' `node` label. `pricePerNodeHour` stays the fallback: a pool with no nodes yet keeps
the last live price it had (its status), else the spec price, and the `PriceSource` condition
says which. The round plans with the price it found, so plans, budgets and the demo follow it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from peakwise.api.gpunodepool import GPUNodePool

log = logging.getLogger(__name__)


class InstantQuery(Protocol):
    def instant(self, query: str) -> list[float]:
        """The values of an instant query, one per series (raises on failure)."""
        ...


@dataclass(frozen=True)
class PriceReading:
    """The price a pool is planned with this round, and where it came from."""

    price: float
    source: str
    """spec, opencost (N nodes), or last seen."""
    live: bool
    problem: str = ""
    """Why the live price is not used, when it is not."""


def opencost_query(metric: str, nodes: Sequence[str]) -> str:
    """PromQL for the mean of `metric` over these nodes. Node names are DNS names: only the
    dot is a regex metacharacter, escaped for RE2 and then for the PromQL string (Go escapes,
    where a backslash before a dash would be an error)."""
    pattern = "|".join(n.replace(".", "\\\\.") for n in sorted(nodes))
    return f'avg({metric}{{node=~"{pattern}"}})'


def read_price(
    pool: GPUNodePool, nodes: Sequence[str], source: InstantQuery | None
) -> PriceReading:
    """The pool's node price this round (never raises: a failure falls back)."""
    spec = pool.spec
    fallback = PriceReading(spec.price_per_node_hour, "spec", live=False)
    opencost = spec.price_source.open_cost if spec.price_source else None
    if opencost is None:
        return fallback
    status = pool.status
    last = status.price_per_node_hour if status else None
    last_live = (
        status is not None and last is not None and status.price_source.startswith("opencost")
    )

    def fall_back(problem: str) -> PriceReading:
        if last_live and last is not None:
            return PriceReading(last, "opencost (last seen)", live=False, problem=problem)
        return PriceReading(spec.price_per_node_hour, "spec", live=False, problem=problem)

    if source is None:
        return fall_back("no Prometheus to read OpenCost from")
    if not nodes:
        return fall_back("the pool has no nodes to price yet")
    query = opencost_query(opencost.metric, nodes)
    try:
        values = source.instant(query)
    except Exception as error:  # an unreachable Prometheus never stops the round
        return fall_back(f"reading {opencost.metric} failed: {error}")
    price = values[0] if values else math.nan
    if not math.isfinite(price) or price <= 0:
        return fall_back(f"no {opencost.metric} series for the pool's nodes ({query})")
    return PriceReading(round(price, 6), f"opencost {opencost.metric} ({len(nodes)} nodes)", True)


def read_prices(
    pools: Mapping[str, GPUNodePool],
    nodes: Mapping[str, Sequence[str]],
    source: InstantQuery | None,
) -> dict[str, PriceReading]:
    return {name: read_price(pool, nodes.get(name, ()), source) for name, pool in pools.items()}


def priced(pool: GPUNodePool, reading: PriceReading) -> GPUNodePool:
    """The pool as the planner sees it: at the price found this round."""
    if reading.price == pool.spec.price_per_node_hour:
        return pool
    spec = pool.spec.model_copy(update={"price_per_node_hour": reading.price})
    return pool.model_copy(update={"spec": spec})

"""Commitment advice in ``GPUNodePool.status.advice``, refreshed daily: advice only.

In Recommend fashion: the operator says how many nodes of each pool's GPU type the fleet
should commit to (reserve), at each commitment term priced, with the cost curve around the
optimum, the break-even utilisation, its assumptions and the date; it never buys or changes
anything. The advice is ``peakwise.backtest.advice``'s, on the last 14 days of every
service's demand (through the operator's Prometheus adapter, whose cache the planning
rounds share), the same as ``peakwise advise`` prints.

A timer on every pool checks hourly; the advice of a GPU type is computed at most once a
day and shared by its pools. Terms are priced by ``peakwise.dev/reserved-price-<term>``
annotations on the type's pools (else the reserved pool's own price, as ``current``); spot
is priced at the spot pool's observed interruption rate (its status).

On by default (``--no-commitment-advice`` turns it off). The fleet's history is streamed:
each service's 14 days are fetched, turned into its GPU need and added to its GPU type's
sums before the next service is fetched, so a type's advice holds a few series, not the
fleet's history (at 1,000 services that peaked at gigabytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from peakwise.api.gpunodepool import (
    CommitmentAdvice,
    CommitmentCostPoint,
    CommitmentTermAdvice,
    GPUNodePool,
)
from peakwise.backtest.advice import (
    Advice,
    AdviceError,
    FleetNeed,
    advise,
    describe_assumptions,
    market_for,
    service_need,
)
from peakwise.backtest.fleet import home_gpu_type, key_of, on_grid
from peakwise.operator import indexes
from peakwise.operator.controller import parse_all
from peakwise.operator.forecasts import STEP_SECONDS, HistorySource
from peakwise.operator.status import wire

GROUP, VERSION = "peakwise.dev", "v1alpha1"
REFRESH = timedelta(days=1)
"""How old an advice may get before it is computed again."""
CHECK_SECONDS = 3600.0
"""How often each pool's timer looks whether its advice is due."""
HISTORY = timedelta(days=14)
"""Demand history the advice rests on."""
log = logging.getLogger(__name__)


@dataclass
class _Computed:
    at: datetime
    advice: CommitmentAdvice


_COMPUTED: dict[str, _Computed] = {}
"""The latest advice of each GPU type (one operator per process)."""
_LOCKS: dict[str, asyncio.Lock] = {}


def advice_status(advice: Advice, now: datetime) -> CommitmentAdvice:
    """The status form of an advice (pure)."""
    best = advice.best
    return CommitmentAdvice(
        gpu_type=advice.gpu_type,
        recommended_term=best.term,
        recommended_nodes=best.nodes,
        current_nodes=advice.market.current_reserved_nodes,
        monthly_cost=round(best.monthly_cost, 2),
        monthly_cost_now=(
            round(advice.monthly_cost_now, 2) if advice.monthly_cost_now is not None else None
        ),
        break_even_utilization=round(best.break_even_on_demand, 4),
        terms=[
            CommitmentTermAdvice(
                term=t.term,
                price_per_node_hour=t.price_per_node_hour,
                nodes=t.nodes,
                monthly_cost=round(t.monthly_cost, 2),
                monthly_saving=round(t.saving, 2),
                break_even_utilization=round(t.break_even_on_demand, 4),
            )
            for t in advice.terms
        ][:16],
        curve=[
            CommitmentCostPoint(nodes=p.nodes, monthly_cost=round(p.monthly_cost, 2))
            for p in best.curve
        ],
        assumptions=list(advice.assumptions)[:16],
        message=advice.summary()[:1000],
        computed_at=now,
    )


def no_advice(gpu_type: str, why: str, now: datetime) -> CommitmentAdvice:
    return CommitmentAdvice(gpu_type=gpu_type, message=f"no advice: {why}"[:1000], computed_at=now)


def compute_advice(
    source: HistorySource, gpu_type: str, snapshot: indexes.Snapshot, now: datetime
) -> CommitmentAdvice:
    """Fetch the fleet's history and advise on `gpu_type` (blocking: network and CPU).

    Streamed: each service's history is fetched, turned into its GPU need and added to the
    type's sums before the next is fetched, so the memory it takes is two series and one
    service's, not the whole fleet's history (at 1,000 services that held gigabytes).
    """
    deployments, pools, _, _ = parse_all(snapshot)
    all_pools = tuple(pools.values())
    same = [p for p in all_pools if p.spec.gpu_type == gpu_type]
    gpus_per_node = max((p.spec.gpus_per_node for p in same), default=1)
    end = now.replace(second=0, microsecond=0)
    start = end - HISTORY
    minutes = round(HISTORY.total_seconds() / STEP_SECONDS) + 1
    total = FleetNeed(minutes)
    left_out = []
    try:
        # The services that count on this type (their cheapest on-demand one), as the
        # backtest's advice counts them; budgets do not enter (it prices what the shortfall
        # targets need).
        for infd in sorted(deployments.values(), key=key_of):
            if home_gpu_type(infd, all_pools) != gpu_type:
                continue
            namespace, name = key_of(infd)
            try:
                series = source.fetch(infd.spec.demand.query, start, end, STEP_SECONDS)
            except Exception as error:  # one service's history never stops the others' advice
                left_out.append(f"{namespace}/{name} ({error})")
                continue
            values = on_grid(series, start, minutes)
            del series
            total.add(
                service_need(f"{namespace}/{name}", infd.spec, values, gpu_type, gpus_per_node)
            )
        if not total.services:
            return no_advice(gpu_type, "no service with demand history runs on this GPU type", now)
        market = market_for(gpu_type, all_pools, load_time=total.load_time)
        found = advise(total, market, describe_assumptions(market, total, minutes))
    except AdviceError as error:
        return no_advice(gpu_type, f"{gpu_type}: {error}", now)
    status = advice_status(found, now)
    if left_out:
        status.assumptions = [*status.assumptions, "left out: " + "; ".join(left_out)][:16]
    return status


def _compute_and_log(
    source: HistorySource, gpu_type: str, snapshot: indexes.Snapshot, now: datetime
) -> CommitmentAdvice:
    """`compute_advice` in a worker thread, its wall and CPU time logged."""
    started, cpu = time.monotonic(), time.thread_time()
    advice = compute_advice(source, gpu_type, snapshot, now)
    log.info(
        "commitment advice for %s in %.1fs (%.1fs CPU): %s",
        gpu_type,
        time.monotonic() - started,
        time.thread_time() - cpu,
        advice.message,
    )
    return advice


def _due(live: Mapping[str, Any], now: datetime) -> bool:
    text = live.get("computedAt")
    if not isinstance(text, str):
        return True
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return True
    return now - at >= REFRESH


async def refresh_advice(
    body: kopf.Body, name: str, patch: kopf.Patch, memo: kopf.Memo, **index_kwargs: Any
) -> None:
    """Every hour: write the pool's advice when it is missing or a day old."""
    now = datetime.now(UTC)
    live = (body.get("status") or {}).get("advice") or {}
    if not _due(live, now):
        return
    try:
        pool = GPUNodePool.model_validate(dict(body))
    except ValueError:
        return  # the pool's own timer reports an invalid pool
    gpu_type = pool.spec.gpu_type
    # The pools of one type share one computation: their timers fire together, and the
    # second waits for the first's advice instead of computing its own. (Kept here, not in
    # the memo: kopf gives each object a shallow copy of it.)
    cache = _COMPUTED
    async with _LOCKS.setdefault(gpu_type, asyncio.Lock()):
        computed = cache.get(gpu_type)
        if computed is None or now - computed.at >= REFRESH:
            snapshot = indexes.snapshot({n: index_kwargs[n] for n in indexes.NAMES})
            source = memo.runtime.controller.forecasts.source
            try:
                advice = await asyncio.to_thread(_compute_and_log, source, gpu_type, snapshot, now)
            except Exception as error:
                log.exception("commitment advice for %s", gpu_type)
                raise kopf.TemporaryError(
                    f"commitment advice failed: {error}", delay=300
                ) from error
            computed = _Computed(now, advice)
            cache[gpu_type] = computed
    patch.setdefault("status", {})["advice"] = wire(computed.advice)


def register(registry: kopf.OperatorRegistry) -> None:
    """The advice timer on every GPUNodePool (a line in handlers.register)."""
    kopf.timer(
        GROUP,
        VERSION,
        "gpunodepools",
        id="advice",
        interval=CHECK_SECONDS,
        initial_delay=15.0,
        registry=registry,
    )(refresh_advice)

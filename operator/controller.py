"""One planning round for the whole cluster, shared by every handler until it goes stale.

Every InferenceDeployment has its own kopf timer, but deployments share pools and budgets, so
they are planned jointly: the first timer to find the round stale forecasts and plans all of
them; the others reuse that plan and only actuate their own children and write their own
status. State that must survive a restart lives in the objects' status, not here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from peakwise.api.costbudget import CostBudget
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator import memory, metrics
from peakwise.operator.forecasts import ForecastResult, ForecastService
from peakwise.operator.state import (
    Key,
    Observed,
    PoolObservation,
    enforced_pool_nodes,
    plan_enforce_first,
    plan_input,
)
from peakwise.planner import Plan, PoolState
from peakwise.planner.capacity import lead_time

Body = Mapping[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What the indexes held when a round started (plain dicts, as kopf gives them)."""

    deployments: Mapping[Key, Body]
    pools: Mapping[str, Body]
    budgets: Mapping[str, Body]
    children: Mapping[Key, Mapping[str, int]]
    pool_nodes: Mapping[str, PoolObservation]


@dataclass
class Round:
    at: datetime
    plan: Plan
    deployments: dict[Key, InferenceDeployment]
    pools: dict[str, GPUNodePool]
    forecasts: dict[Key, ForecastResult]
    pool_targets: dict[str, int]
    invalid: dict[str, str] = field(default_factory=dict)
    """Objects that failed validation, with the reason (reported in their status/events)."""


def parse_all(
    snapshot: Snapshot,
) -> tuple[
    dict[Key, InferenceDeployment], dict[str, GPUNodePool], dict[str, CostBudget], dict[str, str]
]:
    invalid: dict[str, str] = {}
    deployments: dict[Key, InferenceDeployment] = {}
    for key, body in snapshot.deployments.items():
        try:
            deployments[key] = InferenceDeployment.model_validate(dict(body))
        except ValidationError as error:
            invalid[f"InferenceDeployment {key[0]}/{key[1]}"] = _first(error)
    pools: dict[str, GPUNodePool] = {}
    for name, body in snapshot.pools.items():
        try:
            pools[name] = GPUNodePool.model_validate(dict(body))
        except ValidationError as error:
            invalid[f"GPUNodePool {name}"] = _first(error)
    budgets: dict[str, CostBudget] = {}
    for ns, body in snapshot.budgets.items():
        try:
            budgets[ns] = CostBudget.model_validate(dict(body))
        except ValidationError as error:
            invalid[f"CostBudget {ns}"] = _first(error)
    return deployments, pools, budgets, invalid


def _first(error: ValidationError) -> str:
    e = error.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"


class Controller:
    def __init__(
        self,
        forecasts: ForecastService,
        interval: timedelta,
        clock: Callable[[], datetime],
        forecast_concurrency: int = 8,
        fit_wait: timedelta = timedelta(seconds=15),
    ) -> None:
        self.forecasts = forecasts
        self.interval = interval
        self.clock = clock
        self._round: Round | None = None
        self._lock = asyncio.Lock()
        self._stale = False
        self._semaphore = asyncio.Semaphore(forecast_concurrency)
        self.fit_wait = fit_wait
        """How long a round waits for first fits before sizing the rest reactively."""
        self._finished_at = datetime.min.replace(tzinfo=UTC)
        self.interrupted_at: dict[str, datetime] = {}
        """When each pool last lost a node to an interruption (seen by this process)."""

    def record_interruption(self, pool: str) -> None:
        self.interrupted_at[pool] = self.clock()
        self.invalidate()

    def invalidate(self) -> None:
        """Something happened (a spot node went away): the next handler re-plans at once."""
        self._stale = True

    def _fresh(self, now: datetime, key: Key | None, generation: int | None) -> bool:
        current = self._round
        if current is None or self._stale:
            return False
        # Judged from when the round finished: a round longer than the interval would
        # otherwise be stale on arrival and rounds would run back to back.
        if now - self._finished_at >= self.interval * 0.8:
            return False
        # A new or changed object is planned when its own timer asks, not after the interval.
        if key is not None:
            known = current.deployments.get(key)
            return known is not None and known.metadata.generation == generation
        return True

    async def round(
        self,
        view: Callable[[], Snapshot],
        key: Key | None = None,
        generation: int | None = None,
    ) -> Round:
        """The current round, recomputed from `view()` when stale or when the InferenceDeployment
        `key` at `generation` is not in it. The snapshot is only taken when recomputing."""
        async with self._lock:
            now = self.clock()
            if self._fresh(now, key, generation) and self._round is not None:
                return self._round
            started = time.perf_counter()
            self._stale = False
            self._round = await self._compute(view(), now)
            self._finished_at = self.clock()
            metrics.round_seconds.observe(time.perf_counter() - started)
            # A round frees a copy of every service's history: hand those pages back.
            await asyncio.to_thread(memory.release_free_memory)
            return self._round

    async def _compute(self, snapshot: Snapshot, now: datetime) -> Round:
        deployments, pools, budgets, invalid = parse_all(snapshot)
        pool_states = [PoolState(p.metadata.name, p.spec) for p in pools.values()]
        leads = {key: lead_time(d.spec, pool_states) for key, d in deployments.items()}
        for key, infd in deployments.items():
            self.forecasts.schedule(key, infd.spec, leads[key], now)
        forecasting = time.monotonic()
        deadline = forecasting + self.fit_wait.total_seconds()
        await asyncio.to_thread(self.forecasts.wait_for_fits, deadline)

        async def one(key: Key, infd: InferenceDeployment) -> tuple[Key, ForecastResult]:
            async with self._semaphore:
                result = await asyncio.to_thread(
                    self.forecasts.forecast, key, infd.spec, leads[key], now, False
                )
            return key, result

        results = dict(await asyncio.gather(*(one(k, d) for k, d in deployments.items())))
        forecast_seconds = time.monotonic() - forecasting
        observed = Observed(
            now=now,
            deployments=list(deployments.values()),
            pools=list(pools.values()),
            budgets=list(budgets.values()),
            children=snapshot.children,
            forecasts=results,
            pool_nodes=snapshot.pool_nodes,
            interrupted_at=dict(self.interrupted_at),
        )
        started = time.monotonic()
        planned = await asyncio.to_thread(plan_enforce_first, plan_input(observed))
        log.info(
            "round: %d deployments (%d planned provisionally or reactively, %d fits pending); "
            "forecasts %.1fs, plan %.1fs",
            len(deployments),
            sum(1 for r in results.values() if r.fallback),
            self.forecasts.pending_fits(),
            forecast_seconds,
            time.monotonic() - started,
        )
        targets = enforced_pool_nodes(planned, list(deployments.values()), pools)
        self._export(planned, pools, results)
        return Round(now, planned, deployments, pools, results, targets, invalid)

    @staticmethod
    def _export(
        planned: Plan,
        pools: Mapping[str, GPUNodePool],
        results: Mapping[Key, ForecastResult],
    ) -> None:
        for key, d in planned.deployments.items():
            result = results.get(key)
            if result and result.forecast:
                metrics.demand_forecast.labels(*key).set(result.forecast.peak)
            if result:
                metrics.forecast_reactive.labels(*key).set(1 if result.fallback else 0)
            if result and result.observed is not None:
                metrics.demand_actual.labels(*key).set(result.observed)
            if result and result.info:
                if result.info.backtest_loss is not None and math.isfinite(
                    result.info.backtest_loss
                ):
                    metrics.forecast_loss.labels(*key).set(result.info.backtest_loss)
                if result.info.coverage is not None:
                    metrics.forecast_coverage.labels(*key).set(result.info.coverage)
            for pool_name, n in d.replicas.items():
                tier = pools[pool_name].spec.capacity_type if pool_name in pools else "unknown"
                metrics.desired_replicas.labels(*key, pool_name, tier).set(n)
        for ns, p in planned.namespaces.items():
            metrics.cost_hourly.labels(ns).set(p.hourly_cost)
            if p.hourly_cap is not None:
                metrics.budget_limit_hourly.labels(ns).set(p.hourly_cap)
                metrics.budget_headroom_hourly.labels(ns).set(p.hourly_cap - p.hourly_cost)

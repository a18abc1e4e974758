"""One planning round for the whole cluster, shared by every handler until it goes stale.

Every InferenceDeployment has its own kopf timer, but deployments share pools and budgets, so
they are planned jointly: the first timer to find the round stale forecasts and plans all of
them; the others reuse that plan and only actuate their own children and write their own
status.

Each object is parsed, bounded and forecast in its own error scope: an object that cannot be
planned is left out of the round with the reason (its status says so), and the others are
planned as if it did not exist.

What a restart must not lose lives in the objects' status. The one thing kept here between
rounds is each deployment's recent demand targets (the scale-down memory): the round updates
them every time, while status is written only when something a person or a restart needs has
changed. After a restart they come from status, and the highest of them is held a little
longer, since targets planned after the last status write are not in it
(`restarted_history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from pydantic import ValidationError

from peakwise.api.common import parse_duration
from peakwise.api.costbudget import CostBudget
from peakwise.api.errors import describe
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.operator import memory, metrics
from peakwise.operator.forecasts import CarriedAchieved, ForecastResult, ForecastService
from peakwise.operator.indexes import Key, Snapshot
from peakwise.operator.integrations import RoundEdges, read_targets
from peakwise.operator.planning import (
    Observed,
    enforced_pool_nodes,
    plan_enforce_first,
    plan_input,
    pool_usage,
)
from peakwise.operator.prices import PriceReading, priced, read_prices
from peakwise.operator.scale_target import TargetObservation, planning_spec, target_current
from peakwise.operator.template_policy import TemplatePolicy, check_template
from peakwise.planner import Plan, PoolState, TenancyPolicy
from peakwise.planner.billing import Spend, namespace_spend
from peakwise.planner.budget import hours_left_in_month
from peakwise.planner.capacity import lead_time
from peakwise.planner.tenancy import EffectiveBudget, ObservedBudget, effective_budgets

log = logging.getLogger(__name__)
History = tuple[tuple[datetime, float], ...]


@dataclass
class Round:
    number: int
    at: datetime
    plan: Plan
    deployments: dict[Key, InferenceDeployment]
    pools: dict[str, GPUNodePool]
    forecasts: dict[Key, ForecastResult]
    leads: dict[Key, timedelta]
    pool_targets: dict[str, int]
    invalid: dict[str, str] = field(default_factory=dict)
    """Objects left out of the round ("InferenceDeployment ns/name" ...), with the reason."""
    effective: dict[str, EffectiveBudget] = field(default_factory=dict)
    """The budget in force in each namespace, and why (tenancy.effective_budgets)."""
    spend: Spend | None = None
    """What each namespace is billed now (billing.namespace_spend)."""
    started: float = 0.0
    """time.monotonic() when the round started, for the full-round metric."""
    targets: dict[Key, TargetObservation] = field(default_factory=dict)
    """The workload each targetRef names, as read this round."""
    prices: dict[str, PriceReading] = field(default_factory=dict)
    """The node price each pool was planned with, and its source."""
    retention: timedelta | None = None
    """How long Prometheus keeps samples, when it says."""


def object_name(kind: str, key: Key | str) -> str:
    return f"{kind} {'/'.join(key) if isinstance(key, tuple) else key}"


Parsed = TypeVar("Parsed", InferenceDeployment, GPUNodePool, CostBudget)


def _parse(model: type[Parsed], body: Mapping[str, Any]) -> Parsed | str:
    """The object as its model, or why not. A value the schema lets through but Python
    cannot hold (a duration of a billion days) is a reason too, never an exception."""
    try:
        return model.model_validate(dict(body))
    except ValidationError as error:
        return describe(error)
    except (ArithmeticError, ValueError) as error:
        return f"a value is out of range: {error}"


def parse_all(
    snapshot: Snapshot,
) -> tuple[
    dict[Key, InferenceDeployment], dict[str, GPUNodePool], list[ObservedBudget], dict[str, str]
]:
    """Every object that validates, and why the others do not."""
    invalid: dict[str, str] = {}
    deployments: dict[Key, InferenceDeployment] = {}
    for key, body in snapshot.deployments.items():
        infd = _parse(InferenceDeployment, body)
        if isinstance(infd, str):
            invalid[object_name("InferenceDeployment", key)] = infd
        else:
            deployments[key] = infd
    pools: dict[str, GPUNodePool] = {}
    for name, body in snapshot.pools.items():
        pool = _parse(GPUNodePool, body)
        if isinstance(pool, str):
            invalid[object_name("GPUNodePool", name)] = pool
        else:
            pools[name] = pool
    budgets: list[ObservedBudget] = []
    for ns, bodies in snapshot.budgets.items():
        for body in bodies:
            name = str((body.get("metadata") or {}).get("name", ""))
            budget = _parse(CostBudget, body)
            if isinstance(budget, str):
                invalid[f"CostBudget {ns}/{name}"] = budget
                budgets.append(ObservedBudget(ns, name, None, budget))
            else:
                spend = budget.status.spend if budget.status else 0.0
                budgets.append(ObservedBudget(ns, name, budget.spec, spend=spend))
    return deployments, pools, budgets, invalid


def deleting(pools: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The pools marked for deletion (their finalizer holds them while they drain)."""
    return {n for n, body in pools.items() if (body.get("metadata") or {}).get("deletionTimestamp")}


def closed(pool: GPUNodePool) -> GPUNodePool:
    """The pool as the planner sees it while it drains: no room for any replica."""
    spec = pool.spec.model_copy(update={"max_nodes": 0, "min_nodes": 0})
    return pool.model_copy(update={"spec": spec})


def _recommend_only(infd: InferenceDeployment) -> InferenceDeployment:
    """The deployment as the planner sees it when its namespace has no budget in force."""
    return infd.model_copy(update={"spec": infd.spec.model_copy(update={"mode": "Recommend"})})


def restarted_history(infd: InferenceDeployment, now: datetime, heartbeat: timedelta) -> History:
    """The recent targets of a deployment this process has not planned yet, from its status.

    Targets planned after the last status write are not in it, but none of them changed a
    decision (that would have been written) and none is later than one heartbeat after the
    write: so the highest written target is held as if planned then (or now, if sooner).
    """
    status = infd.status
    if status is None or not status.recent_targets:
        return ()
    top = max(t.demand for t in status.recent_targets)
    written = status.last_plan_time or now
    return ((min(now, written + heartbeat), top),)


def restarted_achieved(infd: InferenceDeployment) -> CarriedAchieved | None:
    """The achieved shortfall the deployment's status reports, for a model this process
    makes anew to carry on from (else it shows none until its second fit, a day later).

    Only a status written for the spec as it is now: after a spec change the figure is about
    another target or demand query. A figure that is no share of a whole minute or more is
    ignored: a status is no input to refuse a deployment over, nor to fail its fits on."""
    status = infd.status
    slo = status.slo if status is not None else None
    if (
        status is None
        or slo is None
        or slo.achieved_shortfall is None
        or not 0.0 <= slo.achieved_shortfall <= 1.0
        or not slo.achieved_window
        or status.last_plan_time is None
        or status.observed_generation != infd.metadata.generation
    ):
        return None
    try:
        seconds = parse_duration(slo.achieved_window).total_seconds()
    except ValueError:
        return None
    if seconds < 60:
        return None
    return CarriedAchieved(slo.achieved_shortfall, seconds, status.last_plan_time)


class Controller:
    def __init__(
        self,
        forecasts: ForecastService,
        interval: timedelta,
        clock: Callable[[], datetime],
        forecast_concurrency: int = 8,
        fit_wait: timedelta = timedelta(seconds=15),
        status_heartbeat: timedelta = timedelta(minutes=5),
        forecast_deadline: timedelta | None = None,
        tenancy: TenancyPolicy | None = None,
        template_policy: TemplatePolicy | None = None,
        edges: RoundEdges | None = None,
    ) -> None:
        self.forecasts = forecasts
        self.tenancy = tenancy or TenancyPolicy()
        """The platform's rules for every namespace (budgets, priorities, reserved shares)."""
        self.template_policy = template_policy or TemplatePolicy()
        """What a tenant's pod template may ask for (the platform's allowlists)."""
        self.edges = edges or RoundEdges()
        """What a round reads besides the indexes (targets, prices, retention)."""
        self.status_heartbeat = status_heartbeat
        """Longest a deployment's status goes unwritten (bounds what a restart can miss)."""
        self.interval = interval
        self.clock = clock
        self._round: Round | None = None
        self._lock = asyncio.Lock()
        self._stale = False
        self._view: Callable[[], Snapshot] | None = None
        self._schedule: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._round_event = asyncio.Event()
        self._finished_monotonic = 0.0
        self._followed: dict[object, int] = {}
        """The latest round each handler (deployment, pool, budget) was given."""
        # Forecasts wait on the network: their own threads, so a slow Prometheus never
        # starves the threads that write to the API server.
        self._forecast_pool = ThreadPoolExecutor(
            forecast_concurrency, thread_name_prefix="peakwise-forecast"
        )
        self.forecast_deadline = forecast_deadline or interval
        """How long a round's forecasts may take; the late ones hold capacity this round."""
        self.fit_wait = fit_wait
        """How long a round waits for first fits before sizing the rest reactively."""
        self._finished_at = datetime.min.replace(tzinfo=UTC)
        self._number = 0
        self.interrupted_at: dict[str, datetime] = {}
        """When each pool last lost a node to an interruption (seen by this process)."""
        self.histories: dict[Key, History] = {}
        """Each deployment's recent demand targets, as the last round left them."""
        self._latest: dict[Key, int] = {}
        """The latest round each deployment's handler followed."""
        self._pending: dict[int, tuple[set[Key], float]] = {}
        """Rounds not yet followed by all their deployments: their keys and start."""

    def close(self) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
        self._forecast_pool.shutdown(wait=False, cancel_futures=True)

    def record_interruption(self, pool: str) -> None:
        self.interrupted_at[pool] = self.clock()
        self.invalidate()

    def invalidate(self) -> None:
        """Something happened (a spot node went away): re-plan at once."""
        self._stale = True
        self._wake.set()

    def forget(self, key: Key) -> None:
        """A deployment is gone: drop what the controller keeps for it."""
        self.histories.pop(key, None)
        self._latest.pop(key, None)
        self._followed.pop(key, None)
        for keys, _ in self._pending.values():
            keys.discard(key)
        self.forecasts.forget(key)

    def _covers(self, current: Round, key: Key | None, generation: int | None) -> bool:
        """`current` planned the InferenceDeployment `key` at `generation` (or left it out as
        invalid): a new or changed object is planned at once, not after the interval."""
        if key is None:
            return True
        known = current.deployments.get(key)
        if known is None:
            return object_name("InferenceDeployment", key) in current.invalid
        return known.metadata.generation == generation

    async def round(
        self,
        view: Callable[[], Snapshot],
        key: Key | None = None,
        generation: int | None = None,
        follower: object = None,
    ) -> Round:
        """The round a handler should follow now.

        Rounds are computed on a schedule (one interval after the previous finished), at once
        when something happened (`invalidate`), or when the InferenceDeployment `key` at
        `generation` is not in the current one. A handler identified by `follower` (its key by
        default) gets each round once: having followed the current round, it waits for the
        next, so every object follows a round right after it is computed, not when its own
        timer happens to fire. The snapshot `view()` is taken when a round is computed.
        """
        self._view = view
        follower = follower if follower is not None else key
        self._start_schedule()
        replanned = False
        while True:
            current = self._round
            uncovered = current is not None and not self._covers(current, key, generation)
            # An object still missing from a round planned for it (deleted meanwhile, or not
            # in the index yet) gets that round: planning again would not find it either.
            if current is None or self._stale or (uncovered and not replanned):
                await self._recompute(current)
                replanned = replanned or uncovered
                continue
            if follower is None or self._followed.get(follower, 0) < current.number:
                if follower is not None:
                    self._followed[follower] = current.number
                return current
            await self._round_event.wait()

    def _start_schedule(self) -> None:
        if self._schedule is None or self._schedule.done():
            self._schedule = asyncio.get_running_loop().create_task(
                self._run_schedule(), name="peakwise-planning-rounds"
            )

    async def _run_schedule(self) -> None:
        """A round one interval after the previous one finished, or sooner when woken."""
        while True:
            due = self._finished_monotonic + self.interval.total_seconds()
            with contextlib.suppress(TimeoutError):  # due: time for the next round
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, due - time.monotonic()))
            self._wake.clear()
            try:
                await self._recompute(self._round)
            except Exception:  # the next round tries again; handlers keep the last one
                log.exception("a planning round failed")
                metrics.reconcile_errors.labels("round").inc()
                self._finished_monotonic = time.monotonic()

    async def _recompute(self, seen: Round | None) -> None:
        """Compute a new round unless one newer than `seen` appeared meanwhile."""
        async with self._lock:
            if self._round is not seen and not self._stale:
                return
            if self._view is None:
                raise RuntimeError("no view of the cluster yet")
            started = time.perf_counter()
            self._stale = False
            self._number += 1
            self._round = await self._compute(self._view(), self.clock(), self._number)
            self._finished_at = self.clock()
            self._finished_monotonic = time.monotonic()
            metrics.round_seconds.observe(time.perf_counter() - started)
            metrics.last_round_timestamp.set(time.time())
            event, self._round_event = self._round_event, asyncio.Event()
            event.set()
            # A round frees a copy of every service's history: hand those pages back.
            await asyncio.to_thread(memory.release_free_memory)

    def reported(self, round_: Round, key: Key) -> None:
        """The handler of `key` wrote what `round_` decided. A round is complete once every
        deployment it planned has followed it or a later round; then the full round (plan,
        actuation, status) is measured, from the round's start."""
        self._latest[key] = max(self._latest.get(key, 0), round_.number)
        self._pending.setdefault(
            round_.number, (set(round_.deployments) | self._invalid_keys(round_), round_.started)
        )
        for number, (keys, started) in sorted(self._pending.items()):
            if all(self._latest.get(k, 0) >= number for k in keys):
                metrics.full_round_seconds.observe(time.monotonic() - started)
                del self._pending[number]
        # Deployments deleted meanwhile never report: rounds that old are given up.
        for number in [n for n in self._pending if n < self._number - 10]:
            del self._pending[number]

    @staticmethod
    def _invalid_keys(round_: Round) -> set[Key]:
        prefix = "InferenceDeployment "
        keys = set()
        for name in round_.invalid:
            if name.startswith(prefix):
                ns, _, n = name[len(prefix) :].partition("/")
                keys.add((ns, n))
        return keys

    async def _compute(self, snapshot: Snapshot, now: datetime, number: int) -> Round:
        started = time.monotonic()
        deployments, pools, observed_budgets, invalid = parse_all(snapshot)
        for key, infd in list(deployments.items()):
            if infd.spec.template is None:
                continue  # a targetRef: Peakwise builds no pod for it
            review = check_template(infd.spec.template, self.template_policy)
            if not review.allowed:
                invalid[object_name("InferenceDeployment", key)] = review.message()
                del deployments[key]
        effective = effective_budgets(
            {ns for ns, _ in deployments}, observed_budgets, self.tenancy, hours_left_in_month(now)
        )
        edges = self.edges
        targets: dict[Key, TargetObservation] = {}
        if edges.workloads is not None and any(d.spec.target_ref for d in deployments.values()):
            targets = await asyncio.to_thread(read_targets, edges.workloads, deployments)
        prices = await asyncio.to_thread(read_prices, pools, snapshot.pool_node_names, edges.prices)
        pools = {name: priced(pool, prices[name]) for name, pool in pools.items()}
        # A pool being deleted takes no new replicas: the plan moves its replicas elsewhere,
        # and its children go once their replacements are Ready (its finalizer waits).
        for name in deleting(snapshot.pools) & pools.keys():
            pools[name] = closed(pools[name])
        retention = await asyncio.to_thread(edges.retention) if edges.retention else None
        pool_states = [PoolState(p.metadata.name, p.spec) for p in pools.values()]
        leads: dict[Key, timedelta] = {}
        for key, infd in list(deployments.items()):
            try:
                leads[key] = lead_time(infd.spec, pool_states)
                self.forecasts.schedule(key, infd.spec, leads[key], now, restarted_achieved(infd))
            except (ArithmeticError, ValueError) as error:  # e.g. a duration too large to add
                invalid[object_name("InferenceDeployment", key)] = f"cannot be planned: {error}"
                del deployments[key]
        forecasting = time.monotonic()
        deadline = forecasting + self.fit_wait.total_seconds()
        await asyncio.to_thread(self.forecasts.wait_for_fits, deadline)

        loop = asyncio.get_running_loop()
        # From now: the wait for first fits above is not the forecasts' time.
        late = time.monotonic() + self.forecast_deadline.total_seconds()

        async def one(key: Key, infd: InferenceDeployment) -> tuple[Key, ForecastResult]:
            call = partial(self.forecasts.forecast, key, infd.spec, leads[key], now, False)
            try:
                result = await asyncio.wait_for(
                    loop.run_in_executor(self._forecast_pool, call),
                    timeout=max(0.0, late - time.monotonic()),
                )
            except TimeoutError:
                result = ForecastResult(
                    None,
                    None,
                    None,
                    f"no forecast within the round's {self.forecast_deadline.total_seconds():g}s: "
                    "holding capacity this round",
                )
            except Exception as error:  # one service's forecast never stops the round
                log.exception("forecasting %s/%s", *key)
                result = ForecastResult(None, None, None, f"forecasting failed: {error}")
            return key, result

        results = dict(await asyncio.gather(*(one(k, d) for k, d in deployments.items())))
        forecast_seconds = time.monotonic() - forecasting
        histories = {
            key: self.histories[key]
            if key in self.histories
            else restarted_history(d, now, self.status_heartbeat)
            for key, d in deployments.items()
        }
        # What the planner sees: a LeaderWorkerSet's replica holds its whole group's GPUs; a
        # suspended service holds its replicas (or is pinned). Forecasts used the user's spec.
        deployments, children = _planning_view(deployments, targets, snapshot.children, pools)
        # A namespace without a budget in force is planned but not scaled (fail closed): its
        # Enforce-mode deployments are planned as recommendations and what runs is held.
        held = {
            key: children.get(key, {})
            for key, d in deployments.items()
            if d.spec.mode == "Enforce" and not effective[key[0]].enforce
        }
        as_planned = [_recommend_only(d) if key in held else d for key, d in deployments.items()]
        observed = Observed(
            now=now,
            deployments=as_planned,
            pools=list(pools.values()),
            budgets=[e.budget for e in effective.values() if e.budget is not None],
            tenancy=self.tenancy,
            children=children,
            forecasts=results,
            pool_nodes=snapshot.pool_nodes,
            interrupted_at=dict(self.interrupted_at),
            histories=histories,
        )
        planning = time.monotonic()
        planned = await asyncio.to_thread(plan_enforce_first, plan_input(observed))
        log.info(
            "round %d: %d deployments (%d planned provisionally or reactively, %d fits pending, "
            "%d objects left out); forecasts %.1fs, plan %.1fs",
            number,
            len(deployments),
            sum(1 for r in results.values() if r.fallback),
            self.forecasts.pending_fits(),
            len(invalid),
            forecast_seconds,
            time.monotonic() - planning,
        )
        for key, d in planned.deployments.items():
            self.histories[key] = d.demand_history
        for key in set(self.histories) - set(deployments):
            del self.histories[key]
        pool_targets = enforced_pool_nodes(
            _held(planned, deployments, snapshot.children), as_planned, pools, held
        )
        spend = namespace_spend(pool_usage(pools, snapshot, planned, as_planned))
        self._export(planned, pools, results, now)
        for kind in ("InferenceDeployment", "GPUNodePool", "CostBudget"):
            left_out = sum(1 for name in invalid if name.startswith(f"{kind} "))
            metrics.objects_left_out.labels(kind).set(left_out)
        return Round(
            number=number,
            at=now,
            plan=planned,
            deployments=deployments,
            pools=pools,
            forecasts=results,
            leads=leads,
            pool_targets=pool_targets,
            invalid=invalid,
            effective=effective,
            spend=spend,
            started=started,
            targets=targets,
            prices=prices,
            retention=retention,
        )

    @staticmethod
    def _export(
        planned: Plan,
        pools: Mapping[str, GPUNodePool],
        results: Mapping[Key, ForecastResult],
        now: datetime,
    ) -> None:
        for key, d in planned.deployments.items():
            result = results.get(key)
            if result and result.forecast:
                metrics.demand_forecast.labels(*key).set(result.forecast.peak)
            if result:
                metrics.forecast_reactive.labels(*key).set(1 if result.fallback else 0)
            calibration = result.calibration if result else None
            if calibration is not None:
                metrics.shortfall_target.labels(*key).set(calibration.target)
                if calibration.achieved_shortfall is not None:
                    metrics.shortfall_achieved.labels(*key).set(calibration.achieved_shortfall)
            if result and result.observed is not None:
                metrics.demand_actual.labels(*key).set(result.observed)
            if result and result.model_fitted_at is not None:
                age = (now - result.model_fitted_at).total_seconds()
                metrics.model_age.labels(*key).set(age)
            if result and result.info:
                if result.info.backtest_loss is not None and math.isfinite(
                    result.info.backtest_loss
                ):
                    metrics.forecast_loss.labels(*key).set(result.info.backtest_loss)
                if result.info.coverage is not None:
                    metrics.forecast_coverage.labels(*key).set(result.info.coverage)
            metrics.service_desired_replicas.labels(*key).set(d.total)
            for pool_name, n in d.replicas.items():
                tier = pools[pool_name].spec.capacity_type if pool_name in pools else "unknown"
                metrics.desired_replicas.labels(*key, pool_name, tier).set(n)
        for ns, p in planned.namespaces.items():
            metrics.cost_hourly.labels(ns).set(p.hourly_cost)
            if p.hourly_cap is not None:
                metrics.budget_limit_hourly.labels(ns).set(p.hourly_cap)
                metrics.budget_headroom_hourly.labels(ns).set(p.hourly_cap - p.hourly_cost)


def _planning_view(
    deployments: Mapping[Key, InferenceDeployment],
    targets: Mapping[Key, TargetObservation],
    children: Mapping[Key, Mapping[str, int]],
    pools: Mapping[str, GPUNodePool],
) -> tuple[dict[Key, InferenceDeployment], dict[Key, Mapping[str, int]]]:
    """The deployments as the planner plans them, and the replicas each runs now per pool.

    A targetRef runs no children: what it runs now is its workload's replicas, spread over
    the pools as the last plan placed them (`target_current`), so a missing forecast holds
    them instead of planning the minimum."""
    out: dict[Key, InferenceDeployment] = {}
    current: dict[Key, Mapping[str, int]] = dict(children)
    for key, infd in deployments.items():
        spec = infd.spec
        target = targets.get(key)
        if spec.target_ref is not None:
            current[key] = target_current(infd, target, pools)
        running = sum(current.get(key, {}).values())
        hold = None
        if spec.suspend and spec.mode == "Enforce":
            hold = spec.suspend_replicas if spec.suspend_replicas is not None else running
        group = target.group_size if target is not None and target.found else 1
        planned_spec = planning_spec(spec, group, hold)
        out[key] = infd if planned_spec is spec else infd.model_copy(update={"spec": planned_spec})
    return out, current


def _held(
    planned: Plan,
    deployments: Mapping[Key, InferenceDeployment],
    children: Mapping[Key, Mapping[str, int]],
) -> Plan:
    """The plan as the pools must carry it: a suspended service with children keeps the
    nodes its children run on, whatever the plan would place."""
    held = {}
    for key, infd in deployments.items():
        spec = infd.spec
        unpinned = spec.suspend and spec.suspend_replicas is None
        if unpinned and spec.template is not None and key in planned.deployments:
            running = {p: n for p, n in children.get(key, {}).items() if n > 0}
            held[key] = replace(planned.deployments[key], replicas=running)
    if not held:
        return planned
    return replace(planned, deployments={**planned.deployments, **held})

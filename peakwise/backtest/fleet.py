"""The fleet backtest: every service of a cluster replayed jointly, minute by minute.

``run_fleet_backtest`` takes the objects a cluster holds (GPUNodePools, InferenceDeployments,
CostBudgets) and each service's demand history, and replays them the way the operator
plans them: each service's forecaster (``forecasting.target.ShortfallForecaster``, calibrated
to its ``slo.shortfallMinutes`` and refitted as in ``peakwise backtest``) forecasts one lead
time ahead, and one joint planner round per minute places every service on the shared
pools, under every namespace's budget, by priority, sharing reserved capacity. Decisions at
minute *t* see only demand before *t*. The baselines a platform team would compare with run
on the same history:

* ``static-peak``: each service's peak on its cheapest on-demand pool, all the time;
* ``reactive``, ``hpa-70%``: HPA-like scaling on on-demand (no headroom; a 70% target);
* ``reactive-tuned``: each service's reactive headroom tuned in hindsight so that it is short
  no more often than Peakwise was for that service;
* ``reactive-tiered-tuned`` (fleets with several tiers): HPA plus a Karpenter-like
  provisioner on the same pools, reserved shared in the platform's priority order, then spot
  within each service's spot rules, then on-demand, at the ``reactive-tuned`` headrooms (its
  own shortfall, with spot interruptions and reserved capacity moving between services, is
  reported as it comes out: tuning it again would take a fleet replay per step);
* ``oracle``: perfect foresight, no provisioning delay: the planner's cheapest joint plan for
  each minute's actual demand.

Every policy but the oracle runs against ``fleet_sim.FleetSimulator``: shared nodes,
provisioning delay, model load, seeded spot interruptions. Each minute's bill is shared by
the services holding a pool's GPUs; what nobody holds (idle reserved or minimum nodes) is the
fleet's. As in the single-service backtest, reserved nodes are billed to the policies that
use the reserved pools (Peakwise, the tiered baseline, the oracle), not to the on-demand ones.

The forecasts (the expensive part) and the baselines run in a process pool when one is
given; the result does not depend on it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import yaml
from pydantic import ValidationError
from scipy.ndimage import maximum_filter1d

from peakwise.api.costbudget import CostBudget, CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import (
    ForecastSpec,
    InferenceDeployment,
    InferenceDeploymentSpec,
    ScaleDownPolicy,
)
from peakwise.backtest.advice import (
    HOURS_PER_MONTH,
    Advice,
    AdviceError,
    GPUTypeMarket,
    ServiceNeed,
    advise,
    capped_demand,
    describe_assumptions,
    market_for,
    service_need,
)
from peakwise.backtest.config import ConfigError
from peakwise.backtest.fleet_sim import (
    FleetPool,
    FleetRecord,
    IntArray,
    Placement,
    attribute_cost,
    simulate_fleet,
)
from peakwise.backtest.policies import (
    ForecasterFactory,
    PlannedTargets,
    plan_target_span,
    replicas_for,
)
from peakwise.backtest.run import HPA_UTILIZATION, _minutes
from peakwise.forecasting.base import CalibrationInfo
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.target import (
    ShortfallForecaster,
    hold_rule,
    selection_quantile,
    service_forecaster,
)
from peakwise.planner import (
    BudgetState,
    DemandForecast,
    DeploymentState,
    PlanInput,
    PoolState,
    TenancyPolicy,
    plan,
)
from peakwise.planner.budget import hours_left_in_month
from peakwise.planner.capacity import lead_time
from peakwise.planner.tenancy import (
    EffectiveBudget,
    ObservedBudget,
    effective_budgets,
    namespace_priority,
)

TIERS = ("reserved", "spot", "onDemand")
FLEET = "fleet"
"""The scope of the whole fleet in summaries (namespaces are the other scopes)."""
DEMAND_UNIT_ANNOTATION = "peakwise.dev/demand-unit"
"""On an InferenceDeployment: what its demand query counts (``requests`` by default, or
``tokens``), so the report can price a million tokens served."""
TOKENS_QUERY_ANNOTATION = "peakwise.dev/tokens-query"
"""On an InferenceDeployment whose demand is not in tokens: a PromQL query of the tokens/s it
serves, for the cost per million tokens."""

ORACLE_PARTS = 4
"""Spans of minutes the oracle's plans are split into (they run in parallel with a pool)."""
Key = tuple[str, str]
Progress = Callable[[str, float], None]
T = TypeVar("T")


# --- the fleet's objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """What a cluster holds that a fleet backtest replays."""

    pools: tuple[GPUNodePool, ...]
    deployments: tuple[InferenceDeployment, ...]
    budgets: tuple[CostBudget, ...] = ()
    skipped: tuple[str, ...] = ()
    """Objects left out, with the reason (shown as warnings)."""
    policy: TenancyPolicy = field(default_factory=TenancyPolicy)
    """The platform's rules for namespaces without a CostBudget (the operator's flags)."""

    @property
    def keys(self) -> list[Key]:
        return [key_of(d) for d in self.deployments]

    def effective_budgets(self) -> dict[str, EffectiveBudget]:
        """Each namespace's budget in force, by the operator's rules (the strictest of
        several; the platform's default where there is none)."""
        observed = [
            ObservedBudget(b.metadata.namespace or "default", b.metadata.name, b.spec)
            for b in self.budgets
        ]
        return effective_budgets(self.namespaces(), observed, self.policy)

    def budget(self, namespace: str) -> CostBudgetSpec | None:
        """The namespace's budget in force (None: no cap)."""
        found = self.effective_budgets().get(namespace)
        return found.budget.spec if found is not None and found.budget is not None else None

    def planning_budgets(self) -> tuple[BudgetState, ...]:
        """What the planner is given (spend 0; the replay accrues it)."""
        return tuple(
            e.budget for _, e in sorted(self.effective_budgets().items()) if e.budget is not None
        )

    def unenforced(self) -> list[str]:
        """Namespaces the operator would only recommend for (no budget in force: fail
        closed). The replay still scales them, uncapped, to show what Peakwise would do."""
        return [ns for ns, e in sorted(self.effective_budgets().items()) if not e.enforce]

    def namespaces(self) -> list[str]:
        return sorted({k[0] for k in self.keys})


def key_of(infd: InferenceDeployment) -> Key:
    return (infd.metadata.namespace or "default", infd.metadata.name)


def demand_unit(infd: InferenceDeployment) -> str:
    return infd.metadata.annotations.get(DEMAND_UNIT_ANNOTATION, "requests")


def tokens_query(infd: InferenceDeployment) -> str | None:
    return infd.metadata.annotations.get(TOKENS_QUERY_ANNOTATION) or None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "object"
    return f"{where}: {first['msg']}"


def parse_fleet(
    documents: Iterable[Mapping[str, Any]], source: str = "<manifests>", *, strict: bool = True
) -> Fleet:
    """The fleet from Kubernetes objects (YAML documents or what the API server lists).

    With `strict` (manifests a person wrote), an invalid object is an error naming it;
    without (objects read from a cluster), it is left out with the reason, and the rest of
    the fleet is replayed. Kinds other than the three are ignored.
    """
    pools: list[GPUNodePool] = []
    deployments: list[InferenceDeployment] = []
    budgets: list[CostBudget] = []
    skipped: list[str] = []
    models: dict[str, type[GPUNodePool | InferenceDeployment | CostBudget]] = {
        "GPUNodePool": GPUNodePool,
        "InferenceDeployment": InferenceDeployment,
        "CostBudget": CostBudget,
    }
    for doc in documents:
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{source}: every document must be a mapping with a kind")
        kind = str(doc.get("kind", ""))
        model = models.get(kind)
        if model is None:
            continue
        meta = doc.get("metadata") or {}
        name = (
            f"{meta.get('namespace')}/{meta.get('name')}"
            if meta.get("namespace")
            else str(meta.get("name", "?"))
        )
        try:
            parsed = model.model_validate(dict(doc))
        except (ValidationError, ValueError, ArithmeticError) as error:
            why = _describe(error) if isinstance(error, ValidationError) else str(error)
            if strict:
                raise ConfigError(f"{source}: {kind} {name}: {why}") from None
            skipped.append(f"{kind} {name}: {why}")
            continue
        if isinstance(parsed, GPUNodePool):
            pools.append(parsed)
        elif isinstance(parsed, InferenceDeployment):
            deployments.append(parsed)
        else:
            budgets.append(parsed)
    if not pools:
        raise ConfigError(f"{source}: no GPUNodePool; a fleet backtest needs the pools to place on")
    names = {p.metadata.name for p in pools}
    if len(names) != len(pools):
        raise ConfigError(f"{source}: two GPUNodePools share a name")
    usable: list[InferenceDeployment] = []
    seen: set[Key] = set()
    for infd in deployments:
        key = key_of(infd)
        types = {p.gpu_type for p in infd.spec.gpu_profiles}
        if key in seen:
            raise ConfigError(f"{source}: InferenceDeployment {key[0]}/{key[1]} appears twice")
        seen.add(key)
        if not any(p.spec.gpu_type in types for p in pools):
            why = f"no pool offers its GPU types ({', '.join(sorted(types))})"
            if strict:
                raise ConfigError(f"{source}: InferenceDeployment {key[0]}/{key[1]}: {why}")
            skipped.append(f"InferenceDeployment {key[0]}/{key[1]}: {why}")
            continue
        usable.append(infd)
    if not usable:
        raise ConfigError(f"{source}: no InferenceDeployment to replay")
    usable.sort(key=key_of)
    return Fleet(tuple(pools), tuple(usable), tuple(budgets), tuple(skipped))


def parse_fleet_yaml(text: str, source: str) -> list[Mapping[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


# --- options and results -------------------------------------------------------------------


@dataclass(frozen=True)
class FleetOptions:
    window: timedelta = timedelta(minutes=1)
    refit_every: timedelta = timedelta(days=1)
    warmup: timedelta = timedelta(days=1)
    spot_interruptions_per_node_hour: float = 0.0
    """Assumed for spot pools whose status has no observed rate (manifests from files)."""
    seed: int = 1
    reserved_prices: Mapping[str, float] = field(default_factory=dict)
    """Commitment term -> $/node-hour, for the advice (else the pools' annotations)."""
    advice_gpu_types: tuple[str, ...] = ()
    """GPU types to advise on (default: every type the fleet runs on)."""


@dataclass
class ServiceSeries:
    """One service under one policy, per minute."""

    demand: FloatArray
    forecast: FloatArray
    capacity: FloatArray
    replicas: dict[str, IntArray]
    """Ready replicas per tier."""
    cost: FloatArray
    """Its share of the minute's bill ($)."""
    billed: FloatArray
    """What its namespace's budget counts ($ per minute), as the operator accrues spend
    (``planner.billing``): its share of the nodes that exist, reserved ones left out."""
    planned: FloatArray | None = None
    """What the planner costed its plan at ($ per minute; Peakwise): the replicas at their
    share of a node's price, which is what a Hard budget caps. Whole nodes are billed, so
    the bill can be higher where replicas leave nodes part-empty."""


@dataclass
class FleetRun:
    name: str
    services: dict[Key, ServiceSeries]
    unattributed: FloatArray
    """$ per minute of nodes no service held (idle reserved or minimum nodes)."""
    note: str = ""
    interruptions: int = 0
    budget_limited: dict[str, int] = field(default_factory=dict)
    """Minutes each namespace's plan was limited by its Hard budget (Peakwise)."""
    service_notes: dict[Key, str] = field(default_factory=dict)

    def total_cost(self) -> FloatArray:
        total: FloatArray = np.sum([s.cost for s in self.services.values()], axis=0)
        return total + self.unattributed


@dataclass(frozen=True)
class ScopeSummary:
    """One policy over one scope (a namespace or the fleet), measured after the warm-up."""

    scope: str
    policy: str
    cost: float
    cost_vs_oracle: float
    under_provisioned: float
    """Share of the scope's service-minutes with less ready capacity than demand."""
    worst_service: str
    worst_under_provisioned: float
    unserved: float
    """Mean over the scope's services of the share of demand not served."""
    peak_billed_hourly: float
    """Highest spot and on-demand spend rate ($/h) of the scope."""
    peak_planned_hourly: float | None
    """Highest $/h the planner costed the scope's plans at (None: the policy does not plan)."""
    hourly_cap: float | None
    minutes_over_cap: int
    monthly_projection: float
    """Billed spend over the measured minutes, scaled to a 730-hour month."""
    monthly_limit: float | None
    budget_limited_minutes: int = 0
    note: str = ""


@dataclass(frozen=True)
class ServiceInfo:
    key: Key
    unit: str
    lead_minutes: int
    target: float | None
    tokens: FloatArray | None
    """Tokens/s the service was asked for (its demand in tokens, or its tokens query)."""


@dataclass(frozen=True)
class TokenCost:
    key: Key
    policy: str
    tokens_served: float
    cost: float

    @property
    def per_million(self) -> float:
        return self.cost / (self.tokens_served / 1e6) if self.tokens_served > 0 else math.nan


@dataclass
class FleetResult:
    start: datetime
    minutes: int
    warmup_minutes: int
    fleet: Fleet
    services: dict[Key, ServiceInfo]
    runs: list[FleetRun]
    summaries: list[ScopeSummary]
    calibrations: dict[Key, list[tuple[int, CalibrationInfo]]]
    advice: list[Advice] = field(default_factory=list)
    advice_problems: list[str] = field(default_factory=list)

    def run(self, name: str) -> FleetRun:
        return next(r for r in self.runs if r.name == name)

    def summary(self, scope: str, policy: str) -> ScopeSummary:
        return next(s for s in self.summaries if s.scope == scope and s.policy == policy)

    def scopes(self) -> list[str]:
        return [*self.fleet.namespaces(), FLEET]

    def token_costs(self, policy: str = "peakwise") -> list[TokenCost]:
        out = []
        run = self.run(policy)
        w = self.warmup_minutes
        for key, info in self.services.items():
            if info.tokens is None:
                continue
            series = run.services[key]
            demand = series.demand[w:]
            tokens = info.tokens[w:]
            served_share = np.where(
                demand > 0,
                np.minimum(1.0, series.capacity[w:] / np.where(demand > 0, demand, 1)),
                1.0,
            )
            known = ~np.isnan(tokens) & ~np.isnan(demand)
            served = float(np.sum(tokens[known] * served_share[known]) * 60.0)
            out.append(TokenCost(key, policy, served, float(series.cost[w:].sum())))
        return out


# --- building the simulation's view --------------------------------------------------------


def _fleet_pools(pools: Sequence[GPUNodePool], rates: Mapping[str, float]) -> list[FleetPool]:
    return [
        FleetPool(
            name=p.metadata.name,
            tier=p.spec.capacity_type,
            gpus_per_node=p.spec.gpus_per_node,
            node_price=p.spec.price_per_node_hour,
            reserved_nodes=p.spec.reserved_nodes,
            min_nodes=p.spec.min_nodes,
            max_nodes=p.spec.max_nodes,
            provisioning_minutes=_minutes(p.spec.provisioning_time),
            interruptions_per_node_hour=rates.get(p.metadata.name, 0.0),
        )
        for p in pools
    ]


def _placements(
    deployments: Sequence[InferenceDeployment], pools: Sequence[GPUNodePool]
) -> list[Placement]:
    """Each service on each pool it can run on, with the profile the planner picks there."""
    out = []
    for i, infd in enumerate(deployments):
        spec = infd.spec
        for p, pool in enumerate(pools):
            profiles = [
                q
                for q in spec.gpu_profiles
                if q.gpu_type == pool.spec.gpu_type
                and q.gpus_per_replica <= pool.spec.gpus_per_node
            ]
            if not profiles:
                continue
            best = max(
                profiles,
                key=lambda q: (q.throughput_per_replica / q.gpus_per_replica, -q.gpus_per_replica),
            )
            out.append(
                Placement(
                    service=i,
                    pool=p,
                    gpus=best.gpus_per_replica,
                    throughput=best.throughput_per_replica,
                    load_minutes=_minutes(spec.model_load_time),
                )
            )
    return out


def interruption_rates(pools: Sequence[GPUNodePool], assumed: float) -> dict[str, float]:
    """Each spot pool's interruptions per node-hour: observed (its status) where known."""
    return {
        p.metadata.name: p.status.interruption_rate if p.status is not None else assumed
        for p in pools
        if p.spec.capacity_type == "spot"
    }


def align(series: Mapping[Key, Series]) -> tuple[datetime, int, dict[Key, FloatArray]]:
    """Every service's per-minute values on one grid (the union of their spans; NaN outside)."""
    if not series:
        raise ConfigError("no demand history to replay")
    if any(s.step_seconds != 60 for s in series.values()):
        raise ConfigError("fleet backtests replay per-minute history (step 60 s)")
    start = min(s.start for s in series.values())
    end = max(s.start + timedelta(minutes=len(s) - 1) for s in series.values())
    minutes = round((end - start).total_seconds() / 60) + 1
    out = {}
    for key, s in series.items():
        values = np.full(minutes, np.nan)
        at = round((s.start - start).total_seconds() / 60)
        values[at : at + len(s)] = s.values
        out[key] = values
    return start, minutes, out


def on_grid(series: Series, start: datetime, minutes: int) -> FloatArray:
    """A per-minute series' values on the grid of `minutes` from `start` (NaN elsewhere)."""
    out = np.full(minutes, np.nan)
    at = round((series.start - start).total_seconds() / 60)
    lo, hi = max(0, at), min(minutes, at + len(series))
    if hi > lo:
        out[lo:hi] = series.values[lo - at : hi - at]
    return out


# --- the work units (module level, so a process pool can run them) -------------------------


def forecast_span(
    spec: InferenceDeploymentSpec,
    pools: Sequence[GPUNodePool],
    start: datetime,
    demand: FloatArray,
    window: int,
    refit_every: int,
    factory: ForecasterFactory | None,
    model: ShortfallForecaster | None,
    begin: int,
    until: int,
) -> tuple[ShortfallForecaster, PlannedTargets, int]:
    """The targets Peakwise plans one service for (as the operator would) from minute `begin`
    to the first refit at or after `until` (``policies.plan_target_span``), by `model` as
    the span before left it (None: a new one); the model goes on to the next span."""
    series = Series(start, 60, demand)
    if model is None:
        lead = lead_time(spec, [PoolState(p.metadata.name, p.spec) for p in pools])
        rule = hold_rule(spec, lead, timedelta(minutes=window))
        inner = None
        if factory is not None:
            quantile = selection_quantile(spec.slo.shortfall_minutes, spec.forecast.quantile)
            inner = factory(_minutes(lead), window, quantile)
        model = service_forecaster(spec, rule, window, inner)
    planned, stop = plan_target_span(model, series, begin, until, refit_every=refit_every)
    return model, planned, stop


FORECAST_SPAN = 2 * 1440
"""Minutes of targets a forecast job makes for one service before the next job goes on."""


class ForecastStream:
    """Every service's targets, fitted a span of days at a time in the executor while the
    Peakwise replay goes on with the spans already made: the replay at minute t waits only
    for the targets of origin t - 1. A service's model travels from one span's job to the
    next, so the targets are those of one `plan_targets` over the whole history."""

    def __init__(
        self,
        pool: Executor,
        case: _ReplayCase,
        window: int,
        refit_every: int,
        factory: ForecasterFactory | None,
        span: int | None = None,
    ) -> None:
        self.pool = pool
        self.case = case
        self.window = window
        self.refit_every = refit_every
        self.factory = factory
        self.span = max(1, FORECAST_SPAN if span is None else span)
        count, n = len(case.deployments), case.minutes
        self.targets = np.full((count, n), np.nan)
        self.labels: list[list[str]] = [[""] * n for _ in range(count)]
        self.calibrations: list[list[tuple[int, CalibrationInfo]]] = [[] for _ in range(count)]
        self.fits = [0] * count
        self.reached = [0] * count
        """Per service, the first origin with no target yet."""
        self.jobs: list[Future[tuple[ShortfallForecaster, PlannedTargets, int]] | None] = [
            self._submit(i, None) for i in range(count)
        ]

    def _submit(
        self, i: int, model: ShortfallForecaster | None
    ) -> Future[tuple[ShortfallForecaster, PlannedTargets, int]] | None:
        begin = self.reached[i]
        if begin >= self.case.minutes:
            return None
        return self.pool.submit(
            forecast_span,
            self.case.deployments[i].spec,
            self.case.pools,
            self.case.start,
            self.case.demand[i],
            self.window,
            self.refit_every,
            self.factory,
            model,
            begin,
            begin + self.span,
        )

    def _take(self, i: int) -> None:
        job = self.jobs[i]
        assert job is not None
        model, part, stop = job.result()
        begin = self.reached[i]
        self.targets[i, begin:stop] = part.targets
        self.labels[i][begin:stop] = part.labels
        self.calibrations[i] += part.calibrations
        self.fits[i] += part.fits
        self.reached[i] = stop
        self.jobs[i] = self._submit(i, model)

    def ready(self, origin: int) -> None:
        """Wait until every service has its target for `origin`; hand every finished span's
        model on to its next span meanwhile, so the executor never waits for the replay."""
        for i, job in enumerate(self.jobs):
            while self.reached[i] <= origin:
                self._take(i)
            if job is not None and job.done() and self.jobs[i] is job:
                self._take(i)

    def planned(self) -> list[PlannedTargets]:
        self.ready(self.case.minutes - 1)
        return [
            PlannedTargets(self.targets[i], self.labels[i], self.calibrations[i], self.fits[i])
            for i in range(len(self.fits))
        ]


def _baseline_pool(infd: InferenceDeployment, pools: Sequence[GPUNodePool]) -> int:
    """The service's cheapest on-demand pool per unit of demand (the baselines run there)."""
    best: tuple[float, int] | None = None
    for p, pool in enumerate(pools):
        if pool.spec.capacity_type != "onDemand":
            continue
        for profile in infd.spec.gpu_profiles:
            if (
                profile.gpu_type != pool.spec.gpu_type
                or profile.gpus_per_replica > pool.spec.gpus_per_node
            ):
                continue
            slots = pool.spec.gpus_per_node // profile.gpus_per_replica
            price = pool.spec.price_per_node_hour / slots / profile.throughput_per_replica
            if best is None or price < best[0]:
                best = (price, p)
    if best is None:
        key = key_of(infd)
        raise ConfigError(
            f"InferenceDeployment {key[0]}/{key[1]}: the baselines (static, reactive) need an "
            "onDemand pool of one of its GPU types"
        )
    return best[1]


@dataclass(frozen=True)
class _ReplayCase:
    """What every baseline run needs to know of the fleet (picklable)."""

    start: datetime
    minutes: int
    pools: tuple[GPUNodePool, ...]
    deployments: tuple[InferenceDeployment, ...]
    budgets: tuple[BudgetState, ...]
    """One per namespace with a budget in force (fleet.planning_budgets)."""
    demand: tuple[FloatArray, ...]
    rates: Mapping[str, float]
    seed: int
    warmup: int
    policy: TenancyPolicy = field(default_factory=TenancyPolicy)


def reactive_wants(
    demand: FloatArray,
    throughput: float,
    utilization: float,
    min_replicas: int,
    max_replicas: int,
    window: int,
    headroom: float,
) -> IntArray:
    """The replicas ``ReactivePolicy`` asks for at each minute, computed for all minutes at
    once (its decisions depend on the demand only): the demand of the minute before, plus
    headroom, at the utilisation target, within the bounds, held for `window` minutes; a
    minute without data holds what was asked."""
    n = demand.shape[0]
    observed = np.full(n, np.nan)
    observed[1:] = demand[:-1]
    scaled = observed * (1.0 + headroom)
    with np.errstate(invalid="ignore"):
        raw = np.where(scaled > 0, np.ceil(scaled / (throughput * utilization) - 1e-9), 0.0)
    want = np.clip(raw, min_replicas, max_replicas)
    width = max(1, window)
    for t in np.flatnonzero(np.isnan(observed)):
        # No data: hold the replicas asked for over the window (the minimum at the start).
        held = want[max(0, t - width) : t].max() if t > 0 else 0.0
        want[t] = min(max(held, min_replicas), max_replicas)
    # What is asked is the highest want of the last `width` minutes (scale-down waits).
    asked = maximum_filter1d(want, size=width, origin=(width - 1) // 2, mode="nearest")
    asked[: width - 1] = np.maximum.accumulate(want[: width - 1])
    out: IntArray = asked.astype(np.int64)
    return out


def _reactive_wants(
    infd: InferenceDeployment,
    demand: FloatArray,
    throughput: float,
    headroom: float,
    utilization: float | None = None,
) -> IntArray:
    spec = infd.spec
    return reactive_wants(
        demand,
        throughput,
        spec.demand.target_utilization if utilization is None else utilization,
        spec.replicas.min,
        spec.replicas.max,
        _minutes(spec.scale_down.stabilization_window),
        headroom,
    )


def single_pool_ready(
    wants: IntArray, slots: int, load: int, provisioning: int, max_nodes: int
) -> IntArray:
    """Ready replicas per minute of one service alone on one pool without interruptions, as
    the simulators have it: a replica fitting on a node already there is ready after the
    model load, one needing a new node after provisioning too; scale-down cancels starting
    replicas first."""
    n = wants.shape[0]
    ready_out = np.zeros(n, dtype=np.int64)
    ready, starting = 0, 0
    pending: list[list[int]] = []
    most = max_nodes * slots
    for t in range(n):
        want = min(int(wants[t]), most)
        have = ready + starting
        if want > have:
            free = -(-have // slots) * slots - have
            on_existing = min(want - have, free)
            if on_existing:
                pending.append([t + load, on_existing])
            rest = want - have - on_existing
            if rest:
                pending.append([t + provisioning + load, rest])
            starting += want - have
        elif want < have:
            drop = have - want
            while drop and pending:
                entry = pending[-1]
                taken = min(entry[1], drop)
                entry[1] -= taken
                starting -= taken
                drop -= taken
                if not entry[1]:
                    pending.pop()
            ready -= min(drop, ready)
        if starting:
            came = 0
            for entry in pending:
                if entry[0] <= t:
                    came += entry[1]
            if came:
                ready += came
                starting -= came
                pending = [e for e in pending if e[0] > t]
        ready_out[t] = ready
    return ready_out


def _series_from_record(
    case: _ReplayCase,
    fleet_pools: Sequence[FleetPool],
    placements: Sequence[Placement],
    record: FleetRecord,
) -> tuple[dict[Key, ServiceSeries], FloatArray]:
    cost, unattributed = attribute_cost(fleet_pools, placements, record, len(case.deployments))
    # What a CostBudget counts, as the operator accrues it (planner.billing): the nodes that
    # exist, shared by the GPUs each service holds, but for reserved nodes (paid already).
    billed, _ = attribute_cost(
        fleet_pools, placements, record, len(case.deployments), billable_only=True
    )
    out = {}
    for i, infd in enumerate(case.deployments):
        capacity = np.zeros(case.minutes)
        replicas = {tier: np.zeros(case.minutes, dtype=np.int64) for tier in TIERS}
        for k, pl in enumerate(placements):
            if pl.service != i:
                continue
            capacity += record.ready[:, k] * pl.throughput
            replicas[fleet_pools[pl.pool].tier] += record.ready[:, k]
        out[key_of(infd)] = ServiceSeries(
            demand=case.demand[i],
            forecast=np.full(case.minutes, np.nan),
            capacity=capacity,
            replicas=replicas,
            cost=cost[:, i],
            billed=billed[:, i],
        )
    return out, unattributed


def run_on_demand_baseline(
    case: _ReplayCase, name: str, headrooms: Sequence[float] | None
) -> FleetRun:
    """static-peak, reactive, hpa-70% or reactive-tuned (with per-service `headrooms`): each
    service on its cheapest on-demand pool, the pools shared."""
    pool_index = sorted({_baseline_pool(d, case.pools) for d in case.deployments})
    pools = tuple(case.pools[p] for p in pool_index)
    fleet_pools = _fleet_pools(pools, {})
    placements = _placements(case.deployments, pools)
    wants = np.zeros((case.minutes, len(placements)), dtype=np.int64)
    notes: dict[Key, str] = {}
    for i, infd in enumerate(case.deployments):
        home = pool_index.index(_baseline_pool(infd, case.pools))
        k = next(k for k, pl in enumerate(placements) if pl.service == i and pl.pool == home)
        throughput = placements[k].throughput
        spec = infd.spec
        demand = case.demand[i]
        if name == "static-peak":
            peak = float(np.nanmax(demand)) if not np.isnan(demand).all() else 0.0
            count = min(
                max(
                    replicas_for(peak, throughput, spec.demand.target_utilization),
                    spec.replicas.min,
                ),
                spec.replicas.max,
            )
            wants[:, k] = count
            notes[key_of(infd)] = f"{count} on-demand replicas all the time"
        elif name == "hpa-70%":
            wants[:, k] = _reactive_wants(infd, demand, throughput, 0.0, HPA_UTILIZATION)
        else:
            headroom = headrooms[i] if headrooms is not None else 0.0
            wants[:, k] = _reactive_wants(infd, demand, throughput, headroom)
            if headrooms is not None:
                notes[key_of(infd)] = f"headroom {headroom:.0%}"
    record = simulate_fleet(
        fleet_pools, placements, case.minutes, _fixed_schedule_rows(wants), case.seed
    )
    services, unattributed = _series_from_record(case, fleet_pools, placements, record)
    return FleetRun(name, services, unattributed, service_notes=notes)


def _fixed_schedule_rows(wants: IntArray) -> Callable[[int, IntArray], IntArray]:
    def decide(t: int, _requested: IntArray) -> IntArray:
        row: IntArray = wants[t]
        return row

    return decide


def _namespace_priority(case: _ReplayCase, namespace: str) -> int:
    mine = next((b for b in case.budgets if b.namespace == namespace), None)
    return namespace_priority(mine, case.policy)


def run_tiered_baseline(case: _ReplayCase, headrooms: Sequence[float]) -> FleetRun:
    """HPA plus a Karpenter-like provisioner on every pool: each service's reactive replicas
    fill reserved pools first (namespaces by the platform's priority, then deployments by
    theirs), then spot within the service's spot rules, then on-demand."""
    pools = case.pools
    fleet_pools = _fleet_pools(pools, case.rates)
    placements = _placements(case.deployments, pools)
    totals = []
    for i, infd in enumerate(case.deployments):
        home = _baseline_pool(infd, pools)
        k = next(k for k, pl in enumerate(placements) if pl.service == i and pl.pool == home)
        totals.append(_reactive_wants(infd, case.demand[i], placements[k].throughput, headrooms[i]))
    order = sorted(
        range(len(case.deployments)),
        key=lambda i: (
            -_namespace_priority(case, key_of(case.deployments[i])[0]),
            -case.deployments[i].spec.priority,
            key_of(case.deployments[i]),
        ),
    )
    # Reserved nodes left on each reserved pool, per minute, and the free slots of each
    # replica size on its nodes already begun (sizes pack on nodes of their own).
    room = {
        p: np.full(case.minutes, pool.spec.reserved_nodes, dtype=np.int64)
        for p, pool in enumerate(pools)
        if pool.spec.capacity_type == "reserved"
    }
    partial: dict[tuple[int, int], IntArray] = {}
    wants = np.zeros((case.minutes, len(placements)), dtype=np.int64)

    def by_price(i: int, tier: str) -> list[int]:
        mine = [
            k
            for k, pl in enumerate(placements)
            if pl.service == i and fleet_pools[pl.pool].tier == tier
        ]
        return sorted(
            mine,
            key=lambda k: (
                fleet_pools[placements[k].pool].node_price
                / (fleet_pools[placements[k].pool].gpus_per_node // placements[k].gpus)
                / placements[k].throughput
            ),
        )

    for i in order:
        spec = case.deployments[i].spec
        left = totals[i].copy()
        for k in by_price(i, "reserved"):
            p, gpus = placements[k].pool, placements[k].gpus
            slots = max(1, fleet_pools[p].gpus_per_node // gpus)
            begun = partial.setdefault((p, gpus), np.zeros(case.minutes, dtype=np.int64))
            take = np.minimum(left, begun + room[p] * slots)
            from_begun = np.minimum(take, begun)
            new_nodes = -(-(take - from_begun) // slots)
            room[p] -= new_nodes
            partial[(p, gpus)] = begun - from_begun + new_nodes * slots - (take - from_begun)
            wants[:, k] = take
            left -= take
        total = totals[i]
        spot_room = np.maximum(
            0,
            np.minimum(
                np.floor(spec.capacity.spot.max_fraction * total).astype(np.int64),
                total - spec.capacity.on_demand.min_replicas,
            ),
        )
        for k in by_price(i, "spot"):
            pool = fleet_pools[placements[k].pool]
            most = pool.max_nodes * (pool.gpus_per_node // placements[k].gpus)
            take = np.minimum(np.minimum(left, spot_room), most)
            wants[:, k] = take
            left -= take
            spot_room -= take
        for k in by_price(i, "onDemand"):
            wants[:, k] = left
            left = np.zeros_like(left)
    record = simulate_fleet(
        fleet_pools, placements, case.minutes, _fixed_schedule_rows(wants), case.seed
    )
    services, unattributed = _series_from_record(case, fleet_pools, placements, record)
    notes = {
        key_of(d): f"headroom {h:.0%}" for d, h in zip(case.deployments, headrooms, strict=True)
    }
    return FleetRun(
        "reactive-tiered-tuned",
        services,
        unattributed,
        interruptions=record.interruptions,
        service_notes=notes,
    )


def tune_service_headroom(
    infd: InferenceDeployment,
    pools: Sequence[GPUNodePool],
    demand: FloatArray,
    target: float,
    warmup: int,
) -> float:
    """The least reactive headroom at which the service alone on its cheapest on-demand pool
    is short no more often than `target` (Peakwise's share for it), by bisection as in the
    single-service backtest (``run._tune_reactive``: 0 to 4, 12 steps)."""
    spec = infd.spec
    home = pools[_baseline_pool(infd, pools)]
    profile = max(
        (
            q
            for q in spec.gpu_profiles
            if q.gpu_type == home.spec.gpu_type and q.gpus_per_replica <= home.spec.gpus_per_node
        ),
        key=lambda q: (q.throughput_per_replica / q.gpus_per_replica, -q.gpus_per_replica),
    )
    slots = home.spec.gpus_per_node // profile.gpus_per_replica
    load, provisioning = _minutes(spec.model_load_time), _minutes(home.spec.provisioning_time)
    measured = demand[warmup:]
    known = ~np.isnan(measured)

    def short(headroom: float) -> float:
        wants = _reactive_wants(infd, demand, profile.throughput_per_replica, headroom)
        ready = single_pool_ready(wants, slots, load, provisioning, home.spec.max_nodes)
        capacity = ready[warmup:] * profile.throughput_per_replica
        if not known.any():
            return 0.0
        return float((measured[known] - capacity[known] > 1e-9).mean())

    lo, hi = 0.0, 4.0
    best = hi
    for _ in range(12):
        mid = (lo + hi) / 2
        if short(mid) <= target:
            hi, best = mid, mid
        else:
            lo = mid
    return best


@dataclass(frozen=True)
class _OraclePart:
    """The oracle's plans for minutes [lo, hi)."""

    lo: int
    capacity: FloatArray
    cost: FloatArray
    billed: FloatArray
    unattributed: FloatArray
    replicas: dict[str, IntArray]


def oracle_part(case: _ReplayCase, solver: str, lo: int, hi: int) -> _OraclePart:
    """The oracle over minutes [lo, hi): plans do not depend on earlier minutes (but for a
    gap, which holds the last known demand), so parts can run in parallel."""
    instant = []
    for infd in case.deployments:
        spec = infd.spec.model_copy(
            update={
                "scale_down": ScaleDownPolicy(stabilization_window=timedelta(0)),
                "forecast": ForecastSpec(lead_time=timedelta(0)),
            }
        )
        instant.append((key_of(infd), spec))
    pool_states = tuple(
        PoolState(p.metadata.name, p.spec, interruption_rate=case.rates.get(p.metadata.name, 0.0))
        for p in case.pools
    )
    budgets = case.budgets
    throughput = _throughputs(case)
    tier_of = {p.metadata.name: p.spec.capacity_type for p in case.pools}
    reserved_bill = sum(
        p.spec.reserved_nodes * p.spec.price_per_node_hour
        for p in case.pools
        if p.spec.capacity_type == "reserved"
    )
    n, count = hi - lo, len(case.deployments)
    capacity = np.zeros((n, count))
    cost = np.zeros((n, count))
    billed = np.zeros((n, count))
    unattributed = np.zeros(n)
    replicas = {tier: np.zeros((n, count), dtype=np.int64) for tier in TIERS}
    held = []
    for values in case.demand:
        before = values[:lo][~np.isnan(values[:lo])]
        held.append(float(before[-1]) if before.size else 0.0)
    for t in range(lo, hi):
        states = []
        for i, (key, spec) in enumerate(instant):
            value = case.demand[i][t]
            held[i] = held[i] if np.isnan(value) else float(value)
            states.append(DeploymentState(key[0], key[1], spec, DemandForecast(held[i], 1.0)))
        now = case.start + timedelta(minutes=t)
        result = plan(
            PlanInput(now, tuple(states), pool_states, budgets, solver=solver, policy=case.policy)
        )
        total = reserved_bill + sum(p.hourly_cost for p in result.pools.values())
        attributed = 0.0
        row = t - lo
        for i, (key, _) in enumerate(instant):
            planned = result.deployments[key]
            for pool_name, k in planned.replicas.items():
                capacity[row, i] += k * throughput[i][pool_name]
                replicas[tier_of[pool_name]][row, i] += k
            cost[row, i] = (planned.hourly_cost + planned.reserved_hourly) / 60.0
            billed[row, i] = planned.hourly_cost / 60.0
            attributed += planned.hourly_cost + planned.reserved_hourly
        unattributed[row] = max(0.0, total - attributed) / 60.0
    return _OraclePart(lo, capacity, cost, billed, unattributed, replicas)


def run_oracle(
    case: _ReplayCase, solver: str = "greedy", executor: Executor | None = None, parts: int = 1
) -> FleetRun:
    """Perfect foresight, no provisioning delay: the planner's cheapest joint plan for each
    minute's actual demand, at the target utilisation (the greedy solver, as Peakwise's
    replay uses; ``milp`` for the operator's exact one), in `parts` spans on `executor`."""
    pool = executor or InlineExecutor()
    bounds = np.linspace(0, case.minutes, max(1, parts) + 1).astype(int)
    jobs = [
        pool.submit(oracle_part, case, solver, int(a), int(b))
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]
    done = [job.result() for job in jobs]
    return _join_oracle(case, done)


def _join_oracle(case: _ReplayCase, done: Sequence[_OraclePart]) -> FleetRun:
    capacity = np.concatenate([d.capacity for d in done])
    cost = np.concatenate([d.cost for d in done])
    billed = np.concatenate([d.billed for d in done])
    unattributed = np.concatenate([d.unattributed for d in done])
    replicas = {tier: np.concatenate([d.replicas[tier] for d in done]) for tier in TIERS}
    n = case.minutes
    services = {
        key_of(infd): ServiceSeries(
            demand=case.demand[i],
            forecast=np.full(n, np.nan),
            capacity=capacity[:, i],
            replicas={tier: replicas[tier][:, i] for tier in TIERS},
            cost=cost[:, i],
            billed=billed[:, i],
        )
        for i, infd in enumerate(case.deployments)
    }
    return FleetRun(
        "oracle", services, unattributed, note="perfect foresight, no provisioning delay"
    )


def _throughputs(case: _ReplayCase) -> list[dict[str, float]]:
    placements = _placements(case.deployments, case.pools)
    out: list[dict[str, float]] = [{} for _ in case.deployments]
    for pl in placements:
        out[pl.service][case.pools[pl.pool].metadata.name] = pl.throughput
    return out


def run_peakwise(
    case: _ReplayCase,
    forecasts: ForecastStream,
    window: int,
    progress: Callable[[float], None] | None = None,
) -> tuple[FleetRun, list[PlannedTargets]]:
    """Forecast -> joint planner, one round per minute, as the operator runs it (every
    service as if in Enforce mode), against the fleet simulator; and the targets it had."""
    pools = case.pools
    fleet_pools = _fleet_pools(pools, case.rates)
    placements = _placements(case.deployments, pools)
    where: dict[tuple[int, str], int] = {
        (pl.service, pools[pl.pool].metadata.name): k for k, pl in enumerate(placements)
    }
    mine: list[list[tuple[str, int]]] = [[] for _ in case.deployments]
    for (i, pool_name), k in where.items():
        mine[i].append((pool_name, k))
    pool_states = tuple(
        PoolState(p.metadata.name, p.spec, interruption_rate=case.rates.get(p.metadata.name, 0.0))
        for p in pools
    )
    quantiles = [
        d.spec.forecast.quantile or 1.0 - d.spec.slo.shortfall_minutes for d in case.deployments
    ]
    keys = [key_of(d) for d in case.deployments]
    namespaces = sorted({k[0] for k in keys})
    spend = dict.fromkeys(namespaces, 0.0)
    month = (case.start.year, case.start.month)
    histories: list[tuple[tuple[datetime, float], ...]] = [() for _ in case.deployments]
    limited = dict.fromkeys(namespaces, 0)
    width = timedelta(minutes=window)
    planned_cost = np.zeros((case.minutes, len(keys)))

    def decide(t: int, requested: IntArray) -> IntArray:
        nonlocal month
        now = case.start + timedelta(minutes=t)
        if (now.year, now.month) != month:  # a monthly budget starts again
            month = (now.year, now.month)
            for ns in spend:
                spend[ns] = 0.0
        states = []
        origin = t - 1
        if origin >= 0:
            forecasts.ready(origin)
        for i, infd in enumerate(case.deployments):
            peak = forecasts.targets[i, origin] if origin >= 0 else np.nan
            forecast = (
                None
                if np.isnan(peak)
                else DemandForecast(
                    float(peak), quantiles[i], model=forecasts.labels[i][origin], window=width
                )
            )
            current = {name: int(requested[k]) for name, k in mine[i] if requested[k]}
            states.append(
                DeploymentState(keys[i][0], keys[i][1], infd.spec, forecast, current, histories[i])
            )
        left = hours_left_in_month(now)
        budgets = tuple(
            replace(b, spend=spend.get(b.namespace, 0.0), hours_left_in_period=left)
            for b in case.budgets
        )
        result = plan(
            PlanInput(now, tuple(states), pool_states, budgets, solver="greedy", policy=case.policy)
        )
        desired = np.zeros(len(placements), dtype=np.int64)
        hit = set()
        for i, key in enumerate(keys):
            planned = result.deployments[key]
            histories[i] = planned.demand_history
            spend[key[0]] += planned.hourly_cost / 60.0
            planned_cost[t, i] = planned.hourly_cost / 60.0
            if planned.budget_limited:
                hit.add(key[0])
            for pool_name, count in planned.replicas.items():
                desired[where[(i, pool_name)]] = count
        for ns in hit:
            limited[ns] += 1
        return desired

    record = simulate_fleet(fleet_pools, placements, case.minutes, decide, case.seed, progress)
    services, unattributed = _series_from_record(case, fleet_pools, placements, record)
    targets = forecasts.planned()
    notes = {}
    for i, key in enumerate(keys):
        lead = _minutes(lead_time(case.deployments[i].spec, list(pool_states)))
        shift = lead + 1
        forecast = np.full(case.minutes, np.nan)
        if case.minutes > shift:
            forecast[shift:] = targets[i].targets[: case.minutes - shift]
        services[key].forecast = forecast
        services[key].planned = planned_cost[:, i]
        notes[key] = f"{targets[i].labels[-1]}; lead {lead} min"
    fits = sum(t.fits for t in targets)
    run = FleetRun(
        "peakwise",
        services,
        unattributed,
        note=f"joint planner every minute; {fits} fits over {len(keys)} services",
        interruptions=record.interruptions,
        budget_limited=limited,
        service_notes=notes,
    )
    return run, targets


# --- summaries ---------------------------------------------------------------------------------


def _scope_keys(result_keys: Sequence[Key], scope: str) -> list[Key]:
    return [k for k in result_keys if scope == FLEET or k[0] == scope]


def summarize_scopes(
    runs: Sequence[FleetRun], fleet: Fleet, warmup: int, minutes: int
) -> list[ScopeSummary]:
    keys = fleet.keys
    oracle = next(r for r in runs if r.name == "oracle")
    out = []
    measured = max(1, minutes - warmup)
    for scope in [*fleet.namespaces(), FLEET]:
        members = _scope_keys(keys, scope)
        budget = fleet.budget(scope) if scope != FLEET else None
        cap = budget.limits.hourly if budget else None
        monthly_limit = budget.limits.monthly if budget else None

        def scope_cost(run: FleetRun, members: list[Key] = members, scope: str = scope) -> float:
            total = sum(float(run.services[k].cost[warmup:].sum()) for k in members)
            if scope == FLEET:
                total += float(run.unattributed[warmup:].sum())
            return total

        oracle_cost = scope_cost(oracle)
        for run in runs:
            shorts, knowns, unserved = 0, 0, []
            worst, worst_share = "", -1.0
            for k in members:
                s = run.services[k]
                demand, capacity = s.demand[warmup:], s.capacity[warmup:]
                known = ~np.isnan(demand)
                short = np.maximum(demand[known] - capacity[known], 0.0)
                count = int((short > 1e-9).sum())
                shorts += count
                knowns += int(known.sum())
                total = float(demand[known].sum())
                unserved.append(float(short.sum() / total) if total > 0 else 0.0)
                share = count / known.sum() if known.any() else 0.0
                if share > worst_share:
                    worst, worst_share = f"{k[0]}/{k[1]}", float(share)
            billed = np.sum([run.services[k].billed[warmup:] for k in members], axis=0) * 60.0
            plans = [run.services[k].planned for k in members]
            planned = (
                np.sum([p[warmup:] for p in plans if p is not None], axis=0) * 60.0
                if all(p is not None for p in plans)
                else None
            )
            cost = scope_cost(run)
            out.append(
                ScopeSummary(
                    scope=scope,
                    policy=run.name,
                    cost=cost,
                    cost_vs_oracle=cost / oracle_cost if oracle_cost > 0 else math.nan,
                    under_provisioned=shorts / knowns if knowns else math.nan,
                    worst_service=worst,
                    worst_under_provisioned=max(worst_share, 0.0),
                    unserved=float(np.mean(unserved)) if unserved else 0.0,
                    peak_billed_hourly=float(billed.max()) if billed.size else 0.0,
                    peak_planned_hourly=(
                        float(planned.max()) if planned is not None and planned.size else None
                    ),
                    hourly_cap=cap,
                    minutes_over_cap=int((billed > cap + 1e-6).sum()) if cap is not None else 0,
                    monthly_projection=float(billed.sum() / 60.0) * 730.0 * 60.0 / measured,
                    monthly_limit=monthly_limit,
                    budget_limited_minutes=(
                        sum(run.budget_limited.values())
                        if scope == FLEET
                        else run.budget_limited.get(scope, 0)
                    ),
                    note=run.note,
                )
            )
    return out


# --- the whole replay --------------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each task at once in this process: the executor when no pool is wanted."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller through the future
            future.set_exception(error)
        return future


def run_fleet_backtest(
    fleet: Fleet,
    demand: Mapping[Key, Series],
    options: FleetOptions = FleetOptions(),
    *,
    tokens: Mapping[Key, Series] | None = None,
    executor: Executor | None = None,
    forecaster: ForecasterFactory | None = None,
    progress: Progress | None = None,
) -> FleetResult:
    """Replay the fleet on its demand history through Peakwise and the baselines."""
    missing = [f"{k[0]}/{k[1]}" for k in fleet.keys if k not in demand]
    if missing:
        raise ConfigError(f"no demand history for {', '.join(missing)}")
    start, minutes, aligned = align({k: demand[k] for k in fleet.keys})
    token_values = {k: on_grid(s, start, minutes) for k, s in (tokens or {}).items()}
    for k in fleet.keys:
        if np.isnan(aligned[k]).all():
            raise ConfigError(f"{k[0]}/{k[1]}: the demand history has no data")
    pool = executor or InlineExecutor()
    warmup = min(_minutes(options.warmup), max(0, minutes - 1))
    rates = interruption_rates(fleet.pools, options.spot_interruptions_per_node_hour)
    case = _ReplayCase(
        start=start,
        minutes=minutes,
        pools=fleet.pools,
        deployments=fleet.deployments,
        budgets=fleet.planning_budgets(),
        demand=tuple(aligned[k] for k in fleet.keys),
        rates=rates,
        seed=options.seed,
        warmup=warmup,
        policy=fleet.policy,
    )
    for infd in fleet.deployments:
        _baseline_pool(infd, fleet.pools)  # fail early: every service needs an on-demand pool
    width = max(1, _minutes(options.window))
    refit = _minutes(options.refit_every)
    report = progress or (lambda _stage, _fraction: None)

    # The forecasts first, a span of days per service at a time: the Peakwise replay follows
    # them while the next spans are fitted.
    forecasts = ForecastStream(pool, case, width, refit, forecaster)
    # Perfect foresight needs no hedge against interruptions: the oracle sees none. Its
    # minutes are independent, so it runs in spans beside the forecasts.
    oracle_case = replace(case, rates={})
    bounds = np.linspace(0, minutes, ORACLE_PARTS + 1).astype(int)
    oracle_jobs = [
        pool.submit(oracle_part, oracle_case, "greedy", int(a), int(b))
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]
    plain_jobs = {
        name: pool.submit(run_on_demand_baseline, case, name, None)
        for name in ("static-peak", "reactive", "hpa-70%")
    }
    peakwise, targets = run_peakwise(
        case, forecasts, width, lambda f: report("replay the fleet", f)
    )
    achieved = [
        summarize_service_shortfall(
            peakwise.services[k].demand, peakwise.services[k].capacity, warmup
        )
        for k in fleet.keys
    ]
    tiered = len({p.spec.capacity_type for p in fleet.pools}) > 1
    tune_jobs = [
        pool.submit(tune_service_headroom, d, fleet.pools, case.demand[i], achieved[i], warmup)
        for i, d in enumerate(fleet.deployments)
    ]
    headrooms = [job.result() for job in tune_jobs]
    report("baselines", 0.5)
    tuned_job = pool.submit(run_on_demand_baseline, case, "reactive-tuned", headrooms)
    # The tiered baseline runs at the same headrooms: tuning it again on the shared tiers
    # would take a fleet replay per step (its own shortfall is shown as it comes out).
    tiered_run_job = pool.submit(run_tiered_baseline, case, headrooms) if tiered else None
    runs = [plain_jobs["static-peak"].result(), plain_jobs["reactive"].result()]
    runs[0].note = "each service's peak on on-demand, all the time"
    runs[1].note = "HPA-like on current demand, no headroom"
    tuned = tuned_job.result()
    tuned.note = "reactive, each service's headroom tuned to Peakwise's shortfall for it"
    hpa = plain_jobs["hpa-70%"].result()
    hpa.note = "HPA-like at a 70% utilisation target, set up front"
    runs += [tuned, hpa]
    if tiered_run_job is not None:
        tiered_run = tiered_run_job.result()
        tiered_run.note = "the same tiers (HPA + Karpenter-like), at the reactive-tuned headrooms"
        runs.append(tiered_run)
    runs += [peakwise, _join_oracle(oracle_case, [job.result() for job in oracle_jobs])]
    report("baselines", 1.0)
    infos = {}
    for i, infd in enumerate(fleet.deployments):
        key = key_of(infd)
        unit = demand_unit(infd)
        tokens_series = token_values.get(key)
        if tokens_series is None and unit == "tokens":
            tokens_series = case.demand[i]
        infos[key] = ServiceInfo(
            key=key,
            unit=unit,
            lead_minutes=_minutes(
                lead_time(infd.spec, [PoolState(p.metadata.name, p.spec) for p in fleet.pools])
            ),
            target=infd.spec.slo.shortfall_minutes if infd.spec.forecast.quantile is None else None,
            tokens=tokens_series,
        )
    result = FleetResult(
        start=start,
        minutes=minutes,
        warmup_minutes=warmup,
        fleet=fleet,
        services=infos,
        runs=runs,
        summaries=summarize_scopes(runs, fleet, warmup, minutes),
        calibrations={k: t.calibrations for k, t in zip(fleet.keys, targets, strict=True)},
    )
    result.advice, result.advice_problems = fleet_advice(
        fleet, {k: aligned[k] for k in fleet.keys}, options
    )
    return result


def summarize_service_shortfall(demand: FloatArray, capacity: FloatArray, warmup: int) -> float:
    d, c = demand[warmup:], capacity[warmup:]
    known = ~np.isnan(d)
    if not known.any():
        return 0.0
    return float((np.maximum(d[known] - c[known], 0.0) > 1e-9).mean())


# --- commitment advice for the fleet -----------------------------------------------------------


def home_gpu_type(infd: InferenceDeployment, pools: Sequence[GPUNodePool]) -> str:
    """The GPU type a service counts on for advice: its cheapest on-demand one, else its
    first profile's."""
    try:
        return pools[_baseline_pool(infd, pools)].spec.gpu_type
    except ConfigError:
        return infd.spec.gpu_profiles[0].gpu_type


def fleet_needs(
    fleet: Fleet, demand: Mapping[Key, FloatArray], gpu_type: str, gpus_per_node: int
) -> list[ServiceNeed]:
    """The needs of the services that run on `gpu_type`: those whose cheapest on-demand way
    to serve their demand is that type (a service with profiles on several types counts on
    one of them)."""
    needs = []
    for infd in fleet.deployments:
        key = key_of(infd)
        if home_gpu_type(infd, fleet.pools) != gpu_type:
            continue
        needs.append(
            service_need(f"{key[0]}/{key[1]}", infd.spec, demand[key], gpu_type, gpus_per_node)
        )
    return needs


def fleet_advice(
    fleet: Fleet, demand: Mapping[Key, FloatArray], options: FleetOptions
) -> tuple[list[Advice], list[str]]:
    """Commitment advice for each GPU type the fleet runs on (or `options.advice_gpu_types`)."""
    types = options.advice_gpu_types or tuple(
        sorted({home_gpu_type(d, fleet.pools) for d in fleet.deployments})
    )
    out, problems = [], []
    for gpu_type in types:
        try:
            same = [p for p in fleet.pools if p.spec.gpu_type == gpu_type]
            gpus_per_node = max((p.spec.gpus_per_node for p in same), default=1)
            needs = fleet_needs(fleet, demand, gpu_type, gpus_per_node)
            loads = [n.load_time for n in needs]
            load = max(loads) if loads else timedelta(0)
            market = market_for(
                gpu_type,
                fleet.pools,
                options.reserved_prices,
                assumed_spot_interruptions=options.spot_interruptions_per_node_hour,
                load_time=load,
            )
            minutes = needs[0].gpus.shape[0] if needs else 0
            out.append(advise(needs, market, describe_assumptions(market, needs, minutes)))
        except AdviceError as error:
            problems.append(f"{gpu_type}: {error}")
    return out, problems


def brute_force_commitment(
    fleet: Fleet,
    demand: Mapping[Key, FloatArray],
    start: datetime,
    market: GPUTypeMarket,
    price: float,
    nodes: Sequence[int],
    *,
    solver: str = "milp",
    stride: int = 1,
) -> list[float]:
    """Expected monthly cost of `market`'s GPU type with each reserved count in `nodes`, by
    the real planner (the operator's exact solver by default): every `stride`-th minute, the
    cheapest joint plan for the services' demand capped at their shortfall targets (the
    requirement the advice assumes), with that many reserved nodes at `price`: whole nodes,
    replicas packed, each service's spot rules, spot hedged at its interruption rate,
    reserved capacity shared as the platform shares it. Slow (a plan per minute and count):
    for checking the advice."""
    gpu_type = market.gpu_type
    same = [p for p in fleet.pools if p.spec.gpu_type == gpu_type]
    template = next((p for p in same if p.spec.capacity_type == "onDemand"), None)
    if template is None:
        raise AdviceError(f"no onDemand pool of {gpu_type} to model a commitment on")
    flexible = [p for p in same if p.spec.capacity_type != "reserved"]
    names = {n.name for n in fleet_needs(fleet, demand, gpu_type, market.gpus_per_node)}
    deployments = []
    for infd in fleet.deployments:
        key = key_of(infd)
        if f"{key[0]}/{key[1]}" not in names:
            continue
        profiles = [q for q in infd.spec.gpu_profiles if q.gpu_type == gpu_type]
        spec = infd.spec.model_copy(update={"gpu_profiles": profiles})
        deployments.append(infd.model_copy(update={"spec": spec}))
    capped = tuple(
        capped_demand(demand[key_of(d)], d.spec.slo.shortfall_minutes)[::stride]
        for d in deployments
    )
    minutes = capped[0].shape[0]
    rates = {
        p.metadata.name: market.spot_interruptions_per_node_hour
        for p in flexible
        if p.spec.capacity_type == "spot"
    }
    costs = []
    for count in nodes:
        pools = list(flexible)
        if count:
            wire = template.spec.model_dump(by_alias=True, mode="json")
            wire.update(
                capacityType="reserved",
                pricePerNodeHour=price,
                reservedNodes=count,
                minNodes=0,
                maxNodes=count,
            )
            pools.append(
                GPUNodePool.model_validate({"metadata": {"name": "committed"}, "spec": wire})
            )
        case = _ReplayCase(
            start=start,
            minutes=minutes,
            pools=tuple(pools),
            deployments=tuple(deployments),
            budgets=(),
            demand=capped,
            rates=rates,
            seed=0,
            warmup=0,
        )
        per_minute = float(run_oracle(case, solver).total_cost().sum()) / minutes
        costs.append(per_minute * 60.0 * HOURS_PER_MONTH)
    return costs

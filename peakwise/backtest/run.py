"""Replays a demand trace through every policy and measures cost and service."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import ForecastSpec, InferenceDeploymentSpec, ScaleDownPolicy
from peakwise.backtest.config import BacktestConfig, ConfigError
from peakwise.backtest.policies import (
    Decide,
    ForecasterFactory,
    PeakwisePolicy,
    ReactivePolicy,
    TieredReactivePolicy,
    plan_targets,
    replicas_for,
    static_policy,
)
from peakwise.backtest.simulator import SimPool, Simulator
from peakwise.forecasting.base import CalibrationInfo
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.target import hold_rule, selection_quantile, service_forecaster
from peakwise.planner import DemandForecast, DeploymentState, PlanInput, PoolState, plan
from peakwise.planner.capacity import lead_time

TIERS = ("reserved", "spot", "onDemand")
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class BacktestOptions:
    window: timedelta = timedelta(minutes=1)
    """Width of the forecast window each decision covers, starting one lead time ahead: one
    decision interval, so each minute is covered by the freshest forecast made for it."""
    refit_every: timedelta = timedelta(days=1)
    warmup: timedelta = timedelta(days=1)
    """Minutes before this are replayed but not measured (the forecaster has no history yet)."""
    spot_interruptions_per_node_hour: float = 0.0
    seed: int = 1


@dataclass
class PolicyRun:
    name: str
    demand: FloatArray
    forecast: FloatArray
    capacity: FloatArray
    replicas: dict[str, np.ndarray]
    cost: FloatArray
    actions: int
    interruptions: int = 0
    note: str = ""


@dataclass(frozen=True)
class Summary:
    name: str
    cost: float
    cost_vs_oracle: float
    under_provisioned: float
    """Share of measured minutes where demand exceeded what ready replicas serve."""
    unserved: float
    """Share of measured demand not served."""
    actions: int
    note: str


@dataclass
class BacktestResult:
    start: datetime
    runs: list[PolicyRun]
    summaries: list[Summary]
    warmup_minutes: int
    lead_minutes: int
    target: float | None = None
    """The shortfall target Peakwise calibrated to (None under a fixed forecast.quantile)."""
    calibrations: list[tuple[int, CalibrationInfo]] = field(default_factory=list)
    """(first minute, calibration) of each of Peakwise's fits, in time order."""

    def summary(self, name: str) -> Summary:
        return next(s for s in self.summaries if s.name == name)


def simulated_pools(
    spec: InferenceDeploymentSpec, pools: list[GPUNodePool], interruption_rate: float
) -> list[SimPool]:
    out = []
    load = _minutes(spec.model_load_time)
    for pool in pools:
        profiles = [
            p
            for p in spec.gpu_profiles
            if p.gpu_type == pool.spec.gpu_type and p.gpus_per_replica <= pool.spec.gpus_per_node
        ]
        if not profiles:
            continue
        best = max(profiles, key=lambda p: p.throughput_per_replica / p.gpus_per_replica)
        out.append(
            SimPool(
                name=pool.metadata.name,
                tier=pool.spec.capacity_type,
                slots=pool.spec.gpus_per_node // best.gpus_per_replica,
                throughput=best.throughput_per_replica,
                node_price=pool.spec.price_per_node_hour,
                reserved_nodes=pool.spec.reserved_nodes,
                max_nodes=pool.spec.max_nodes,
                provisioning_minutes=_minutes(pool.spec.provisioning_time),
                load_minutes=load,
                interruptions_per_node_hour=(
                    interruption_rate if pool.spec.capacity_type == "spot" else 0.0
                ),
            )
        )
    return out


def _minutes(d: timedelta) -> int:
    return max(0, round(d.total_seconds() / 60))


def _simulate(
    name: str,
    decide: Decide,
    pools: list[SimPool],
    demand: FloatArray,
    seed: int,
    initial: dict[str, int] | None = None,
    progress: Progress | None = None,
) -> PolicyRun:
    n = demand.shape[0]
    sim = Simulator(pools, seed)
    if initial:
        sim.start_with(initial)
    capacity = np.zeros(n)
    cost = np.zeros(n)
    replicas = {tier: np.zeros(n, dtype=np.int64) for tier in TIERS}
    tier_of = {p.name: p.tier for p in pools}
    throughput = {p.name: p.throughput for p in pools}
    actions = 0
    last: dict[str, int] = dict(initial or {})
    for t in range(n):
        desired = decide(t, sim.requested())
        actions += sum(1 for p in set(desired) | set(last) if desired.get(p, 0) != last.get(p, 0))
        last = desired
        ready, cost[t] = sim.step(t, desired)
        for pool_name, count in ready.items():
            capacity[t] += count * throughput[pool_name]
            replicas[tier_of[pool_name]][t] += count
        if progress and t % 500 == 0:
            progress(name, t / n)
    return PolicyRun(
        name, demand, np.full(n, np.nan), capacity, replicas, cost, actions, sim.interruptions
    )


def perfect_foresight(
    namespace: str,
    spec: InferenceDeploymentSpec,
    pools: list[GPUNodePool],
    sim_pools: list[SimPool],
    demand: FloatArray,
    start: datetime,
) -> PolicyRun:
    """Perfect foresight, no lag: exactly the cheapest capacity for each minute's demand."""
    instant = spec.model_copy(
        update={
            "scale_down": ScaleDownPolicy(stabilization_window=timedelta(0)),
            "forecast": ForecastSpec(lead_time=timedelta(0)),
        }
    )
    states = tuple(PoolState(p.metadata.name, p.spec) for p in pools)
    n = demand.shape[0]
    capacity, cost = np.zeros(n), np.zeros(n)
    replicas = {tier: np.zeros(n, dtype=np.int64) for tier in TIERS}
    by_name = {p.name: p for p in sim_pools}
    cache: dict[float, tuple[dict[str, int], float]] = {}
    held = 0.0
    for t in range(n):
        d = held if np.isnan(demand[t]) else float(demand[t])
        held = d
        if d not in cache:
            state = DeploymentState(namespace, "oracle", instant, DemandForecast(d, 1.0))
            result = plan(PlanInput(start, (state,), states, solver="greedy"))
            wanted = dict(result.deployments[(namespace, "oracle")].replicas)
            cache[d] = (wanted, sum(p.hourly_cost for p in result.pools.values()))
        wanted, hourly = cache[d]
        reserved = sum(p.reserved_nodes * p.node_price for p in sim_pools if p.tier == "reserved")
        cost[t] = (hourly + reserved) / 60.0
        for name, count in wanted.items():
            capacity[t] += count * by_name[name].throughput
            replicas[by_name[name].tier][t] += count
    return PolicyRun("oracle", demand, np.full(n, np.nan), capacity, replicas, cost, 0)


def summarize(run: PolicyRun, oracle_cost: float, warmup: int) -> Summary:
    demand = run.demand[warmup:]
    capacity = run.capacity[warmup:]
    known = ~np.isnan(demand)
    short = np.maximum(demand[known] - capacity[known], 0.0)
    total_demand = float(demand[known].sum())
    cost = float(run.cost[warmup:].sum())
    return Summary(
        name=run.name,
        cost=cost,
        cost_vs_oracle=cost / oracle_cost if oracle_cost > 0 else math.nan,
        under_provisioned=float((short > 1e-9).mean()) if known.any() else math.nan,
        unserved=float(short.sum() / total_demand) if total_demand > 0 else 0.0,
        actions=run.actions,
        note=run.note,
    )


HPA_UTILIZATION = 0.7
"""The fixed-headroom baseline: replicas for the demand just observed at a 70% utilisation
target, chosen up front the way a team sets an HPA target."""


def run_backtest(
    series: Series,
    config: BacktestConfig,
    options: BacktestOptions = BacktestOptions(),
    forecaster: ForecasterFactory | None = None,
    progress: Progress | None = None,
) -> BacktestResult:
    """Replay `series` (demand/s per minute; NaN = gap) through every policy.

    ``forecaster`` makes the forecaster Peakwise calibrates (default: the operator's,
    ``default_forecaster``), from (lead, window, selection quantile) in steps.
    """
    if series.step_seconds != 60:
        raise ConfigError("backtests replay per-minute traces (step 60 s)")
    if len(series) == 0 or np.isnan(series.values).all():
        raise ConfigError("the trace has no demand to replay")
    deployment = config.deployment
    spec = deployment.spec
    namespace = deployment.metadata.namespace or "default"
    demand = series.values
    n = demand.shape[0]
    warmup = min(_minutes(options.warmup), max(0, n - 1))
    pools = list(config.pools)
    rate = options.spot_interruptions_per_node_hour
    sim_pools = simulated_pools(spec, pools, rate)
    lead_span = lead_time(spec, [PoolState(p.metadata.name, p.spec) for p in pools])
    lead = _minutes(lead_span)
    width = max(1, _minutes(options.window))
    utilization = spec.demand.target_utilization
    peak_demand = float(np.nanmax(demand))
    hold = _minutes(spec.scale_down.stabilization_window)

    on_demand = [p for p in sim_pools if p.tier == "onDemand"]
    if not on_demand:
        raise ConfigError("the baselines (static, reactive) need an onDemand pool in the config")
    baseline = min(on_demand, key=lambda p: p.node_price / p.slots / p.throughput)

    static_replicas = min(
        max(replicas_for(peak_demand, baseline.throughput, utilization), spec.replicas.min),
        spec.replicas.max,
    )
    static = _simulate(
        "static-peak",
        static_policy(baseline.name, static_replicas),
        [baseline],
        demand,
        options.seed,
        {baseline.name: static_replicas},
        progress,
    )
    static.note = f"{static_replicas} on-demand replicas all the time"

    def reactive(headroom: float, at: float = utilization) -> PolicyRun:
        policy = ReactivePolicy(
            pool=baseline.name,
            demand=demand,
            throughput=baseline.throughput,
            utilization=at,
            min_replicas=spec.replicas.min,
            max_replicas=spec.replicas.max,
            window=hold,
            headroom=headroom,
        )
        return _simulate("reactive", policy, [baseline], demand, options.seed)

    rule = hold_rule(spec, lead_span, timedelta(minutes=width))
    target = spec.slo.shortfall_minutes
    inner = None
    if forecaster is not None:
        inner = forecaster(lead, width, selection_quantile(target, spec.forecast.quantile))
    model = service_forecaster(spec, rule, width, inner)
    planned = plan_targets(
        model,
        series,
        refit_every=_minutes(options.refit_every),
        progress=(lambda done: progress("forecast", done / n)) if progress else None,
    )
    peakwise = PeakwisePolicy(
        namespace=namespace,
        name=deployment.metadata.name,
        spec=spec,
        pools=pools,
        peaks=planned.targets,
        quantile=spec.forecast.quantile or 1.0 - target,
        model_names=planned.labels,
        timestamps=series.time_at,
        window=timedelta(minutes=width),
        budget=config.budget.spec if config.budget else None,
        interruption_rates={p.metadata.name: rate for p in pools if p.spec.capacity_type == "spot"},
    )
    pw = _simulate("peakwise", peakwise, sim_pools, demand, options.seed, None, progress)
    # Shown against the minutes it forecast: the decision at t (origin t - 1) looks at
    # the window that starts `lead` minutes after t.
    pw.forecast = np.full(n, np.nan)
    shift = lead + 1
    if n > shift:
        pw.forecast[shift:] = planned.targets[: n - shift]
    pw.note = f"{planned.labels[-1]}; lead {lead} min"
    if peakwise.limited_minutes:
        pw.note += f"; budget-limited {peakwise.limited_minutes} min"

    oracle = perfect_foresight(namespace, spec, pools, sim_pools, demand, series.start)
    oracle.note = "perfect foresight, no provisioning delay"
    oracle_cost = float(oracle.cost[warmup:].sum())

    plain = reactive(0.0)
    plain.note = "HPA-like on current demand, no headroom"
    achieved = summarize(pw, oracle_cost, warmup).under_provisioned
    tuned, headroom = _tune_reactive(reactive, oracle_cost, warmup, achieved, progress)
    tuned.name = "reactive-tuned"
    tuned.note = _tuned_note(headroom)
    hpa = reactive(0.0, HPA_UTILIZATION)
    hpa.name = "hpa-70%"
    hpa.note = "HPA-like at a 70% utilisation target, set up front"
    runs = [static, plain, tuned, hpa]
    tiers = {p.tier for p in sim_pools}
    if tiers != {"onDemand"}:

        def tiered(headroom: float) -> PolicyRun:
            policy = _tiered_reactive(spec, sim_pools, demand, baseline, hold, headroom)
            return _simulate("reactive-tiered", policy, sim_pools, demand, options.seed)

        tiered_run, room = _tune_reactive(tiered, oracle_cost, warmup, achieved, progress)
        tiered_run.name = "reactive-tiered-tuned"
        tiered_run.note = "the same tiers (HPA + Karpenter-like); " + _tuned_note(room)
        runs.append(tiered_run)
    runs += [pw, oracle]
    return BacktestResult(
        start=series.start,
        runs=runs,
        summaries=[summarize(r, oracle_cost, warmup) for r in runs],
        warmup_minutes=warmup,
        lead_minutes=lead,
        target=target if spec.forecast.quantile is None else None,
        calibrations=planned.calibrations,
    )


def _tuned_note(headroom: float) -> str:
    if headroom > 0:
        return f"headroom {headroom:.0%} to match Peakwise's under-provisioning"
    return "no headroom needed: under-provisioned no more often than Peakwise"


def _tiered_reactive(
    spec: InferenceDeploymentSpec,
    pools: list[SimPool],
    demand: FloatArray,
    baseline: SimPool,
    hold: int,
    headroom: float,
) -> TieredReactivePolicy:
    def rooms(tier: str) -> list[tuple[str, int]]:
        chosen = sorted((p for p in pools if p.tier == tier), key=lambda p: p.node_price / p.slots)
        if tier == "reserved":
            return [(p.name, min(p.reserved_nodes, p.max_nodes) * p.slots) for p in chosen]
        return [(p.name, p.max_nodes * p.slots) for p in chosen]

    return TieredReactivePolicy(
        demand=demand,
        throughput=baseline.throughput,
        utilization=spec.demand.target_utilization,
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
        window=hold,
        reserved=rooms("reserved"),
        spot=rooms("spot"),
        on_demand=rooms("onDemand"),
        spot_fraction=spec.capacity.spot.max_fraction,
        on_demand_min=spec.capacity.on_demand.min_replicas,
        headroom=headroom,
    )


def _tune_reactive(
    reactive: Callable[[float], PolicyRun],
    oracle_cost: float,
    warmup: int,
    target: float,
    progress: Progress | None,
) -> tuple[PolicyRun, float]:
    """The least headroom at which the reactive policy is under-provisioned no more often."""
    lo, hi = 0.0, 4.0
    best = reactive(hi)
    best_headroom = hi
    for step in range(12):
        mid = (lo + hi) / 2
        run = reactive(mid)
        if summarize(run, oracle_cost, warmup).under_provisioned <= target:
            hi, best, best_headroom = mid, run, mid
        else:
            lo = mid
        if progress:
            progress("reactive-tuned", step / 12)
    return best, best_headroom

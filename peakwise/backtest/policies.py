"""The policies a backtest compares. Each decides, at the start of minute t, the replicas it
wants per pool, from the demand of minutes before t only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import CalibrationInfo, PeakForecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.target import ShortfallForecaster, refit_interval
from peakwise.planner import (
    BudgetState,
    DemandForecast,
    DeploymentState,
    PlanInput,
    PoolState,
    plan,
)
from peakwise.planner.budget import hours_left_in_month

Decide = Callable[[int, Mapping[str, int]], dict[str, int]]
"""(minute, replicas per pool now) -> desired replicas per pool."""


def replicas_for(demand: float, throughput: float, utilization: float) -> int:
    return math.ceil(demand / (throughput * utilization) - 1e-9) if demand > 0 else 0


def static_policy(pool: str, replicas: int) -> Decide:
    """Capacity for the peak, all the time."""
    return lambda _t, _now: {pool: replicas}


@dataclass
class ReactivePolicy:
    """HPA-like: size for the demand just observed (plus headroom), scale down only after
    the stabilisation window, on one on-demand pool. Capacity arrives after the lead time."""

    pool: str
    demand: FloatArray
    throughput: float
    utilization: float
    min_replicas: int
    max_replicas: int
    window: int
    headroom: float = 0.0
    _recent: list[int] = field(default_factory=list)
    _last: int = 0

    def __call__(self, t: int, _current: Mapping[str, int]) -> dict[str, int]:
        observed = self.demand[t - 1] if t > 0 else np.nan
        if np.isnan(observed):
            want = self._last  # no data: hold
        else:
            want = replicas_for(observed * (1 + self.headroom), self.throughput, self.utilization)
        want = min(max(want, self.min_replicas), self.max_replicas)
        self._recent.append(want)
        if len(self._recent) > self.window:
            self._recent.pop(0)
        self._last = max(self._recent)
        return {self.pool: self._last}


ForecasterFactory = Callable[[int, int, float], PeakForecaster]
"""(lead, width, selection quantile) -> an unfitted forecaster for ``ShortfallForecaster``."""


@dataclass(frozen=True)
class PlannedTargets:
    """What Peakwise asked the planner for at every origin, and why."""

    targets: FloatArray
    """Demand (units/s) to plan for at each origin (NaN: no forecast yet)."""
    labels: list[str]
    """The model (and margin) that made each origin's target."""
    calibrations: list[tuple[int, CalibrationInfo]]
    """(first origin, calibration) of every fit, in time order."""
    fits: int


def plan_targets(
    model: ShortfallForecaster,
    series: Series,
    *,
    refit_every: int,
    progress: Callable[[int], None] | None = None,
) -> PlannedTargets:
    """The target for every origin, refitting as the operator does (``refit_interval``: a
    new service often, then every ``refit_every`` steps).

    One model is made and refitted, as the operator keeps one per service (a warm-started
    one carries what it learned from earlier fits). Each block of origins is predicted by the
    model fitted on the history up to the block's first origin, from a series cut at the
    block's last origin: nothing after an origin is visible to its target.
    """
    planned, _ = plan_target_span(
        model, series, 0, len(series), refit_every=refit_every, progress=progress
    )
    return planned


def plan_target_span(
    model: ShortfallForecaster,
    series: Series,
    begin: int,
    until: int,
    *,
    refit_every: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[PlannedTargets, int]:
    """`plan_targets` for the origins from `begin` (where a refit is due) to the first refit
    due at or after `until`: their targets (``targets[0]`` is origin `begin`'s) and that
    refit's origin. Span after span, with the model carried over, they are `plan_targets`'."""
    n = len(series)
    step = series.step_seconds
    blocks: list[FloatArray] = []
    labels: list[str] = []
    calibrations: list[tuple[int, CalibrationInfo]] = []
    start, fits = begin, 0
    while start < min(n, until):
        interval = refit_interval((start + 1) * step, refit_every * step)
        stop = min(n, start + max(1, round(interval / step)))
        model.fit(series.head(start + 1))
        fits += 1
        origins = np.arange(start, stop, dtype=np.int64)
        blocks.append(model.predict_target(series.head(stop), origins))
        info = model.info_
        labels += [info.model] * (stop - start)
        assert info.calibration is not None
        calibrations.append((start, info.calibration))
        if progress:
            progress(stop)
        start = stop
    targets = np.concatenate(blocks) if blocks else np.empty(0)
    return PlannedTargets(targets, labels, calibrations, fits), start


@dataclass
class TieredReactivePolicy:
    """HPA plus a Karpenter-like provisioner: replicas for the demand just observed (plus
    headroom), held for the stabilisation window, placed on the cheapest tier with room:
    reserved first, then spot up to ``spot_fraction`` of the replicas (keeping
    ``on_demand_min`` off spot), then on-demand."""

    demand: FloatArray
    throughput: float
    utilization: float
    min_replicas: int
    max_replicas: int
    window: int
    reserved: Sequence[tuple[str, int]]
    """(pool, replicas its reserved nodes hold), cheapest first."""
    spot: Sequence[tuple[str, int]]
    """(pool, most replicas), cheapest first."""
    on_demand: Sequence[tuple[str, int]]
    spot_fraction: float
    on_demand_min: int
    headroom: float = 0.0
    _reactive: ReactivePolicy | None = None

    def __call__(self, t: int, current: Mapping[str, int]) -> dict[str, int]:
        if self._reactive is None:
            self._reactive = ReactivePolicy(
                "total",
                self.demand,
                self.throughput,
                self.utilization,
                self.min_replicas,
                self.max_replicas,
                self.window,
                self.headroom,
            )
        left = self._reactive(t, current)["total"]
        out: dict[str, int] = {}
        for pool, room in self.reserved:
            out[pool] = min(room, left)
            left -= out[pool]
        total = sum(out.values()) + left
        spot_room = max(0, min(math.floor(self.spot_fraction * total), total - self.on_demand_min))
        for pool, room in self.spot:
            out[pool] = min(room, left, spot_room)
            left -= out[pool]
            spot_room -= out[pool]
        for pool, room in self.on_demand:
            out[pool] = min(room, left)
            left -= out[pool]
        return {pool: count for pool, count in out.items() if count}


@dataclass
class PeakwisePolicy:
    """Forecast → planner, exactly as the operator runs it, one plan per minute."""

    namespace: str
    name: str
    spec: InferenceDeploymentSpec
    pools: Sequence[GPUNodePool]
    peaks: FloatArray
    quantile: float
    model_names: list[str]
    timestamps: Callable[[int], datetime]
    window: timedelta = timedelta(minutes=1)
    """Width of the window each forecast covers: the planner holds its target that long
    after the lead time."""
    budget: CostBudgetSpec | None = None
    interruption_rates: Mapping[str, float] = field(default_factory=dict)
    spend: float = 0.0
    history: tuple[tuple[datetime, float], ...] = ()
    limited_minutes: int = 0

    def __call__(self, t: int, current: Mapping[str, int]) -> dict[str, int]:
        origin = t - 1
        peak = self.peaks[origin] if origin >= 0 else np.nan
        forecast = (
            None
            if np.isnan(peak)
            else DemandForecast(
                float(peak), self.quantile, model=self.model_names[origin], window=self.window
            )
        )
        now = self.timestamps(t)
        state = DeploymentState(
            self.namespace, self.name, self.spec, forecast, dict(current), self.history
        )
        pools = tuple(
            PoolState(
                p.metadata.name,
                p.spec,
                interruption_rate=self.interruption_rates.get(p.metadata.name, 0.0),
            )
            for p in self.pools
        )
        budgets: tuple[BudgetState, ...] = ()
        if self.budget is not None:
            left = hours_left_in_month(now)
            budgets = (BudgetState(self.namespace, self.budget, self.spend, left),)
        result = plan(PlanInput(now, (state,), pools, budgets, solver="greedy"))
        planned = result.deployments[(self.namespace, self.name)]
        self.history = planned.demand_history
        self.spend += planned.hourly_cost / 60.0
        self.limited_minutes += planned.budget_limited
        return dict(planned.replicas)

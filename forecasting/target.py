"""The forecaster a service runs with: its shortfall target in, the demand to plan for out.

A team states ``spec.slo.shortfallMinutes``: at most this share of minutes may have less ready
capacity than demand. ``ShortfallForecaster`` turns it into a margin for each service, from
the service's own history, at every refit:

1. **Options.** The service's forecaster (``AutoForecaster`` by default), whose margin is the
   quantile it forecasts at, and a *reactive rule*, the demand just observed plus a headroom
   (what an HPA does with a utilisation target), for services too new to forecast.
2. **Calibration.** Over the newest ``calibration_seconds`` of the history (7 days), each
   option forecasts every origin at a grid of margins, ``shortfall.held_capacity`` replays
   what the planner would have held for each (lead time, hold rule and stabilisation
   window, whole replicas, replica bounds), and the option's margin is the smallest whose
   replayed shortfall is within the target. Minutes where demand sat at the capacity that
   served it (*censored*: a served-requests metric flattens there, so true demand was
   higher) count as short, whatever the margin; minutes above what ``replicas.max``
   replicas serve are left out (short at any margin, they would only push it to its
   limit), and the note says how many. The forecast's quantile is then also
   calibrated per time of day (``time_of_day_buckets``, a quarter of the UTC day each), each
   bucket's misses shrunk toward the whole day's, and used if it replays less capacity.
3. **Handover.** A service starts on the reactive rule; forecasts take over once there is
   ``handover_seconds`` of history (1 day) and they meet the target on it with less replayed
   capacity than the reactive rule. A service whose forecasts stop paying (a level shift
   the models have not learnt) goes back to the reactive rule at the next refit, the same
   way. Services with little history are refitted more often (``refit_interval``), so the
   reactive headroom is recalibrated as evidence comes in.

``quantile`` is the expert override: when set, the forecaster serves that quantile and no
margin is calibrated; the replayed shortfall is still measured and reported.

Each fit also measures what was *achieved*: the forecasts the previous fit served, replayed
over the history that came after it (out of sample, unlike the calibration), kept for the
newest ``achieved_seconds`` (7 days) in ``info_.calibration``. The state survives
``discard_history`` and pickling, so the operator can refit a copy of the model it serves;
after an operator restart ``carry_achieved`` starts a new model's record from the figure the
service's status kept.

No lookahead: a fit uses its history only and ``predict_target`` at origin ``o`` uses
``series.values[: o + 1]`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, Self

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import (
    CalibrationInfo,
    Estimator,
    ForecastInfo,
    IntArray,
    Mode,
    PeakForecaster,
)
from peakwise.forecasting.naive import DAY_SECONDS
from peakwise.forecasting.select import default_forecaster
from peakwise.forecasting.series import FloatArray, Series
from peakwise.forecasting.shortfall import (
    BoolArray,
    HoldRule,
    censored_steps,
    held_capacity,
    last_level_shift,
)
from peakwise.forecasting.windows import last_known, recent_range, valid_origins

DEFAULT_SHORTFALL = 0.005
"""``spec.slo.shortfallMinutes`` when not set: 0.5% of minutes."""

QUANTILES = np.concatenate(
    [[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85], np.arange(0.9, 0.998, 0.002), [0.999]]
)
"""The margins a forecast is calibrated over: quantiles, finest near the top, where targets
of a fraction of a percent of minutes land, and below the median, where whole replicas or the
hold rule already cover most minutes."""
HEADROOMS = np.concatenate(
    [np.arange(0.0, 0.5, 0.01), np.arange(0.5, 1.0, 0.05), [1.0, 1.5, 2.0, 3.0, 4.0]]
)
"""The reactive rule's headroom over the demand just observed, as a share of it."""
DEFAULT_HEADROOM = 1.0 / 0.7 - 1.0
"""The reactive headroom before any minute can be replayed: a 70% utilisation target."""
SPREADS = np.concatenate(
    [np.arange(0.0, 1.0, 0.02), np.arange(1.0, 3.0, 0.1), [3.0, 4.0, 6.0, 8.0]]
)
"""The other reactive rule's headroom, in units of how much demand has been moving: the range
of the last hour plus twice the history's median one (the nowcast's scale)."""
VOLATILITY_STEPS = 60
SHRINK_DAYS = 14.0
"""A time-of-day bucket's own misses count as much as the whole day's (scaled to the
bucket) after this many days of that bucket: with less history its margin leans on the
whole day's, so a young service's buckets fall back to one margin gracefully."""
PRICES = np.geomspace(0.03, 3000.0, 41)
"""What a short minute may cost, in minutes of the span's mean capacity: the prices at which
time-of-day margins are traded off against capacity."""

FIRST_PLANNED_STEPS = 2
"""A young service's replay counts the steps whose capacity was planned from this many
minutes of its demand or more."""

MIN_REFIT_SECONDS = 300
REFIT_GROWTH = 0.1
"""A service with under a day of history is refitted once its history has grown by this
share (but at most every ``MIN_REFIT_SECONDS``): a new service recalibrates its reactive
headroom as evidence comes in. After its first day, the refit interval applies."""
YOUNG_SECONDS = DAY_SECONDS


def selection_quantile(shortfall: float, quantile: float | None = None) -> float:
    """The quantile a forecaster's model selection scores at for this target: the override
    if set, else ``1 - 2 × shortfall`` within [0.9, 0.999] (a held target covers more minutes
    than its forecast's quantile; the served margin is calibrated afterwards anyway)."""
    if quantile is not None:
        return quantile
    return min(max(1.0 - 2.0 * shortfall, 0.9), 0.999)


def refit_interval(history_seconds: float, refit_every_seconds: float) -> float:
    """Seconds until the next refit of a model fitted on ``history_seconds`` of history."""
    if history_seconds >= YOUNG_SECONDS:
        return float(refit_every_seconds)
    grown = max(MIN_REFIT_SECONDS, REFIT_GROWTH * history_seconds)
    return float(min(refit_every_seconds, grown))


def hold_rule(
    spec: InferenceDeploymentSpec, lead: timedelta, window: timedelta, step_seconds: int = 60
) -> HoldRule:
    """The planner's hold rule for this service, in steps: targets stand for the larger of the
    stabilisation window and lead + window (``planner.plan.hold_window``), replicas come in
    units of the smallest profile's throughput at the target utilisation."""

    def steps(d: timedelta) -> int:
        return max(0, round(d.total_seconds() / step_seconds))

    width = max(1, steps(window))
    hold = max(steps(spec.scale_down.stabilization_window), steps(lead) + width, 1)
    return HoldRule(
        lead=steps(lead),
        hold=hold,
        replica_throughput=min(p.throughput_per_replica for p in spec.gpu_profiles),
        utilization=spec.demand.target_utilization,
        min_replicas=spec.replicas.min,
        max_replicas=spec.replicas.max,
    )


Option = Literal["forecast", "reactive", "reactive-spread"]
"""The forecast; the demand just observed plus a share of it (HPA-like); the demand just
observed plus a multiple of how much it has been moving (volatility-scaled headroom)."""


@dataclass(frozen=True)
class Margin:
    """An option's margin, calibrated (or set) on the calibration span."""

    option: Option
    knob: float
    """The forecast's quantile, or a reactive rule's headroom (a share of demand, or of how
    much it has been moving)."""
    replayed_shortfall: float | None
    """Share of the span's measured minutes short at this margin; None if none measured."""
    replayed_capacity: float | None
    """Mean ready capacity (units/s) the planner would have held at this margin."""
    reached: bool
    """Whether the replayed shortfall is within the target."""
    by_hour: tuple[float, ...] = ()
    """The forecast's quantile per time-of-day bucket (equal spans of the UTC day, by the
    hour the forecast window starts), when calibrated per bucket; empty: ``knob`` throughout."""

    def describe(self) -> str:
        if self.option == "forecast":
            if self.by_hour:
                low, high = (_quantile_label(q) for q in (min(self.by_hour), max(self.by_hour)))
                return f"{low}–{high} by time of day"
            return _quantile_label(self.knob)
        if self.option == "reactive-spread":
            return f"reactive headroom {self.knob:.2f} × recent range"
        return f"reactive headroom {self.knob:.0%}"


def _quantile_label(q: float) -> str:
    return f"q{q:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class AchievedRecord:
    """Out of sample: how the forecasts one fit served did until the next fit."""

    start: datetime
    end: datetime
    short: int
    measured: int

    def since(self, horizon: datetime) -> AchievedRecord | None:
        """The part of the record after `horizon` (its counts in proportion), if any."""
        if self.end <= horizon:
            return None
        if self.start >= horizon:
            return self
        share = (self.end - horizon) / (self.end - self.start)
        return AchievedRecord(
            horizon, self.end, round(self.short * share), round(self.measured * share)
        )


def _span_capacity_and_misses(
    demand: FloatArray,
    forecasts: FloatArray,
    rule: HoldRule,
    censored: BoolArray,
    skip: int,
    capacity: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray, int]:
    """Per margin column: replayed shortfall and mean capacity over the measured steps
    (`capacity`: the forecasts' held capacity, if already replayed)."""
    if capacity is None:
        capacity = held_capacity(forecasts, rule)
    measured = ~np.isnan(demand)
    measured[:skip] = False
    count = int(measured.sum())
    if count == 0:
        nothing = np.full(forecasts.shape[1], np.nan)
        return nothing, nothing, 0
    short = (demand[measured, None] > capacity[measured] + 1e-9) | censored[measured, None]
    shortfall: FloatArray = short.mean(axis=0)
    mean_capacity: FloatArray = capacity[measured].mean(axis=0)
    return shortfall, mean_capacity, count


def _rising_by_column(forecasts: FloatArray) -> bool:
    """Whether every row's forecasts rise (or stay) from one margin column to the next, with
    NaN in whole rows only: then so does the capacity held, and the replayed shortfall only
    falls from column to column."""
    missing = np.isnan(forecasts)
    if not (missing == missing[:, :1]).all():
        return False
    known = forecasts[~missing[:, 0]]
    return bool((known[:, 1:] >= known[:, :-1]).all())


def _first_within(
    demand: FloatArray,
    forecasts: FloatArray,
    rule: HoldRule,
    censored: BoolArray,
    skip: int,
    target: float,
) -> tuple[int, float, float, int]:
    """For margin columns that rise (`_rising_by_column`): the first column whose replayed
    shortfall is within `target` (else the last), its shortfall, mean capacity and the
    measured steps. A bisection replays a few columns instead of all of them; each is the
    same as in the replay of all (the mean summed in the order that one sums)."""
    measured = ~np.isnan(demand)
    measured[:skip] = False
    count = int(measured.sum())
    if count == 0:
        return forecasts.shape[1] - 1, math.nan, math.nan, 0
    seen: dict[int, tuple[float, float]] = {}

    def replay(k: int) -> tuple[float, float]:
        if k not in seen:
            capacity = held_capacity(forecasts[:, k], rule)[measured]
            short = (demand[measured] > capacity + 1e-9) | censored[measured]
            seen[k] = (float(short.mean()), float(np.cumsum(capacity)[-1] / count))
        return seen[k]

    last = forecasts.shape[1] - 1
    if replay(last)[0] > target + 1e-12:
        return last, *replay(last), count
    lo, hi = 0, last  # the first within is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if replay(mid)[0] <= target + 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return lo, *replay(lo), count


class ShortfallForecaster(Estimator):
    """The demand to plan for, per origin, with the margin calibrated to a shortfall target.

    ``forecaster``: an unfitted ``PeakForecaster`` (default ``default_forecaster`` at
    ``selection_quantile``, which defaults to ``1 - 2 × shortfall``: the quantile its model
    selection scores at). ``rule``: how the planner holds capacity (``hold_rule``).
    ``quantile``: the expert override (see the module docstring).
    """

    def __init__(
        self,
        rule: HoldRule,
        shortfall: float = DEFAULT_SHORTFALL,
        *,
        forecaster: PeakForecaster | None = None,
        quantile: float | None = None,
        selection_quantile: float | None = None,
        lead: int | None = None,
        width: int = 1,
        calibration_seconds: int = 7 * DAY_SECONDS,
        handover_seconds: int = DAY_SECONDS,
        achieved_seconds: int = 7 * DAY_SECONDS,
        time_of_day_buckets: int = 4,
    ) -> None:
        self.rule = rule
        self.shortfall = shortfall
        self.forecaster = forecaster
        self.quantile = quantile
        self.selection_quantile = selection_quantile
        self.lead = lead
        self.width = width
        self.calibration_seconds = calibration_seconds
        self.handover_seconds = handover_seconds
        self.achieved_seconds = achieved_seconds
        self.time_of_day_buckets = time_of_day_buckets

    # --- fitting ---------------------------------------------------------------------------
    def _lead(self) -> int:
        return self.rule.lead if self.lead is None else self.lead

    def _check_params(self) -> None:
        if not 0.0 < self.shortfall < 0.5:
            raise ValueError(f"shortfall must be in (0, 0.5), got {self.shortfall}")
        if self.quantile is not None and not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.width < 1:
            raise ValueError(f"need width ≥ 1, got {self.width}")
        buckets = self.time_of_day_buckets
        if buckets < 0 or (buckets and (24 * 60) % buckets):
            raise ValueError(f"time_of_day_buckets must divide a day's minutes, got {buckets}")

    def _new_forecaster(self) -> PeakForecaster:
        if self.forecaster is not None:
            # scikit-learn's clone for estimators; anything else that forecasts is used as is.
            if hasattr(self.forecaster, "get_params"):
                model: PeakForecaster = clone(self.forecaster)
                return model
            return self.forecaster
        selection = self.selection_quantile or selection_quantile(self.shortfall, self.quantile)
        return default_forecaster(self._lead(), self.width, selection)

    def fit(self, series: Series, capacity: Series | None = None) -> Self:
        """Fit the forecaster, calibrate the margin and measure what the last fit achieved.

        ``capacity``: the ready capacity that served the history (same grid), if known; it
        marks censored minutes precisely (else they are inferred from flat tops).
        """
        self._check_params()
        if len(series) == 0:
            raise ValueError("need at least one step of history")
        until = series.time_at(len(series))
        previous = getattr(self, "achieved_", ())
        if hasattr(self, "margin_"):
            previous = self._record(series, until, previous)
        if not hasattr(self, "forecaster_") or not hasattr(self, "margin_"):
            self.forecaster_ = self._new_forecaster()
        self.forecaster_.fit(series)
        self.step_seconds_ = series.step_seconds
        self.until_ = until
        self.history_seconds_ = float(len(series) * series.step_seconds)
        ranges = recent_range(series.values, VOLATILITY_STEPS)[~np.isnan(series.values)]
        self.typical_range_ = float(np.median(ranges)) if ranges.size else 0.0
        capacity_values = None if capacity is None else capacity.values
        censored = censored_steps(series.values, capacity_values)
        self.censored_minutes_ = int(censored.sum())
        self.margin_, self.replayed_, self.note_ = self._calibrate(series, censored)
        horizon = until - timedelta(seconds=self.achieved_seconds)
        self.achieved_ = tuple(kept for r in previous if (kept := r.since(horizon)) is not None)
        return self

    def carry_achieved(
        self, shortfall: float, seconds: float, until: datetime, step_seconds: int = 60
    ) -> Self:
        """Start the record of what was achieved from what an earlier model of this service
        reported: ``shortfall`` of the minutes over the ``seconds`` up to ``until``.

        A restarted operator makes every model anew, and a new model measures what it
        achieved only from its second fit, a day later for an established service; the
        service's status kept the figure, so status and metrics go on showing it instead.
        The carried record ages out like any other, minute by minute. Only for a model not
        fitted yet.
        """
        if hasattr(self, "margin_"):
            raise ValueError("carry_achieved is for a model that is not fitted yet")
        if not 0.0 <= shortfall <= 1.0 or seconds < step_seconds:
            raise ValueError(
                f"need a shortfall in [0, 1] over at least one step, got {shortfall} over "
                f"{seconds} s"
            )
        measured = round(seconds / step_seconds)
        start = until - timedelta(seconds=seconds)
        self.achieved_ = (AchievedRecord(start, until, round(shortfall * measured), measured),)
        return self

    def _span(self, series: Series) -> int:
        """First origin of the calibration span."""
        steps = round(self.calibration_seconds / series.step_seconds)
        return max(0, len(series) - steps)

    def _forecasts(
        self, option: str, series: Series, origins: IntArray, knobs: Sequence[float] | FloatArray
    ) -> FloatArray:
        """Each knob's forecasts, shape ``(len(origins), len(knobs))``; causal per origin."""
        if option != "forecast":
            values = series.values[: int(origins.max()) + 1]
            latest = last_known(values)[origins][:, None]
            if option == "reactive":
                return latest * (1.0 + np.asarray(knobs)[None, :])
            spread = recent_range(values, VOLATILITY_STEPS)[origins] + 2.0 * self.typical_range_
            out: FloatArray = latest + spread[:, None] * np.asarray(knobs)[None, :]
            return out
        predicted: FloatArray = self.forecaster_.predict_peak(
            series, origins, lead=self._lead(), width=self.width, quantiles=list(knobs)
        )
        return predicted

    def _bucket(self, series: Series, steps: IntArray, buckets: int) -> IntArray:
        """Time-of-day bucket (UTC) of the window the target made at each origin is for."""
        start = series.start
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
        offset = (start - midnight).total_seconds()
        seconds = offset + (steps + 1 + self._lead()) * series.step_seconds
        out: IntArray = ((seconds % DAY_SECONDS) // (DAY_SECONDS // buckets)).astype(np.int64)
        return out

    def _by_hour(
        self,
        series: Series,
        origins: IntArray,
        forecasts: FloatArray,
        capacity: FloatArray,
        demand: FloatArray,
        censored: BoolArray,
        skip: int,
        plain: Margin,
    ) -> Margin | None:
        """One quantile per time-of-day bucket, if that meets the target for less capacity
        (`capacity`: the held capacity of `forecasts`, every column).

        Each bucket's quantile is the one that minimises its capacity plus a price per
        short minute, with its short minutes shrunk toward the whole day's (``SHRINK_DAYS``);
        the price is the least at which the shrunk misses of all buckets, and the replay of
        the mixed forecasts through the hold rule, are within the target.
        """
        buckets = self.time_of_day_buckets
        measured = ~np.isnan(demand)
        measured[:skip] = False
        total = int(measured.sum())
        if total == 0:
            return None
        # A minute's capacity follows the targets made lead + 1 steps before it, for it.
        bucket = self._bucket(series, origins - 1 - self._lead(), buckets)
        short = (demand[:, None] > capacity + 1e-9) | censored[:, None]
        one_hot = (bucket[measured, None] == np.arange(buckets)[None, :]).astype(np.float64)
        counts = one_hot.sum(axis=0)  # measured minutes per bucket
        misses = one_hot.T @ short[measured].astype(np.float64)  # (buckets, quantiles)
        held = one_hot.T @ capacity[measured]
        day_share = misses.sum(axis=0) / total
        weight = counts / (counts + SHRINK_DAYS * DAY_SECONDS / buckets / series.step_seconds)
        shrunk = weight[:, None] * misses + (1.0 - weight[:, None]) * counts[:, None] * day_share
        unit = float(held.sum()) / max(total, 1)
        budget = self.shortfall * total + 1e-9
        chosen: list[IntArray] = []
        for price in PRICES * unit:
            pick = np.argmin(held + price * shrunk, axis=1)
            if shrunk[np.arange(buckets), pick].sum() <= budget:
                chosen.append(pick)
        if not chosen:
            return None
        picks = np.array(chosen)  # (candidates, buckets)
        per_origin = picks[:, self._bucket(series, origins, buckets)].T  # (origins, candidates)
        mixed = np.take_along_axis(forecasts, per_origin, axis=1)
        shortfall, mean_capacity, _ = _span_capacity_and_misses(
            demand, mixed, self.rule, censored, skip
        )
        ok = np.flatnonzero(shortfall <= self.shortfall + 1e-12)
        if ok.size == 0:
            return None
        best = int(ok[np.argmin(mean_capacity[ok])])
        if plain.replayed_capacity is not None and mean_capacity[best] >= plain.replayed_capacity:
            return None
        by_hour = tuple(float(QUANTILES[k]) for k in picks[best])
        return Margin(
            "forecast",
            max(by_hour),
            float(shortfall[best]),
            float(mean_capacity[best]),
            True,
            by_hour,
        )

    def _calibrate(self, series: Series, censored: BoolArray) -> tuple[Margin, Margin | None, str]:
        """The margin in use, the other option's calibrated margin, and a note."""
        first = self._span(series)
        # A young service's new level (a launch): what came before says little about the
        # margin it needs now, and misses there are sunk. (Established services have
        # level-following forecasts and a week to calibrate on; a cut there costs more.)
        shift = (
            last_level_shift(series.values)
            if self.history_seconds_ < self.handover_seconds
            else None
        )
        since = ""
        if shift is not None and shift > first:
            first = shift
            stamp = series.time_at(shift).strftime("%Y-%m-%d %H:%M")
            since = f"level shift at {stamp}: calibrated on the {len(series) - shift} steps since"
        origins = np.arange(first, len(series), dtype=np.int64)
        demand = series.values[first:]
        span_censored = censored[first:]
        # Minutes above what replicas.max replicas serve are short at any margin: counted,
        # they would push it to its limit for nothing (the achieved shortfall still has them).
        most = self.rule.most_capacity
        unservable = demand > most + 1e-9 if most is not None else np.zeros(0, dtype=bool)
        left_out = ""
        if unservable.any():
            demand = np.where(unservable, np.nan, demand)
            span_censored = span_censored & ~unservable
            left_out = (
                f"{int(unservable.sum())} step(s) above what replicas.max serves left out of "
                "the calibration"
            )

        def told(note: str) -> str:
            return "; ".join(n for n in (note, left_out) if n)

        # A span inside the history: its first lead + hold steps were served by targets made
        # before it, which are not replayed. A span from the history's start: nothing came
        # before, so every step from the first planned from two minutes of demand is what the
        # planner would have had (the first minute alone is usually partial: the service, or
        # the scrape, started within it).
        skip = self.rule.lead + self.rule.hold
        if first == 0:
            skip = min(skip, self.rule.lead + FIRST_PLANNED_STEPS)

        made: dict[Option, FloatArray] = {}
        held: dict[Option, FloatArray] = {}

        def calibrated(option: Option, knobs: Sequence[float] | FloatArray) -> Margin:
            forecasts = made[option] = self._forecasts(option, series, origins, knobs)
            # The reactive rules' margins rise column by column (checked): a bisection finds
            # the first within the target. The forecast's are all replayed, as the
            # time-of-day split reads every column.
            if option != "forecast" and _rising_by_column(forecasts):
                k, short, mean, measured = _first_within(
                    demand, forecasts, self.rule, span_censored, skip, self.shortfall
                )
            else:
                capacity = held[option] = held_capacity(forecasts, self.rule)
                shortfall, capacities, measured = _span_capacity_and_misses(
                    demand, forecasts, self.rule, span_censored, skip, capacity
                )
                within = np.flatnonzero(shortfall <= self.shortfall + 1e-12)
                k = int(within[0]) if within.size else len(knobs) - 1
                short, mean = float(shortfall[k]), float(capacities[k])
            if measured == 0:
                default = DEFAULT_HEADROOM if option == "reactive" else knobs[-1]
                return Margin(option, float(default), None, None, False)
            return Margin(option, float(knobs[k]), short, mean, short <= self.shortfall + 1e-12)

        if self.quantile is not None:
            fixed = calibrated("forecast", [self.quantile])
            reached = replace(fixed, reached=bool(fixed.reached))
            return reached, None, told("forecast.quantile is set")
        reactive = calibrated("reactive", HEADROOMS)
        spread = calibrated("reactive-spread", SPREADS)
        if spread.reached and (
            not reactive.reached
            or (spread.replayed_capacity or 0.0) < (reactive.replayed_capacity or 0.0)
        ):
            reactive = spread
        note = ""
        if reactive.replayed_shortfall is None:
            note = (
                f"too little history to calibrate (a replay needs more than {skip} steps): "
                "the default headroom, a 70% utilisation target"
            )
        young = (len(series) - first) * series.step_seconds < self.handover_seconds
        if young and since:
            return reactive, None, told(note or since)
        if self.history_seconds_ < self.handover_seconds or _short(self.forecaster_.info_):
            return reactive, None, told(note or "history shorter than the handover span")
        forecast = calibrated("forecast", QUANTILES)
        if self.time_of_day_buckets and forecast.reached:
            split = self._by_hour(
                series,
                origins,
                made["forecast"],
                held["forecast"],
                demand,
                span_censored,
                skip,
                forecast,
            )
            forecast = split or forecast
        if forecast.reached and (
            not reactive.reached
            or (forecast.replayed_capacity or 0.0) <= (reactive.replayed_capacity or 0.0)
        ):
            return forecast, reactive, told(since)
        if not forecast.reached and not reactive.reached:
            best = min((forecast, reactive), key=lambda m: m.replayed_shortfall or math.inf)
            other = reactive if best is forecast else forecast
            return best, other, told("target not reached by any margin on the calibration span")
        return reactive, forecast, told("forecasts need more capacity than the reactive rule")

    def _record(
        self, series: Series, until: datetime, previous: tuple[AchievedRecord, ...]
    ) -> tuple[AchievedRecord, ...]:
        """Replay the targets the previous fit served over the history after it."""
        step = series.step_seconds
        start = round((self.until_ - series.start).total_seconds() / step)
        warm = self.rule.lead + self.rule.hold + 1
        if until <= self.until_ or start - warm < 0 or start >= len(series):
            return previous
        origins = np.arange(start - warm, len(series), dtype=np.int64)
        targets = self._targets(series, origins)
        capacity = held_capacity(targets, self.rule)[warm:]
        demand = series.values[start:]
        known = ~np.isnan(demand)
        short = int((demand[known] > capacity[known] + 1e-9).sum())
        record = AchievedRecord(self.until_, until, short, int(known.sum()))
        return (*previous, record)

    # --- predicting --------------------------------------------------------------------------
    def _targets(self, series: Series, origins: IntArray) -> FloatArray:
        margin = self.margin_
        if margin.by_hour:
            levels = sorted(set(margin.by_hour))
            column = np.searchsorted(levels, np.asarray(margin.by_hour))
            bucket = self._bucket(series, origins, len(margin.by_hour))
            every = self._forecasts("forecast", series, origins, levels)
            out = every[np.arange(origins.shape[0]), column[bucket]]
        else:
            out = self._forecasts(margin.option, series, origins, [margin.knob])[:, 0]
        result: FloatArray = np.maximum(out, 0.0)
        return result

    def predict_target(self, series: Series, origins: IntArray) -> FloatArray:
        """The demand (units/s) to plan for at each origin: the forecast window peak at the
        calibrated margin, or the reactive rule's. NaN where nothing is known yet."""
        check_is_fitted(self, "margin_")
        origins = np.asarray(origins, dtype=np.int64)
        valid_origins(origins, len(series))
        if origins.size == 0:
            return np.empty(0)
        return self._targets(series, origins)

    def predict_peak(
        self,
        series: Series,
        origins: IntArray,
        *,
        lead: int,
        width: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        """The forecaster's own quantiles (for other uses than planning; see
        ``predict_target`` for what the calibrated plan asks for)."""
        check_is_fitted(self, "margin_")
        predicted: FloatArray = self.forecaster_.predict_peak(
            series, origins, lead=lead, width=width, quantiles=quantiles
        )
        return predicted

    def predict_steps(
        self, series: Series, origins: IntArray, *, horizon: int, quantiles: Sequence[float]
    ) -> FloatArray:
        check_is_fitted(self, "margin_")
        predicted: FloatArray = self.forecaster_.predict_steps(
            series, origins, horizon=horizon, quantiles=quantiles
        )
        return predicted

    @property
    def calibration_(self) -> CalibrationInfo:
        check_is_fitted(self, "margin_")
        margin = self.margin_
        mode: Mode = "override" if self.quantile is not None else "forecast"
        if self.quantile is None and margin.option != "forecast":
            mode = "reactive"
        short = sum(r.short for r in self.achieved_)
        measured = sum(r.measured for r in self.achieved_)
        span = (self.until_ - self.achieved_[0].start).total_seconds() if self.achieved_ else 0.0
        calibrated = min(self.calibration_seconds, self.history_seconds_)
        return CalibrationInfo(
            target=self.shortfall,
            mode=mode,
            margin=margin.describe(),
            quantile=margin.knob if margin.option == "forecast" else None,
            headroom=margin.knob if margin.option != "forecast" else None,
            replayed_shortfall=margin.replayed_shortfall,
            calibration_seconds=float(calibrated),
            achieved_shortfall=short / measured if measured else None,
            achieved_seconds=float(span),
            censored_minutes=self.censored_minutes_,
            note=self.note_,
            quantiles_by_time_of_day=margin.by_hour,
        )

    @property
    def info_(self) -> ForecastInfo:
        check_is_fitted(self, "margin_")
        inner = self.forecaster_.info_
        calibration = self.calibration_
        if calibration.mode == "reactive":
            model = f"{calibration.margin} (until forecasts prove cheaper)"
        else:
            model = f"{inner.model} at {calibration.margin}"
        return replace(inner, model=model, calibration=calibration)

    def discard_history(self) -> Self:
        self.forecaster_.discard_history()
        return self


def _short(info: ForecastInfo) -> bool:
    return info.short_history


def service_forecaster(
    spec: InferenceDeploymentSpec,
    rule: HoldRule,
    width: int = 1,
    forecaster: PeakForecaster | None = None,
) -> ShortfallForecaster:
    """The forecaster Peakwise runs for a service, in the operator and ``peakwise backtest``
    alike: calibrated to ``spec.slo.shortfallMinutes``, or at ``spec.forecast.quantile``
    when that expert override is set."""
    return ShortfallForecaster(
        rule,
        spec.slo.shortfall_minutes,
        forecaster=forecaster,
        quantile=spec.forecast.quantile,
        width=width,
    )

"""What capacity a forecast would have given: a vectorised replay of the planner's hold rule.

The planner turns a forecast made at origin ``o`` into a target at step ``o + 1``; capacity
asked for then is ready ``lead`` steps later, every target stands for ``hold`` steps (the
larger of the stabilisation window and lead + window), replicas come in whole units of
``replica_throughput × utilization`` of planned demand, and capacity given back is gone at
once. So, for a forecast series ``f``:

* the target at step ``t`` is ``max(f[t - hold : t])`` (the last ``hold`` forecasts);
* the replicas wanted are that target over ``replica_throughput × utilization``, rounded up
  and kept within the replica bounds;
* the replicas ready at ``t`` are the fewest wanted over ``[t - lead, t]`` (a replica asked
  for at ``s`` serves from ``s + lead`` if it is still wanted; removals are immediate);
* ready capacity is those replicas × ``replica_throughput`` (a replica serves its full
  throughput; utilisation is the planning headroom).

A step is *short* when demand exceeds ready capacity; the *shortfall* is the share of known
steps that are short. This is what ``peakwise backtest`` measures with its simulator, for a
service whose replicas each need a new node; where replicas fit on nodes already running they
arrive sooner, so the replay errs on the side of shortfall.

Everything here is pure numpy and vectorised over several forecast series at once (one per
candidate margin), which is what lets a refit calibrate its margin in milliseconds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from peakwise.forecasting.series import FloatArray
from peakwise.forecasting.windows import recent_range, trailing_max, trailing_mean

BoolArray = NDArray[np.bool_]

CENSORED_STEPS = 30
"""Demand must sit at the capacity that served it this many steps in a row to count as
censored (twice as many for a flat top found without a capacity series)."""
CENSORED_TOLERANCE = 0.01
"""... within this share of it."""
FLAT_TOP_WINDOW = 1440
"""Without a capacity series, a flat top is judged against the highest demand of this many
steps before it (a day of minutes)."""


@dataclass(frozen=True)
class HoldRule:
    """How the planner turns forecasts into ready capacity, in steps and demand units."""

    lead: int
    """Steps from asking for capacity to its serving (node provisioning plus model load)."""
    hold: int
    """Steps a target stands: the larger of the stabilisation window and lead + window."""
    replica_throughput: float = 0.0
    """Demand units/s one ready replica serves; 0 treats capacity as continuous."""
    utilization: float = 1.0
    """Share of a replica's throughput the planner plans for."""
    min_replicas: int = 0
    max_replicas: int | None = None

    @property
    def most_capacity(self) -> float | None:
        """The most capacity the replica bounds allow (None: unbounded, or continuous)."""
        if self.replica_throughput <= 0 or self.max_replicas is None:
            return None
        return self.max_replicas * self.replica_throughput

    def __post_init__(self) -> None:
        if self.lead < 0 or self.hold < 1:
            raise ValueError(f"need lead ≥ 0 and hold ≥ 1, got lead={self.lead}, hold={self.hold}")
        if self.replica_throughput < 0 or not 0 < self.utilization <= 1:
            raise ValueError("need replica_throughput ≥ 0 and 0 < utilization ≤ 1")


def _fill_forward(values: FloatArray) -> FloatArray:
    """Each column's last known value (NaN before the first): a missing forecast holds."""
    known = ~np.isnan(values)
    if known.all():  # the usual case, and a third of a calibration's replay otherwise
        return values
    index = np.where(known, np.arange(values.shape[0])[:, None], -1)
    np.maximum.accumulate(index, axis=0, out=index)
    filled: FloatArray = np.where(
        index >= 0, np.take_along_axis(values, np.maximum(index, 0), axis=0), np.nan
    )
    return filled


def held_capacity(forecasts: FloatArray, rule: HoldRule) -> FloatArray:
    """Ready capacity at every step when the planner follows ``forecasts``.

    ``forecasts`` has one row per origin (the forecast made with the values up to that step
    known) and optionally one column per candidate margin; the result has the same shape.
    Step 0 has nothing ready (no forecast was made before it).
    """
    f = forecasts.reshape(forecasts.shape[0], -1)
    n = f.shape[0]
    if n == 0:
        return np.empty(forecasts.shape)
    acted = np.full(f.shape, np.nan)
    acted[1:] = _fill_forward(np.maximum(f[:-1], 0.0))  # the target at t uses the forecast at t-1
    filled = np.where(np.isnan(acted), 0.0, acted)
    # The last `hold` targets, the current one included (the window ends at t).
    target = maximum_filter1d(
        filled, size=rule.hold, axis=0, mode="nearest", origin=(rule.hold - 1) // 2
    )
    if rule.replica_throughput > 0:
        per_replica = rule.replica_throughput * rule.utilization
        replicas = np.ceil(target / per_replica - 1e-9)
        replicas = np.maximum(replicas, rule.min_replicas)
        if rule.max_replicas is not None:
            replicas = np.minimum(replicas, rule.max_replicas)
        wanted = replicas * rule.replica_throughput
    else:
        wanted = target
    # Ready at t: the fewest wanted over [t - lead, t]; nothing was wanted before step 0.
    size = rule.lead + 1
    padded = np.concatenate([np.zeros((rule.lead, f.shape[1])), wanted], axis=0)
    ready = minimum_filter1d(padded, size=size, axis=0, mode="nearest", origin=(size - 1) // 2)
    out: FloatArray = ready[rule.lead :].reshape(forecasts.shape)
    return out


def shortfall_share(demand: FloatArray, capacity: FloatArray) -> FloatArray | float:
    """Share of steps with known demand where demand exceeds capacity (per column if 2-D)."""
    known = ~np.isnan(demand)
    if not known.any():
        return math.nan
    short = (demand[known, None] if capacity.ndim == 2 else demand[known]) > (
        capacity[known] + 1e-9
    )
    if capacity.ndim == 2:
        share: FloatArray = short.mean(axis=0)
        return share
    return float(short.mean())


def _runs_at_least(flags: BoolArray, length: int) -> BoolArray:
    """The steps of runs of ``True`` at least ``length`` long."""
    out = np.zeros(flags.shape[0], dtype=np.bool_)
    padded = np.concatenate([[False], flags, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    for begin, end in zip(edges[::2], edges[1::2], strict=True):
        if end - begin >= length:
            out[begin:end] = True
    return out


def censored_steps(
    demand: FloatArray,
    capacity: FloatArray | None = None,
    *,
    min_steps: int = CENSORED_STEPS,
    tolerance: float = CENSORED_TOLERANCE,
) -> BoolArray:
    """Steps where demand sat at the capacity that served it for ``min_steps`` in a row.

    A metric of *served* requests cannot exceed what the replicas served, so when capacity
    fell short it flattens at capacity and under-states demand. With ``capacity`` (the ready
    capacity, same grid) that is demand within ``tolerance`` of it. Without, a flat top: demand
    within ``tolerance`` of the highest of the last day, and flat (its range over the last
    ``2 × min_steps`` within twice the tolerance), after a day of history, on a series that
    otherwise moves (a flat service cannot be told from a censored one, so nothing is flagged
    there).
    """
    n = demand.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.bool_)
    known = ~np.isnan(demand)
    if capacity is not None:
        with np.errstate(invalid="ignore"):
            at = known & (capacity > 0) & (demand >= (1.0 - tolerance) * capacity)
        return _runs_at_least(at, min_steps)
    min_steps *= 2  # a guess from the demand alone: ask for more evidence
    level = np.where(known, demand, 0.0)
    ceiling = trailing_max(demand, FLAT_TOP_WINDOW)
    spread = recent_range(demand, min_steps)
    hourly = recent_range(demand, 60)[known]
    typical = float(np.median(hourly / np.maximum(level[known], 1e-12))) if hourly.size else 0.0
    if typical < 4.0 * tolerance:
        return np.zeros(n, dtype=np.bool_)
    # Judged only on a full window of known demand, after as much history again.
    seen = np.convolve(known.astype(np.int64), np.ones(min_steps, dtype=np.int64))[:n]
    full = (seen == min_steps) & (np.arange(n) >= FLAT_TOP_WINDOW)
    with np.errstate(invalid="ignore"):
        at = (
            full
            & (level > 0)
            & (level >= (1.0 - tolerance) * ceiling)
            & (spread <= 2.0 * tolerance * level)
        )
    # A flagged step's flat stretch is the ``min_steps`` that end at it: flag them all.
    counts = np.concatenate([[0], np.cumsum(at)])
    ahead = np.minimum(np.arange(n) + min_steps, n)
    stretch: BoolArray = (counts[ahead] - counts[np.arange(n)]) > 0
    return stretch


SHIFT_STEPS = 60
"""A level is the mean demand of this many steps (an hour of minutes)."""
SHIFT_RATIO = 3.0
"""A level that moved this many times more (or less) than it usually does at this time of
day, within an hour, is a level shift."""
SHIFT_FLOOR = 0.2
"""Levels below this share of the history's median level are too quiet to judge."""


def last_level_shift(values: FloatArray, season: int = 1440, seasons: int = 7) -> int | None:
    """The last step at which demand's level shifted, or None.

    The level is the mean of the last hour; it *shifted* at step ``t`` when it changed over
    the hour before ``t`` by ``SHIFT_RATIO`` times more (or less) than the same hour usually
    changed on the last ``seasons`` days (the median of their changes; no change expected
    before there is a day of history). So a service's daily ramp is not a shift once it has
    been seen, while a launch, a customer moving in or out, or an outage of another system
    is. Only two whole hours of known demand are judged (demand coming back after a gap is
    not a new level). Causal: the answer for ``values[: t + 1]`` never depends on later
    values.
    """
    n = values.shape[0]
    if n <= SHIFT_STEPS:
        return None
    level = trailing_mean(values, SHIFT_STEPS)
    known = level[~np.isnan(level)]
    if known.size == 0:
        return None
    floor = SHIFT_FLOOR * float(np.median(known))
    before = np.full(n, np.nan)
    before[SHIFT_STEPS:] = level[:-SHIFT_STEPS]
    # Judged on two full hours of known demand: a recovery from a gap is not a new level.
    gaps = np.concatenate([[0], np.cumsum(np.isnan(values))])
    index = np.arange(n)
    whole = (index >= 2 * SHIFT_STEPS - 1) & (
        gaps[index + 1] - gaps[np.maximum(index + 1 - 2 * SHIFT_STEPS, 0)] == 0
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(whole & (level > floor) & (before > floor), level / before, np.nan)
    past = np.full((n, seasons), np.nan)
    for k in range(1, seasons + 1):
        if k * season < n:
            past[k * season :, k - 1] = ratio[: n - k * season]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no earlier day known: expect none
        usual = np.nanmedian(past, axis=1)
    usual = np.where(np.isnan(usual), 1.0, usual)
    with np.errstate(invalid="ignore"):
        moved = ratio / usual
        shifted = np.flatnonzero((moved >= SHIFT_RATIO) | (moved <= 1.0 / SHIFT_RATIO))
    return int(shifted[-1]) if shifted.size else None

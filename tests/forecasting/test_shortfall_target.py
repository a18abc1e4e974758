"""The shortfall target: the replay of the hold rule, censored minutes, and ShortfallForecaster
(calibration, override, handover, the achieved record, no lookahead, estimator conventions)."""

from __future__ import annotations

import pickle
from datetime import timedelta

import numpy as np
import pytest
from forecast_data import START, daily_demand
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from peakwise.api.gpunodepool import GPUNodePoolSpec
from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.series import Series
from peakwise.forecasting.shortfall import (
    HoldRule,
    censored_steps,
    held_capacity,
    last_level_shift,
    shortfall_share,
)
from peakwise.forecasting.target import (
    DEFAULT_HEADROOM,
    HEADROOMS,
    QUANTILES,
    ShortfallForecaster,
    _first_within,
    _rising_by_column,
    _span_capacity_and_misses,
    hold_rule,
    refit_interval,
)
from peakwise.planner import DemandForecast, PoolState
from peakwise.planner.capacity import lead_time
from peakwise.planner.plan import hold_window

RULE = HoldRule(lead=10, hold=15, replica_throughput=20.0, utilization=1.0, min_replicas=1)


def _replayed(model: ShortfallForecaster, series: Series, first: int) -> float:
    """The shortfall of the targets the model serves, replayed from ``first`` on."""
    origins = np.arange(first, len(series), dtype=np.int64)
    capacity = held_capacity(model.predict_target(series, origins), model.rule)
    skip = model.rule.lead + model.rule.hold
    share = shortfall_share(series.values[first + skip :], capacity[skip:])
    assert isinstance(share, float)
    return share


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.0, 0.005, 0.05, 0.3])
def test_bisection_over_rising_margins_picks_what_replaying_every_margin_picks(
    seed: int, target: float
) -> None:
    rng = np.random.default_rng(seed)
    demand = 40.0 + 30.0 * np.sin(np.arange(3000) / 200.0) + rng.gamma(2.0, 4.0, 3000)
    demand[rng.random(3000) < 0.02] = np.nan
    latest = np.concatenate([[np.nan], demand[:-1]])
    forecasts = latest[:, None] * (1.0 + HEADROOMS[None, :])  # the reactive rule's margins
    censored = rng.random(3000) < 0.001
    assert _rising_by_column(forecasts)
    shortfall, capacity, measured = _span_capacity_and_misses(demand, forecasts, RULE, censored, 25)
    within = np.flatnonzero(shortfall <= target + 1e-12)
    k = int(within[0]) if within.size else len(HEADROOMS) - 1
    # The same margin, and the same figures bit for bit.
    assert _first_within(demand, forecasts, RULE, censored, 25, target) == (
        k,
        shortfall[k],
        capacity[k],
        measured,
    )
    # A margin column below the one before it: not bisected.
    assert not _rising_by_column(forecasts[:, ::-1])


def test_ready_capacity_follows_the_hold_rule_step_by_step() -> None:
    rule = HoldRule(lead=2, hold=3, replica_throughput=10.0)
    forecasts = np.array([5.0, 5.0, 25.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    # The target at t is the highest forecast of t - 3 ... t - 1: 0, 1, 1, 3, 3, 3, 1, 1
    # replicas; a replica asked for at s serves from s + 2 if it is still wanted then.
    np.testing.assert_array_equal(held_capacity(forecasts, rule), [0, 0, 0, 10, 10, 30, 10, 10])
    # Several margins at once, one column each, the same as one at a time.
    both = held_capacity(np.stack([forecasts, 2 * forecasts], axis=1), rule)
    np.testing.assert_array_equal(both[:, 1], held_capacity(2 * forecasts, rule))
    assert shortfall_share(np.array([1.0, np.nan, 12.0]), np.array([5.0, 0.0, 10.0])) == 0.5


def test_the_hold_rule_of_a_spec_is_the_planners() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "template": {},
            "gpuProfiles": [{"gpuType": "g", "throughputPerReplica": 8}],
            "demand": {"query": "q", "targetUtilization": 0.8},
            "replicas": {"min": 2, "max": 30},
            "scaleDown": {"stabilizationWindow": "5m"},
        }
    )
    pool = GPUNodePoolSpec.model_validate(
        {
            "gpuType": "g",
            "gpusPerNode": 1,
            "capacityType": "onDemand",
            "pricePerNodeHour": 2,
            "maxNodes": 9,
            "provisioningTime": "6m",
            "provider": {"kwok": {}},
        }
    )
    pools = [PoolState("p", pool)]
    lead = lead_time(spec, pools)
    window = timedelta(minutes=1)
    rule = hold_rule(spec, lead, window)
    planner_hold = hold_window(spec, pools, DemandForecast(1.0, 0.5, window=window))
    assert rule.hold * 60 == planner_hold.total_seconds() == (6 + 2 + 1) * 60
    assert (rule.lead, rule.replica_throughput, rule.utilization) == (8, 8.0, 0.8)
    assert (rule.min_replicas, rule.max_replicas) == (2, 30)


def test_censored_stretches_are_found_with_and_without_capacity() -> None:
    series = daily_demand(3, seed=2)
    ceiling = float(np.percentile(series.values, 80))
    served = np.minimum(series.values, ceiling)
    capacity = np.full(len(series), ceiling)
    flagged = censored_steps(served, capacity)
    at = served >= 0.99 * ceiling
    assert flagged.any() and not (flagged & ~at).any()
    # Without the capacity, long flat tops at the day's ceiling are found from demand alone
    # (the first day is never judged: there is no ceiling to compare with).
    guessed = censored_steps(served)
    assert guessed[1440:].any() and not guessed[:1440].any() and not (guessed & ~at).any()
    # Demand that moves freely is never flagged, nor is a flat service.
    assert not censored_steps(series.values).any()
    assert not censored_steps(np.full(3 * 1440, 50.0)).any()


def test_the_margin_is_the_smallest_that_meets_the_target_on_the_history() -> None:
    series = daily_demand(9, seed=3)
    # One quantile for the whole day (the margin per time of day has its own test).
    model = ShortfallForecaster(RULE, 0.01, time_of_day_buckets=0).fit(series)
    info = model.calibration_
    assert info.mode == "forecast" and info.quantile is not None
    first = len(series) - 7 * 1440
    assert _replayed(model, series, first) <= 0.01
    assert info.replayed_shortfall == pytest.approx(_replayed(model, series, first))
    # One step down the grid would have been short too often.
    lower = float(QUANTILES[int(np.searchsorted(QUANTILES, info.quantile)) - 1])
    origins = np.arange(first, len(series), dtype=np.int64)
    looser = model.forecaster_.predict_peak(series, origins, lead=10, width=1, quantiles=[lower])
    capacity = held_capacity(looser[:, 0], RULE)
    skip = RULE.lead + RULE.hold
    assert shortfall_share(series.values[first + skip :], capacity[skip:]) > 0.01


def test_a_quantile_per_time_of_day_where_the_misses_are_costs_less_for_the_target() -> None:
    # Steady demand with 10-minute jumps, only between 12:00 and 18:00 UTC: one quantile for
    # the whole day spends the margin where it buys the least.
    minutes = np.arange(9 * 1440)
    rng = np.random.default_rng(12)
    demand = 100.0 * np.repeat(rng.lognormal(0.0, 0.05, minutes.shape[0] // 10), 10)
    afternoon = (minutes % 1440 >= 12 * 60) & (minutes % 1440 < 18 * 60)
    jumps = np.repeat(rng.random(minutes.shape[0] // 10) < 0.08, 10) & afternoon
    series = Series(START, 60, np.where(jumps, 2.0 * demand, demand))
    rule = HoldRule(lead=10, hold=15, replica_throughput=5.0, utilization=1.0, min_replicas=1)
    split = ShortfallForecaster(rule, 0.01).fit(series)
    whole = ShortfallForecaster(rule, 0.01, time_of_day_buckets=0).fit(series)
    info = split.calibration_
    by_hour = info.quantiles_by_time_of_day
    assert len(by_hour) == 4 and info.mode == "forecast"
    assert max(by_hour) > min(by_hour)
    assert info.margin.endswith("by time of day") and info.quantile == max(by_hour)
    first = len(series) - 7 * 1440
    assert info.replayed_shortfall == pytest.approx(_replayed(split, series, first))
    assert info.replayed_shortfall <= 0.01
    assert split.margin_.replayed_capacity is not None
    assert whole.margin_.replayed_capacity is not None
    assert split.margin_.replayed_capacity < whole.margin_.replayed_capacity
    # Each origin gets its window's bucket's quantile of the same forecaster.
    origins = np.arange(len(series) - 1440, len(series), dtype=np.int64)
    levels = sorted(set(by_hour))
    every = split.forecaster_.predict_peak(series, origins, lead=10, width=1, quantiles=levels)
    window_hour = ((origins + 11) % 1440) // 360
    column = np.searchsorted(levels, np.asarray(by_hour))[window_hour]
    expected = np.maximum(every[np.arange(origins.shape[0]), column], 0.0)
    np.testing.assert_array_equal(split.predict_target(series, origins), expected)
    with pytest.raises(ValueError, match="time_of_day_buckets"):
        ShortfallForecaster(rule, time_of_day_buckets=7).fit(series)


def test_a_short_history_leans_on_the_whole_days_misses() -> None:
    # With two days, a bucket's own misses weigh 2 / (2 + 14) of its margin's evidence: the
    # quantiles stay close to the one for the whole day.
    series = daily_demand(2.5, seed=13)
    split = ShortfallForecaster(RULE, 0.01).fit(series)
    whole = ShortfallForecaster(RULE, 0.01, time_of_day_buckets=0).fit(series)
    info, plain = split.calibration_, whole.calibration_
    if info.mode == "forecast" and plain.quantile is not None:
        spread = max(info.quantiles_by_time_of_day or (plain.quantile,)) - plain.quantile
        assert abs(spread) <= 0.05
    assert info.replayed_shortfall is not None and info.replayed_shortfall <= 0.01


def test_a_tighter_target_buys_a_wider_margin() -> None:
    series = daily_demand(9, seed=4)
    capacity = []
    for target in (0.05, 0.01, 0.002):
        model = ShortfallForecaster(RULE, target).fit(series)
        info = model.calibration_
        assert info.replayed_shortfall is not None and info.replayed_shortfall <= target
        origins = np.arange(len(series) - 1440, len(series), dtype=np.int64)
        capacity.append(float(held_capacity(model.predict_target(series, origins), RULE).mean()))
    assert capacity[0] < capacity[1] < capacity[2]


def test_the_quantile_override_wins_over_the_target() -> None:
    series = daily_demand(5, seed=5)
    model = ShortfallForecaster(RULE, 0.005, quantile=0.9).fit(series)
    info = model.calibration_
    assert (info.mode, info.quantile, info.margin) == ("override", 0.9, "q0.9")
    assert info.replayed_shortfall is not None  # still measured, for the status
    origins = np.arange(3 * 1440, 4 * 1440, dtype=np.int64)
    inner = model.forecaster_.predict_peak(series, origins, lead=10, width=1, quantiles=[0.9])
    np.testing.assert_array_equal(model.predict_target(series, origins), inner[:, 0])


def test_a_new_service_starts_reactive_and_hands_over_to_forecasts_that_pay() -> None:
    # A daily spike at 18:00 that the last value cannot see coming but a day-ago model can.
    minutes = np.arange(6 * 1440)
    base = 100.0 + np.random.default_rng(6).normal(0.0, 2.0, minutes.shape[0])
    spike = ((minutes % 1440) >= 18 * 60) & ((minutes % 1440) < 18 * 60 + 40)
    series = Series(START, 60, np.where(spike, 400.0, base))
    young = ShortfallForecaster(RULE).fit(series.head(600))
    assert young.calibration_.mode == "reactive" and young.calibration_.headroom is not None
    grown = ShortfallForecaster(RULE).fit(series)
    assert grown.calibration_.mode == "forecast"
    assert "until forecasts prove cheaper" in young.info_.model


def test_too_little_history_to_calibrate_gets_the_default_headroom_and_says_so() -> None:
    series = daily_demand(1, seed=7).head(12)
    model = ShortfallForecaster(RULE).fit(series)
    info = model.calibration_
    assert info.mode == "reactive" and info.headroom == pytest.approx(DEFAULT_HEADROOM)
    assert info.replayed_shortfall is None and "too little history" in info.note
    target = model.predict_target(series, np.array([11]))
    assert target[0] == pytest.approx(series.values[11] * (1 + DEFAULT_HEADROOM))


def test_a_service_minutes_old_calibrates_its_headroom_from_its_own_minutes() -> None:
    # 20 minutes of steady demand with 2% noise: the replay counts from lead + 2 steps, so
    # the headroom is calibrated on its minutes (the first of which, partial, does not count)
    # instead of waiting lead + hold steps on the 70% utilisation default.
    noise = np.random.default_rng(11).normal(0.0, 2.0, 20)
    values = 100.0 + noise
    values[0] = 10.0  # the service started within its first minute
    series = Series(START, 60, values)
    info = ShortfallForecaster(RULE).fit(series).calibration_
    assert info.mode == "reactive" and info.replayed_shortfall == 0.0
    assert info.headroom is not None and info.headroom < DEFAULT_HEADROOM
    assert "too little history" not in info.note
    assert refit_interval(20 * 60, 86400) == 300  # and it is refitted every 5 minutes


def test_targets_never_look_ahead() -> None:
    series = daily_demand(5, seed=8)
    model = ShortfallForecaster(RULE).fit(series.head(3 * 1440))
    origins = np.arange(3 * 1440, 3 * 1440 + 300, dtype=np.int64)
    before = model.predict_target(series.head(3 * 1440 + 300), origins)
    changed = series.values.copy()
    changed[3 * 1440 + 300 :] = 1e6
    after = model.predict_target(Series(series.start, 60, changed), origins)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(model.predict_target(series, origins[:1]), before[:1])


def test_the_achieved_shortfall_is_what_the_served_targets_did_after_the_fit() -> None:
    series = daily_demand(6, seed=9)
    cut = 5 * 1440
    model = ShortfallForecaster(RULE).fit(series.head(cut))
    assert model.calibration_.achieved_shortfall is None  # nothing served yet
    warm = RULE.lead + RULE.hold + 1
    origins = np.arange(cut - warm, len(series), dtype=np.int64)
    served = held_capacity(model.predict_target(series, origins), RULE)[warm:]
    expected = shortfall_share(series.values[cut:], served)
    model.fit(series)
    info = model.calibration_
    assert info.achieved_shortfall == pytest.approx(expected)
    assert info.achieved_seconds == (len(series) - cut) * 60


def test_a_new_model_carries_the_achieved_shortfall_an_earlier_one_reported() -> None:
    # An operator restart makes the model anew: the figure its status kept starts the record.
    series = daily_demand(6, seed=9)
    cut = 5 * 1440
    until = series.time_at(cut)
    model = ShortfallForecaster(RULE).carry_achieved(0.012, 7 * 86400.0, until)
    model.fit(series.head(cut))
    info = model.calibration_
    assert info.achieved_shortfall == pytest.approx(round(0.012 * 10080) / 10080)
    assert info.achieved_seconds == 7 * 86400
    # The next fit adds what this model served a day later, and the carried figure keeps
    # the six of its seven days that are still within the last seven.
    warm = RULE.lead + RULE.hold + 1
    origins = np.arange(cut - warm, len(series), dtype=np.int64)
    served = held_capacity(model.predict_target(series, origins), RULE)[warm:]
    short = int((series.values[cut:] > served + 1e-9).sum())
    model.fit(series)
    info = model.calibration_
    assert info.achieved_shortfall == pytest.approx((round(121 * 6 / 7) + short) / 10080)
    assert info.achieved_seconds == 7 * 86400
    # A fitted model has a record of its own; a figure must be a share over some minutes.
    with pytest.raises(ValueError, match="not fitted yet"):
        model.carry_achieved(0.01, 86400.0, until)
    with pytest.raises(ValueError, match="shortfall in"):
        ShortfallForecaster(RULE).carry_achieved(1.5, 86400.0, until)
    with pytest.raises(ValueError, match="at least one step"):
        ShortfallForecaster(RULE).carry_achieved(0.01, 0.0, until)


def test_estimator_conventions_pickling_and_discarded_history() -> None:
    model = ShortfallForecaster(RULE, 0.01)
    assert clone(model).get_params()["shortfall"] == 0.01
    with pytest.raises(NotFittedError):
        model.predict_target(daily_demand(1), np.array([1]))
    series = daily_demand(4, seed=10)
    model.fit(series).discard_history()
    again = pickle.loads(pickle.dumps(model))
    origins = np.arange(len(series) - 60, len(series), dtype=np.int64)
    np.testing.assert_array_equal(
        again.predict_target(series, origins), model.predict_target(series, origins)
    )
    with pytest.raises(ValueError, match="shortfall"):
        ShortfallForecaster(RULE, 0.5).fit(series)


def test_censored_minutes_count_as_short_in_the_calibration() -> None:
    series = daily_demand(5, seed=11)
    ceiling = float(np.percentile(series.values, 90))
    served = Series(series.start, 60, np.minimum(series.values, ceiling))
    capacity = Series(series.start, 60, np.full(len(series), ceiling))
    plain = ShortfallForecaster(RULE, 0.05).fit(served)
    aware = ShortfallForecaster(RULE, 0.05).fit(served, capacity=capacity)
    censored = aware.calibration_.censored_minutes
    assert plain.calibration_.censored_minutes < censored
    # Short whatever the margin: more margin is bought, and they are in the replayed share.
    assert (aware.calibration_.quantile or 0) > (plain.calibration_.quantile or 0)
    assert (aware.calibration_.replayed_shortfall or 0) >= censored / (5 * 1440)


def test_young_services_are_refitted_as_their_history_grows() -> None:
    hour, day = 3600.0, 86400.0
    assert refit_interval(60.0, 6 * hour) == 300  # at least five minutes apart
    assert refit_interval(10 * hour, 6 * hour) == pytest.approx(hour)  # a tenth of the history
    assert refit_interval(day, 6 * hour) == 6 * hour  # after the first day, the interval


def test_a_launch_is_a_level_shift_and_a_daily_ramp_seen_before_is_not() -> None:
    minutes = np.arange(3 * 1440)
    day = np.where((minutes % 1440) >= 8 * 60, 100.0, 20.0)  # a fivefold ramp at 08:00
    assert last_level_shift(day[: 9 * 60]) == 8 * 60 + 59  # the first day: a new level
    # Once a day has shown the ramp (and the fall at midnight), they are what those hours
    # usually do: the last shift is the first midnight's fall, never seen before it.
    assert last_level_shift(day[: 2 * 1440 + 9 * 60]) == 1440 + 58
    # Demand coming back after an outage (a gap) is not a new level either.
    outage = np.full(600, 100.0)
    outage[200:300] = np.nan
    outage[300:] = 400.0
    assert last_level_shift(outage) is None


def test_a_launch_recalibrates_from_the_new_level_without_chasing_the_climb() -> None:
    minutes = np.arange(1440)
    noise = np.random.default_rng(12).normal(1.0, 0.03, minutes.shape[0])
    climb = 5.0 + 95.0 / (1.0 + np.exp(-(minutes - 9 * 60 - 60) / 15.0))
    series = Series(START, 60, climb * noise)
    model = ShortfallForecaster(RULE).fit(series.head(16 * 60))
    info = model.calibration_
    assert info.mode == "reactive" and "level shift at" in info.note
    # The headroom suits the new level's noise, not the climb's misses.
    assert info.headroom is not None and info.headroom < 0.5


def test_minutes_no_margin_can_serve_do_not_push_the_margin_to_its_limit() -> None:
    """replicas.max caps capacity below the top 3% of demand: those minutes are short at
    any margin, so the calibration meets the target on the others, and says so."""
    series = daily_demand(9, seed=3)
    top = float(np.percentile(series.values, 97))
    capped = HoldRule(
        lead=10,
        hold=15,
        replica_throughput=20.0,
        utilization=1.0,
        min_replicas=1,
        max_replicas=int(top // 20.0),
    )
    info = ShortfallForecaster(capped, 0.01, time_of_day_buckets=0).fit(series).calibration_
    assert info.mode == "forecast" and info.quantile is not None
    assert info.quantile < float(QUANTILES[-1])
    assert info.replayed_shortfall is not None and info.replayed_shortfall <= 0.01
    assert "above what replicas.max serves left out" in info.note
    # Without a cap there is nothing to leave out.
    plain = ShortfallForecaster(RULE, 0.01, time_of_day_buckets=0).fit(series).calibration_
    assert "replicas.max" not in plain.note

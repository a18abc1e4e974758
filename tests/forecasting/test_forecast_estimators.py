"""Every window-peak estimator: conventions, causality, gaps, edge cases, calibration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from forecast_data import SERVEGEN, constant, daily_demand
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError

from peakwise.forecasting.base import PeakForecaster, pinball_loss
from peakwise.forecasting.calibration import coverage
from peakwise.forecasting.gbm import QuantileGBMPeakForecaster
from peakwise.forecasting.naive import (
    WEEK_SECONDS,
    RecentPeakForecaster,
    SeasonalNaivePeakForecaster,
    SeasonalRiseForecaster,
)
from peakwise.forecasting.nowcast import NowcastForecaster
from peakwise.forecasting.seasonal import SeasonalPeakForecaster
from peakwise.forecasting.select import AutoForecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.smoothing import ExponentialSmoothingPeakForecaster
from peakwise.forecasting.windows import trailing_max, window_peak_targets
from peakwise.trace import family_level, read_trace

LEAD, WIDTH = 10, 30

MODELS: dict[str, Callable[[], Any]] = {
    "seasonal-naive-day": lambda: SeasonalNaivePeakForecaster(lead=LEAD, width=WIDTH),
    "seasonal-naive-week": lambda: SeasonalNaivePeakForecaster(WEEK_SECONDS),
    "recent-peak": RecentPeakForecaster,
    "exp-smoothing": ExponentialSmoothingPeakForecaster,
    "quantile-gbm": QuantileGBMPeakForecaster,
    "nowcast": NowcastForecaster,
    "seasonal-rise": SeasonalRiseForecaster,
    "auto": AutoForecaster,
}
ALL = pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
# The earlier baseline follows the same conventions, though not every behaviour tested below.
ESTIMATORS = {**MODELS, "seasonal-peak": SeasonalPeakForecaster}


def _predict(model: PeakForecaster, series: Series, origins: Any, q: float = 0.95) -> Any:
    origins = np.asarray(origins, dtype=np.int64)
    return model.predict_peak(series, origins, lead=LEAD, width=WIDTH, quantiles=[q])[:, 0]


def test_trailing_max_matches_a_plain_loop() -> None:
    values = np.random.default_rng(3).random(200)
    values[[5, 50]] = np.nan
    for width in (1, 2, 7, 60):
        windows = [values[max(0, j - width + 1) : j + 1] for j in range(200)]
        expected = [np.nan if np.isnan(w).all() else np.nanmax(w) for w in windows]
        np.testing.assert_allclose(trailing_max(values, width), expected)


def test_window_peak_targets_follow_the_indexing_convention() -> None:
    values = np.arange(100, dtype=np.float64)
    targets = window_peak_targets(values, LEAD, WIDTH)
    assert targets[0] == values[LEAD + WIDTH]  # max(values[11:41]) = 40
    assert np.isnan(targets[100 - LEAD - WIDTH])
    assert not np.isnan(targets[100 - LEAD - WIDTH - 1])


@pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS.keys())
def test_scikit_learn_conventions(make: Callable[[], Any]) -> None:
    model = make()
    assert isinstance(model, BaseEstimator)
    params = model.get_params()
    copy = clone(model)
    assert type(copy) is type(model) and copy.get_params() == params
    assert repr(model).startswith(type(model).__name__ + "(")
    assert not any(name.endswith("_") for name in vars(model))  # nothing learned yet
    with pytest.raises(NotFittedError, match="not fitted"):
        _ = model.info_
    series = daily_demand(3)
    assert model.fit(series) is model
    assert model.get_params() == params  # fit does not touch hyperparameters
    with pytest.raises(ValueError):
        model.set_params(no_such_parameter=1)


@ALL
def test_no_lookahead(make: Callable[[], Any]) -> None:
    series = daily_demand(4, seed=1)
    model = make().fit(series.head(3 * 1440))
    origins = np.arange(3 * 1440, 3 * 1440 + 300)
    before = _predict(model, series.head(3 * 1440 + 300), origins)
    # Whatever comes after the last origin, including a huge spike, changes nothing.
    changed = series.values.copy()
    changed[3 * 1440 + 300 :] = 1e6
    after = _predict(model, Series(series.start, 60, changed), origins)
    np.testing.assert_array_equal(before, after)
    # And an early origin predicted alone equals the same origin predicted in a batch.
    alone = _predict(model, series, origins[:1])
    np.testing.assert_array_equal(alone, before[:1])


@ALL
def test_shapes_quantile_order_and_non_negative(make: Callable[[], Any]) -> None:
    series = daily_demand(3, seed=2)
    model = make().fit(series)
    origins = np.arange(0, len(series), 97, dtype=np.int64)
    out = model.predict_peak(series, origins, lead=LEAD, width=WIDTH, quantiles=[0.5, 0.9, 0.99])
    assert out.shape == (origins.shape[0], 3)
    known = ~np.isnan(out).any(axis=1)
    assert known[1:].all()
    assert (out[known] >= 0).all()
    assert (np.diff(out[known], axis=1) >= 0).all()  # quantiles do not cross


@ALL
def test_gaps_are_missing_not_zero(make: Callable[[], Any]) -> None:
    values = constant(3, 100.0).values.copy()
    values[2 * 1440 : 2 * 1440 + 90] = np.nan  # a 90-minute scrape outage
    values[1000:1003] = np.nan
    series = Series(constant(1, 0).start, 60, values)
    model = make().fit(series)
    origins = np.arange(2 * 1440, 2 * 1440 + 90)  # forecasting from inside the gap
    predicted = _predict(model, series, origins)
    assert np.isfinite(predicted).all()
    # A gap read as zero demand would pull these forecasts far below 100.
    assert predicted.min() >= 99.0


@ALL
def test_all_zero_series(make: Callable[[], Any]) -> None:
    series = constant(3, 0.0)
    model = make().fit(series)
    predicted = _predict(model, series, np.arange(0, len(series), 60))
    np.testing.assert_array_equal(predicted, 0.0)


@ALL
def test_flat_series_forecasts_its_level(make: Callable[[], Any]) -> None:
    series = constant(3, 42.0)
    model = make().fit(series)
    predicted = _predict(model, series, np.arange(1440, len(series), 60))
    np.testing.assert_allclose(predicted, 42.0, rtol=1e-6)


@ALL
def test_brand_new_service(make: Callable[[], Any]) -> None:
    # The backtest fits on the first minute alone; a forecast must still come out.
    series = daily_demand(0.2, seed=4)
    model = make().fit(series.head(1))
    predicted = _predict(model, series, [0, 5, 200])
    assert np.isfinite(predicted).all() and (predicted > 0).all()
    assert model.info_.short_history


def test_empty_history_gives_no_forecast() -> None:
    series = Series(constant(1, 0).start, 60, np.full(100, np.nan))
    model = AutoForecaster().fit(series)
    assert np.isnan(_predict(model, series, [10, 50])).all()


def test_short_history_falls_back_to_recent_level_and_says_so() -> None:
    series = daily_demand(0.5, seed=5)
    info = AutoForecaster().fit(series).info_
    assert info.short_history
    assert "recent-peak" in info.model
    long_info = AutoForecaster().fit(daily_demand(4, seed=5)).info_
    assert not long_info.short_history
    assert long_info.candidates and long_info.backtest_loss is not None
    assert long_info.training_span_seconds == 4 * 86400


def test_seasonal_models_report_short_history_under_a_season() -> None:
    one_day = daily_demand(0.9, seed=6)
    assert SeasonalNaivePeakForecaster().fit(one_day).info_.short_history
    assert ExponentialSmoothingPeakForecaster().fit(one_day).info_.short_history
    three_days = daily_demand(3, seed=6)
    assert not SeasonalNaivePeakForecaster().fit(three_days).info_.short_history
    assert not ExponentialSmoothingPeakForecaster().fit(three_days).info_.short_history


def test_other_window_shapes_are_fitted_on_demand() -> None:
    series = daily_demand(3, seed=7)
    model = RecentPeakForecaster(lead=LEAD, width=WIDTH).fit(series)
    origins = np.arange(1440, 2 * 1440, dtype=np.int64)
    one_minute = model.predict_peak(series, origins, lead=5, width=1, quantiles=[0.95])[:, 0]
    actual = window_peak_targets(series.values, 5, 1)[origins]
    assert 0.85 <= coverage(actual, one_minute) <= 1.0
    assert set(model.fits_) == {(LEAD, WIDTH), (5, 1)}


@pytest.mark.parametrize(
    "make",
    [MODELS["seasonal-naive-day"], MODELS["exp-smoothing"], MODELS["quantile-gbm"], MODELS["auto"]],
    ids=["seasonal-naive-day", "exp-smoothing", "quantile-gbm", "auto"],
)
def test_calibrated_on_held_out_days(make: Callable[[], Any]) -> None:
    series = daily_demand(7, seed=8)
    train_days = 5
    model = make().fit(series.head(train_days * 1440))
    origins = np.arange(train_days * 1440, len(series) - LEAD - WIDTH)
    actual = window_peak_targets(series.values, LEAD, WIDTH)[origins]
    # Two held-out days of 10-minute noise blocks: sampling error alone is a few points.
    for q, low, high in ((0.8, 0.7, 0.92), (0.95, 0.9, 0.99)):
        predicted = _predict(model, series, origins, q)
        assert low <= coverage(actual, predicted) <= high, q


def test_predict_before_fit_and_bad_origins() -> None:
    series = daily_demand(1)
    with pytest.raises(NotFittedError):
        _predict(RecentPeakForecaster(), series, [1])
    model = RecentPeakForecaster().fit(series)
    with pytest.raises(ValueError, match="origins"):
        _predict(model, series, [len(series)])


def test_servegen_selected_model_beats_the_baselines() -> None:
    """The issue's targets on the real trace, on one held-out stretch (days 11-13)."""
    series = read_trace(SERVEGEN, zero_is_gap_min_run=10).series
    cut = 11 * 1440
    origins = np.arange(cut, len(series) - LEAD - WIDTH)
    actual = window_peak_targets(series.values, LEAD, WIDTH)[origins]
    losses = {}
    for name, make in (("auto", AutoForecaster), ("naive", SeasonalNaivePeakForecaster)):
        model = make().fit(series.head(cut))
        predicted = _predict(model, series, origins)
        losses[name] = pinball_loss(actual, predicted, 0.95)
        if name == "auto":
            assert 0.92 <= coverage(actual, predicted) <= 0.98
    smoothing = ExponentialSmoothingPeakForecaster().fit(series.head(cut))
    losses["smoothing"] = pinball_loss(actual, _predict(smoothing, series, origins), 0.95)
    assert losses["auto"] <= 0.75 * losses["naive"]
    assert losses["auto"] < losses["smoothing"]


def _additive_noise_day(days: float, seed: int) -> Series:
    """A daily level from 50 to 1,000 with noise of the same size at every level."""
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    minutes = np.arange(n)
    level = 525.0 + 475.0 * np.sin(2 * np.pi * (minutes % 1440) / 1440)
    noise = np.repeat(rng.normal(0.0, 20.0, size=n // 5 + 1), 5)[:n]
    return Series(daily_demand(1).start, 60, np.maximum(level + noise, 0.0))


def test_margin_forms_ratio_scaled_and_auto() -> None:
    series = _additive_noise_day(6, seed=4)
    train = series.head(4 * 1440)
    origins = np.arange(4 * 1440, len(series) - LEAD - WIDTH)
    actual = window_peak_targets(series.values, LEAD, WIDTH)[origins]
    fitted = {
        form: RecentPeakForecaster(lead=LEAD, width=WIDTH, margin=form).fit(train)
        for form in ("ratio", "scaled", "auto")
    }
    assert fitted["ratio"].fitted_window(LEAD, WIDTH).form == "ratio"
    assert fitted["scaled"].fitted_window(LEAD, WIDTH).form == "scaled"
    # Noise that does not grow with the level: ratio margins are set by the quiet hours and
    # are too wide at the peak, so validation on the history picks the additive form.
    assert fitted["auto"].fitted_window(LEAD, WIDTH).form == "scaled"
    predicted = {form: _predict(model, series, origins) for form, model in fitted.items()}
    assert 0.9 <= coverage(actual, predicted["scaled"]) <= 0.99
    busy = actual > 800
    assert np.mean(predicted["scaled"][busy]) < np.mean(predicted["ratio"][busy])
    assert pinball_loss(actual, predicted["scaled"], 0.95) < pinball_loss(
        actual, predicted["ratio"], 0.95
    )
    np.testing.assert_allclose(predicted["auto"], predicted["scaled"])
    assert clone(fitted["scaled"]).get_params()["margin"] == "scaled"
    with pytest.raises(ValueError, match="margin"):
        RecentPeakForecaster(margin="additive").fit(train)


def test_seasonal_rise_sees_the_daily_ramp_coming_at_any_level() -> None:
    # Flat nights, a steep ramp at 08:00 every day; the last day's level is 3 times the rest.
    minutes = np.arange(8 * 1440)
    day = np.where((minutes % 1440) >= 480, 100.0, 20.0)
    day[7 * 1440 :] *= 3.0
    series = Series(daily_demand(1).start, 60, day)
    model = SeasonalRiseForecaster(lead=LEAD, width=1).fit(series.head(7 * 1440))
    before_ramp = np.array([7 * 1440 + 480 - LEAD - 1], dtype=np.int64)  # window = 08:00
    median = model.predict_peak(series, before_ramp, lead=LEAD, width=1, quantiles=[0.5])
    # The level now (60) times the rise seen at that time on earlier days (5x): 300.
    assert median[0, 0] == pytest.approx(300.0, rel=0.05)
    plain = NowcastForecaster(lead=LEAD, width=1).fit(series.head(7 * 1440))
    assert plain.predict_peak(series, before_ramp, lead=LEAD, width=1, quantiles=[0.5])[0, 0] < 150


def test_additive_margins_at_night_follow_the_nights_counting_noise() -> None:
    # A chat service's counts: Poisson around a daily cycle whose night is a tenth of its
    # day. The additive margin's floor is the history's typical range, which the busy hours
    # set; taken as is at night it was most of the night's demand.
    level = family_level("weekly", 10, seed=3)
    demand = np.random.default_rng(3).poisson(3000.0 * level.level) / 60.0
    series = Series(daily_demand(1).start, 60, demand)
    model = SeasonalRiseForecaster(lead=LEAD, width=1, margin="scaled", quantile=0.95)
    model.fit(series.head(8 * 1440))
    origins = np.arange(8 * 1440, 10 * 1440 - LEAD - 1, dtype=np.int64)
    forecast = model.predict_peak(series, origins, lead=LEAD, width=1, quantiles=[0.95])[:, 0]
    truth = 3000.0 * level.level[origins + LEAD + 1] / 60.0  # the mean the counts are drawn at
    hour = (origins % 1440) // 60
    night, day = (hour >= 1) & (hour < 6), (hour >= 10) & (hour < 18)
    over_night = float(np.mean(forecast[night] / truth[night]))
    over_day = float(np.mean(forecast[day] / truth[day]))
    # The night's relative noise is larger (fewer counts), so its margin is too, but not by
    # a day's range (here 1.24 against 1.12 by day; the day's range as is gave 1.43).
    assert over_day < 1.2
    assert over_night < 1.32
    actual = window_peak_targets(series.values, LEAD, 1)[origins]
    assert 0.9 <= coverage(actual[night], forecast[night]) <= 0.995

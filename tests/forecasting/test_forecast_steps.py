"""Per-step forecasts (``predict_steps``): shape, order, causality, gaps, calibration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from forecast_data import SERVEGEN, START, constant, daily_demand
from sklearn.exceptions import NotFittedError

from peakwise.forecasting.base import PeakForecaster
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
from peakwise.forecasting.windows import step_targets
from peakwise.trace import read_trace

H = 60

MODELS: dict[str, Callable[[], Any]] = {
    "seasonal-naive-day": SeasonalNaivePeakForecaster,
    "seasonal-naive-week": lambda: SeasonalNaivePeakForecaster(WEEK_SECONDS),
    "recent-peak": RecentPeakForecaster,
    "exp-smoothing": ExponentialSmoothingPeakForecaster,
    "quantile-gbm": QuantileGBMPeakForecaster,
    "nowcast": NowcastForecaster,
    "seasonal-rise": SeasonalRiseForecaster,
    "auto": AutoForecaster,
    "seasonal-peak (baseline)": SeasonalPeakForecaster,
}
ALL = pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
# The models that calibrate their margins (the old baseline is only checked for the contract).
CALIBRATED = pytest.mark.parametrize(
    "make",
    [MODELS[name] for name in ("seasonal-naive-day", "recent-peak", "exp-smoothing")]
    + [MODELS["quantile-gbm"], MODELS["auto"]],
    ids=["seasonal-naive-day", "recent-peak", "exp-smoothing", "quantile-gbm", "auto"],
)


def _steps(model: PeakForecaster, series: Series, origins: Any, q: float = 0.95) -> Any:
    origins = np.asarray(origins, dtype=np.int64)
    return model.predict_steps(series, origins, horizon=H, quantiles=[q])[:, :, 0]


def seasonal_with_noise(days: float, sigma: float, seed: int) -> Series:
    """A daily cycle times independent per-minute log-normal noise: the q-quantile of every
    minute is known exactly, ``cycle × exp(sigma × z_q)``."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(int(days * 1440))
    cycle = 100.0 * (1.0 + 0.5 * np.sin(2 * np.pi * (minutes % 1440) / 1440))
    return Series(START, 60, cycle * rng.lognormal(0.0, sigma, size=minutes.shape[0]))


def _coverage_per_step(actual: Any, predicted: Any) -> Any:
    ok = ~np.isnan(actual) & ~np.isnan(predicted)
    return np.array([np.mean(actual[ok[:, h], h] <= predicted[ok[:, h], h]) for h in range(H)])


@ALL
def test_shape_quantile_order_and_non_negative(make: Callable[[], Any]) -> None:
    series = daily_demand(3, seed=21)
    model = make().fit(series)
    origins = np.arange(0, len(series), 97, dtype=np.int64)
    out = model.predict_steps(series, origins, horizon=H, quantiles=[0.1, 0.5, 0.9, 0.99])
    assert out.shape == (origins.shape[0], H, 4)
    assert np.isfinite(out).all()  # something is known at every origin, even the first
    assert (out >= 0).all()
    assert (np.diff(out, axis=2) >= 0).all()  # quantiles do not cross, at any step
    assert model.predict_steps(series, origins[:0], horizon=5, quantiles=[0.5]).shape == (0, 5, 1)


@ALL
def test_no_lookahead(make: Callable[[], Any]) -> None:
    series = daily_demand(4, seed=22)
    cut = 3 * 1440
    model = make().fit(series.head(cut))
    origins = np.arange(cut, cut + 300)
    before = _steps(model, series.head(cut + 300), origins)
    # Whatever comes after the last origin (a huge spike, or more days) changes nothing.
    changed = series.values.copy()
    changed[cut + 300 :] = 1e6
    np.testing.assert_array_equal(before, _steps(model, Series(START, 60, changed), origins))
    np.testing.assert_array_equal(before, _steps(model, series, origins))
    # Each origin sees only values[: o + 1]: forecasting it from exactly that prefix agrees.
    for o in (cut, cut + 137, cut + 299):
        np.testing.assert_array_equal(_steps(model, series.head(o + 1), [o])[0], before[o - cut])


@ALL
def test_gaps_are_missing_not_zero(make: Callable[[], Any]) -> None:
    values = constant(3, 100.0).values.copy()
    values[2 * 1440 : 2 * 1440 + 90] = np.nan  # a 90-minute scrape outage
    values[1000:1003] = np.nan
    series = Series(START, 60, values)
    model = make().fit(series)
    predicted = _steps(model, series, np.arange(2 * 1440, 2 * 1440 + 90))  # inside the gap
    assert np.isfinite(predicted).all()
    # A gap read as zero demand would pull these forecasts far below 100.
    assert predicted.min() >= 99.0


@ALL
def test_all_zero_series(make: Callable[[], Any]) -> None:
    series = constant(3, 0.0)
    model = make().fit(series)
    np.testing.assert_array_equal(_steps(model, series, np.arange(0, len(series), 60)), 0.0)


@ALL
def test_flat_series_forecasts_its_level(make: Callable[[], Any]) -> None:
    series = constant(3, 42.0)
    model = make().fit(series)
    predicted = _steps(model, series, np.arange(1440, len(series), 60))
    np.testing.assert_allclose(predicted, 42.0, rtol=1e-6)


@ALL
def test_brand_new_service(make: Callable[[], Any]) -> None:
    series = daily_demand(0.2, seed=23)
    model = make().fit(series.head(1))
    predicted = _steps(model, series, [0, 5, 200])
    assert np.isfinite(predicted).all() and (predicted > 0).all()


def test_short_history_falls_back_to_the_recent_peak() -> None:
    # Under a day there is no "same minute yesterday": the seasonal model's per-step forecast
    # is the calibrated recent peak, exactly what the recent-peak model says.
    series = daily_demand(0.8, seed=24)
    origins = np.arange(200, len(series), 7)
    seasonal = SeasonalNaivePeakForecaster().fit(series)
    recent = RecentPeakForecaster().fit(series)
    np.testing.assert_allclose(_steps(seasonal, series, origins), _steps(recent, series, origins))
    assert seasonal.fitted_steps(H).short_history
    assert not recent.fitted_steps(H).short_history
    auto = AutoForecaster().fit(series)
    assert auto.info_.short_history
    np.testing.assert_allclose(_steps(auto, series, origins), _steps(recent, series, origins))


def test_empty_history_gives_no_forecast() -> None:
    series = Series(START, 60, np.full(100, np.nan))
    assert np.isnan(_steps(AutoForecaster().fit(series), series, [10, 50])).all()


@CALIBRATED
def test_calibrated_per_step_on_held_out_days(make: Callable[[], Any]) -> None:
    """Independent per-minute noise around a daily cycle: ~2,800 near-independent trials per
    step, so coverage must be within a few points of q at every step."""
    series = seasonal_with_noise(7, sigma=0.2, seed=25)
    train = 5 * 1440
    model = make().fit(series.head(train))
    origins = np.arange(train, len(series) - H)
    actual = step_targets(series.values, origins, H)
    for q, tolerance in ((0.5, 0.08), (0.8, 0.06), (0.95, 0.035)):
        covered = _coverage_per_step(actual, _steps(model, series, origins, q))
        assert abs(covered.mean() - q) <= tolerance, (q, covered.mean())
        assert np.all(np.abs(covered[[0, 9, 29, 59]] - q) <= 2 * tolerance), (q, covered)


def test_seasonal_models_find_the_true_quantile() -> None:
    # With a daily cycle, a seasonal model's 0.95-quantile follows the known one, minute by
    # minute; a recent-level model cannot (it is too high at the trough, too low at the crest).
    sigma = 0.2
    series = seasonal_with_noise(7, sigma=sigma, seed=26)
    train = 5 * 1440
    origins = np.arange(train, len(series) - H, 5)
    minutes = origins[:, None] + np.arange(1, H + 1)[None, :]
    cycle = 100.0 * (1.0 + 0.5 * np.sin(2 * np.pi * (minutes % 1440) / 1440))
    truth = cycle * np.exp(sigma * 1.6449)
    errors = {}
    for name in ("exp-smoothing", "recent-peak"):
        model = MODELS[name]().fit(series.head(train))
        errors[name] = np.median(np.abs(_steps(model, series, origins) / truth - 1))
    assert errors["exp-smoothing"] < 0.1
    assert errors["exp-smoothing"] < errors["recent-peak"] / 2


def test_margins_widen_with_the_step() -> None:
    # A random walk: the further ahead, the wider the band. One margin per step captures it.
    rng = np.random.default_rng(27)
    walk = 1000.0 + np.cumsum(rng.normal(0.0, 5.0, size=3 * 1440))
    model = RecentPeakForecaster(window_seconds=60).fit(Series(START, 60, walk))
    steps = model.fitted_steps(H).primary.steps
    upper = [steps[h].margin(0.95) for h in (0, 9, 29, 59)]
    lower = [steps[h].margin(0.05) for h in (0, 9, 29, 59)]
    assert upper == sorted(upper) and upper[0] < upper[-1]
    assert lower == sorted(lower, reverse=True) and lower[0] > lower[-1]


def test_each_horizon_is_fitted_once_and_peaks_are_untouched() -> None:
    series = daily_demand(3, seed=28)
    model = ExponentialSmoothingPeakForecaster().fit(series)
    origins = np.arange(1440, 2 * 1440, dtype=np.int64)
    peaks = model.predict_peak(series, origins, lead=10, width=30, quantiles=[0.95])
    assert model.step_fits_ == {}  # fit() costs what it did: steps are fitted on first use
    first = _steps(model, series, origins)
    model.predict_steps(series, origins, horizon=10, quantiles=[0.5])
    np.testing.assert_array_equal(first, _steps(model, series, origins))
    assert set(model.step_fits_) == {H, 10}
    again = model.predict_peak(series, origins, lead=10, width=30, quantiles=[0.95])
    np.testing.assert_array_equal(peaks, again)


def test_auto_blends_the_models_it_selected() -> None:
    series = daily_demand(5, seed=29)
    auto = AutoForecaster().fit(series)
    peak_models = auto.selection(auto.lead, auto.width).models
    chosen = auto.step_selection(H)
    # Carried over: per step it uses (some of) the models chosen for the window peak, as fitted.
    assert chosen.models and all(any(m is p for p in peak_models) for m in chosen.models)
    assert abs(sum(chosen.weights) - 1.0) < 1e-9
    origins = np.arange(4 * 1440, 5 * 1440 - H, 13)
    expected = sum(
        w * m.predict_steps(series, origins, horizon=H, quantiles=[0.5, 0.95])
        for w, m in zip(chosen.weights, chosen.models, strict=True)
    )
    out = auto.predict_steps(series, origins, horizon=H, quantiles=[0.5, 0.95])
    np.testing.assert_allclose(out, expected)


def test_predict_before_fit_and_bad_arguments() -> None:
    series = daily_demand(1)
    for model in (RecentPeakForecaster(), AutoForecaster(), SeasonalPeakForecaster()):
        with pytest.raises(NotFittedError, match="not fitted"):
            _steps(model, series, [1])
    model = RecentPeakForecaster().fit(series)
    with pytest.raises(ValueError, match="origins"):
        _steps(model, series, [len(series)])
    with pytest.raises(ValueError, match="horizon"):
        model.predict_steps(series, np.array([5]), horizon=0, quantiles=[0.5])


def test_servegen_per_step_coverage() -> None:
    """The issue's coverage target for per-step forecasts on the real trace (days 11-13)."""
    series = read_trace(SERVEGEN, zero_is_gap_min_run=10).series
    cut = 11 * 1440
    model = AutoForecaster().fit(series.head(cut))
    origins = np.arange(cut, len(series) - H, 3)
    covered = _coverage_per_step(
        step_targets(series.values, origins, H), _steps(model, series, origins)
    )
    assert 0.92 <= covered.mean() <= 0.98
    assert covered.min() >= 0.88

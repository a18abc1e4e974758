from datetime import UTC, datetime

import numpy as np

from peakwise.backtest.nowcast import NowcastForecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.windows import window_peak_targets

START = datetime(2024, 1, 1, tzinfo=UTC)


def _walk(n: int, seed: int = 0) -> Series:
    rng = np.random.default_rng(seed)
    values = 100.0 + np.cumsum(rng.normal(0.0, 2.0, n))
    values[500:530] = np.nan  # a gap
    return Series(START, 60, np.maximum(values, 0.0))


def test_coverage_on_later_data_is_near_the_quantile() -> None:
    series = _walk(6000)
    model = NowcastForecaster(lead=10, width=1, quantile=0.95).fit(series.head(3000))
    origins = np.arange(3000, 5980, dtype=np.int64)
    predicted = model.predict_peak(series, origins, lead=10, width=1, quantiles=[0.95])[:, 0]
    actual = window_peak_targets(series.values, 10, 1)[origins]
    known = ~np.isnan(actual)
    assert 0.9 <= np.mean(actual[known] <= predicted[known]) <= 0.99


def test_appending_data_does_not_change_earlier_forecasts() -> None:
    series = _walk(3000, seed=1)
    model = NowcastForecaster(lead=10, width=1, quantile=0.99).fit(series.head(1500))
    origins = np.arange(1500, 2000, dtype=np.int64)
    short = model.predict_peak(series.head(2000), origins, lead=10, width=1, quantiles=[0.99])
    full = model.predict_peak(series, origins, lead=10, width=1, quantiles=[0.99])
    np.testing.assert_array_equal(short, full)


def test_margin_follows_recent_volatility_and_quantiles_are_ordered() -> None:
    steady = np.full(2000, 100.0)
    steady[1000:1060] = np.tile([60.0, 140.0], 30)  # a jumpy hour
    series = Series(START, 60, steady)
    model = NowcastForecaster(lead=10, width=1, quantile=0.99).fit(series)
    origins = np.array([900, 1059], dtype=np.int64)
    out = model.predict_peak(series, origins, lead=10, width=1, quantiles=[0.5, 0.99])
    assert np.all(out[:, 1] >= out[:, 0])
    calm, jumpy = out[:, 1] - np.array([100.0, 140.0])
    assert jumpy > calm


def test_short_history_uses_the_default_margin() -> None:
    series = Series(START, 60, np.full(30, 50.0))
    model = NowcastForecaster(lead=10, width=1, quantile=0.99).fit(series)
    assert model.info_.short_history
    out = model.predict_peak(series, np.array([29]), lead=10, width=1, quantiles=[0.99])
    assert out[0, 0] == 50.0 * 1.25

"""A fitted model can let go of its training history and still forecast what it was fitted
for: what lets the operator keep one model per service for a thousand services."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from forecast_data import daily_demand

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.gbm import QuantileGBMPeakForecaster
from peakwise.forecasting.naive import RecentPeakForecaster, SeasonalNaivePeakForecaster
from peakwise.forecasting.nowcast import NowcastForecaster
from peakwise.forecasting.seasonal import SeasonalPeakForecaster
from peakwise.forecasting.select import AutoForecaster, default_forecaster
from peakwise.forecasting.shortfall import HoldRule
from peakwise.forecasting.smoothing import ExponentialSmoothingPeakForecaster
from peakwise.operator.forecasts import fit_model

LEAD, WIDTH, Q = 10, 5, 0.95

MODELS: dict[str, Callable[[], Any]] = {
    "seasonal-naive-day": lambda: SeasonalNaivePeakForecaster(lead=LEAD, width=WIDTH),
    "recent-peak": lambda: RecentPeakForecaster(lead=LEAD, width=WIDTH),
    "exp-smoothing": lambda: ExponentialSmoothingPeakForecaster(lead=LEAD, width=WIDTH),
    "quantile-gbm": lambda: QuantileGBMPeakForecaster(lead=LEAD, width=WIDTH),
    "nowcast": lambda: NowcastForecaster(lead=LEAD, width=WIDTH),
    "auto": lambda: AutoForecaster(lead=LEAD, width=WIDTH),
    "seasonal-peak": lambda: SeasonalPeakForecaster(lead=LEAD, width=WIDTH),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_discarding_history_keeps_the_fitted_forecast(make: Callable[[], Any]) -> None:
    series = daily_demand(4, seed=3)
    origins = np.arange(len(series) - 600, len(series), 7, dtype=np.int64)
    model = make().fit(series)
    before = model.predict_peak(series, origins, lead=LEAD, width=WIDTH, quantiles=[0.5, Q])
    info = model.info_
    kept = len(pickle.dumps(model))

    assert model.discard_history() is model
    after = model.predict_peak(series, origins, lead=LEAD, width=WIDTH, quantiles=[0.5, Q])
    np.testing.assert_array_equal(after, before)
    assert model.info_ == info
    assert len(pickle.dumps(model)) < kept - 8 * len(series) // 2
    # Another window shape or a per-step horizon needs the history: a clear error, not a
    # forecast from nothing.
    with pytest.raises(RuntimeError, match="discarded its training history"):
        model.predict_steps(series, origins, horizon=30, quantiles=[Q])
    if not isinstance(model, SeasonalPeakForecaster):  # it learns one window shape only
        with pytest.raises(RuntimeError, match="discarded its training history"):
            model.predict_peak(series, origins, lead=LEAD, width=WIDTH + 1, quantiles=[Q])


def test_the_operator_keeps_models_without_their_history() -> None:
    series = daily_demand(4, seed=5)
    rule = HoldRule(lead=LEAD, hold=LEAD + 1, replica_throughput=1.0)
    spec = InferenceDeploymentSpec.model_validate(
        {
            "template": {},
            "gpuProfiles": [{"gpuType": "g", "throughputPerReplica": 1}],
            "demand": {"query": "q"},
            "forecast": {"quantile": Q},
        }
    )
    model = fit_model(default_forecaster, spec, rule, 1, series).forecaster_
    assert not hasattr(model, "training_series_")
    assert model.info_.training_steps == len(series)
    # What it saves is the history: 8 bytes per step.
    with_history = default_forecaster(LEAD, 1, Q).fit(series)
    assert len(pickle.dumps(with_history)) - len(pickle.dumps(model)) >= 8 * len(series)

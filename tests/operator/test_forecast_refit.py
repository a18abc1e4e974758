"""A refit starts from a copy of the model it replaces: a warm-started selection carries over,
and the model being served is never refitted under the predictions that use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from manifests import deployment_spec

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import ForecastInfo
from peakwise.forecasting.select import default_forecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.target import hold_rule
from peakwise.operator.forecasts import ForecastService, fit_model

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def daily_demand(days: int) -> Series:
    minutes = np.arange(days * 1440)
    noise = np.random.default_rng(11).lognormal(0.0, 0.2, minutes.shape[0])
    return Series(NOW, 60, 100 * (1.2 + np.sin(2 * np.pi * minutes / 1440)) * noise)


class Source:
    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        n = int((end - start).total_seconds() // step_seconds) + 1
        return Series(start, step_seconds, np.full(n, 10.0))


class Model:
    """Counts the fits it has been through, copies included."""

    def __init__(self) -> None:
        self.fits_seen = 0
        self.info_ = ForecastInfo(model="flat", training_steps=0)

    def fit(self, series: Series) -> Model:
        self.fits_seen += 1
        return self

    def discard_history(self) -> Model:
        return self

    def predict_peak(self, series: Series, origins: Any, *, quantiles: Any, **_: Any) -> Any:
        return np.full((len(origins), len(quantiles)), 10.0)


def spec() -> InferenceDeploymentSpec:
    return deployment_spec(mode="Recommend", query="q")


def test_a_refit_starts_from_a_copy_of_the_served_model() -> None:
    made: list[Model] = []

    def factory(lead: int, width: int, q: float) -> Model:
        made.append(Model())
        return made[-1]

    forecasts = ForecastService(Source(), factory, refit_every=timedelta(hours=1))  # type: ignore[arg-type]
    lead = timedelta(minutes=5)
    key = ("ns", "a")
    forecasts.forecast(key, spec(), lead, NOW)
    first = forecasts._fitted[forecasts._model_of[key]].model
    forecasts.forecast(key, spec(), lead, NOW + timedelta(hours=2))
    second = forecasts._fitted[forecasts._model_of[key]].model
    assert len(made) == 1, "a refit must not start from a fresh model"
    assert second is not first
    assert (first.forecaster_.fits_seen, second.forecaster_.fits_seen) == (1, 2)  # type: ignore[attr-defined]


def test_a_warm_refit_carries_the_selection_scores_and_measures_what_was_served() -> None:
    series = daily_demand(6)
    earlier = series.head(len(series) - 720)
    rule = hold_rule(spec(), timedelta(minutes=10), timedelta(minutes=1))
    previous = fit_model(default_forecaster, spec(), rule, 1, earlier)
    served: Any = previous.forecaster_
    kept = {k: dict(v) for k, v in served.scores_.items()}
    warm = fit_model(default_forecaster, spec(), rule, 1, series, previous=previous)
    cold = fit_model(default_forecaster, spec(), rule, 1, series)
    refitted: Any = warm.forecaster_
    fresh: Any = cold.forecaster_
    # The served model is untouched; the refit blended its scores with the new ones.
    assert served.scores_ == kept
    assert refitted.scores_until_ > served.scores_until_
    assert refitted.scores_ != fresh.scores_
    assert set(refitted.scores_[(10, 1)]) == set(fresh.scores_[(10, 1)])
    # Only the refit of the served model knows how the served targets did since.
    achieved, never = warm.calibration_, cold.calibration_
    assert achieved.achieved_shortfall is not None and achieved.achieved_seconds == 720 * 60
    assert never.achieved_shortfall is None and previous.calibration_.achieved_shortfall is None


class Daily:
    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        n = int((end - start).total_seconds() // step_seconds) + 1
        minutes = np.arange(n) + int(start.timestamp() // 60)
        noise = np.random.default_rng(n).lognormal(0.0, 0.1, n)
        return Series(start, step_seconds, 100 * (1.2 + np.sin(2 * np.pi * minutes / 1440)) * noise)


def test_the_forecast_carries_the_calibration_status_and_metrics_show() -> None:
    forecasts = ForecastService(Daily(), default_forecaster)
    young = forecasts.forecast(("ns", "a"), spec(), timedelta(minutes=5), NOW)
    calibration = young.calibration
    assert calibration is not None and calibration.target == 0.005
    # A day of history: the calibrated reactive rule sizes it. That is the model's own
    # forecast, not a fallback, and the model's name (the condition's text) says what it is.
    assert calibration.mode == "reactive" and calibration.headroom is not None
    assert young.fallback == "" and young.forecast is not None
    assert young.forecast.model.startswith("reactive headroom")
    assert "until forecasts prove cheaper" in young.forecast.model
    grown_spec = spec().model_copy(
        update={"forecast": spec().forecast.model_copy(update={"history": timedelta(days=4)})}
    )
    grown = forecasts.forecast(("ns", "b"), grown_spec, timedelta(minutes=5), NOW)
    assert grown.calibration is not None and grown.calibration.replayed_shortfall is not None
    assert grown.calibration.calibration_seconds == 4 * 86400 + 60
    if grown.calibration.mode == "forecast":
        assert grown.forecast is not None
        assert grown.forecast.quantile == grown.calibration.quantile and grown.fallback == ""
    forecasts.close()

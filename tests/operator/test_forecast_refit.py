"""A refit starts from a copy of the model it replaces: a warm-started selection carries over,
and the model being served is never refitted under the predictions that use it. After a
restart, a new model carries on the achieved shortfall its service's status kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from manifests import deployment, deployment_spec

from peakwise.api.inferencedeployment import InferenceDeployment, InferenceDeploymentSpec
from peakwise.forecasting.base import ForecastInfo
from peakwise.forecasting.select import default_forecaster
from peakwise.forecasting.series import Series
from peakwise.forecasting.target import hold_rule
from peakwise.operator.controller import restarted_achieved
from peakwise.operator.forecasts import CarriedAchieved, ForecastService, fit_model

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


def test_a_restarted_operator_shows_the_achieved_shortfall_its_status_kept() -> None:
    forecasts = ForecastService(
        Source(), lambda lead, width, q: Model(), refit_every=timedelta(hours=1)
    )  # type: ignore[arg-type,return-value]
    lead = timedelta(minutes=5)
    key = ("ns", "a")
    kept = CarriedAchieved(0.012, 7 * 86400.0, NOW - timedelta(minutes=3))
    forecasts.schedule(key, spec(), lead, NOW, kept)
    calibration = forecasts.forecast(key, spec(), lead, NOW).calibration
    assert calibration is not None
    # (within the minutes' rounding: the last 7 days end at this fit, not at the kept figure's)
    assert calibration.achieved_shortfall == pytest.approx(0.012, abs=1e-4)
    # Once this process has a model, the status' figure is its own: not taken again.
    later = NOW + timedelta(hours=2)
    forecasts.schedule(key, spec(), lead, later, CarriedAchieved(0.5, 86400.0, later))
    calibration = forecasts.forecast(key, spec(), lead, later).calibration
    assert calibration is not None and calibration.achieved_shortfall is not None
    assert calibration.achieved_shortfall < 0.02
    # Without a kept figure a new model shows none until its second fit.
    fresh = ForecastService(
        Source(), lambda lead, width, q: Model(), refit_every=timedelta(hours=1)
    )  # type: ignore[arg-type,return-value]
    calibration = fresh.forecast(key, spec(), lead, NOW).calibration
    assert calibration is not None and calibration.achieved_shortfall is None


def _with_status(generation: int, observed: int, slo: dict[str, Any]) -> InferenceDeployment:
    body = deployment("a", "ns")
    body["metadata"]["generation"] = generation
    body["status"] = {
        "observedGeneration": observed,
        "lastPlanTime": "2025-03-03T11:58:00Z",
        "slo": slo,
    }
    return InferenceDeployment.model_validate(body)


def test_the_achieved_shortfall_is_carried_only_from_a_status_of_the_spec_as_it_is() -> None:
    slo = {"shortfallTarget": "0.5%", "achievedShortfall": "1.2%", "achievedWindow": "6d12h"}
    carried = restarted_achieved(_with_status(4, 4, slo))
    assert carried == CarriedAchieved(
        pytest.approx(0.012), 6.5 * 86400, datetime(2025, 3, 3, 11, 58, tzinfo=UTC)
    )
    # Written for an older spec (another target or query, perhaps): not this one's.
    assert restarted_achieved(_with_status(5, 4, slo)) is None
    # A figure that is no share of a whole minute or more: ignored, the deployment planned.
    for odd in (
        {"achievedWindow": "a week"},
        {"achievedWindow": "30s"},
        {"achievedShortfall": "150%"},
    ):
        assert restarted_achieved(_with_status(4, 4, {**slo, **odd})) is None
    # Nothing measured yet.
    assert restarted_achieved(_with_status(4, 4, {"shortfallTarget": "0.5%"})) is None
    assert restarted_achieved(InferenceDeployment.model_validate(deployment("a"))) is None

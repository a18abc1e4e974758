"""ForecastService fits one model per (query, forecast settings), shared by deployments."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from manifests import deployment_spec

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import ForecastInfo
from peakwise.forecasting.series import Series
from peakwise.operator.forecasts import ForecastService

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


class Source:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        self.queries.append(query)
        n = int((end - start).total_seconds() // step_seconds) + 1
        level = 10.0 if "a" in query else 20.0
        return Series(start, step_seconds, np.full(n, level))


class Model:
    fitted = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        self.info_ = ForecastInfo(model="flat", training_steps=0)

    def discard_history(self) -> Model:
        return self

    def fit(self, series: Series) -> Model:
        with Model.lock:
            Model.fitted += 1
        self.level = float(series.values[-1])
        return self

    def predict_peak(self, series: Series, origins: Any, *, quantiles: Any, **_: Any) -> Any:
        return np.full((len(origins), len(quantiles)), self.level)


def spec(query: str, quantile: float = 0.9) -> InferenceDeploymentSpec:
    return deployment_spec(
        mode="Recommend", query=query, forecast={"history": "1d", "quantile": quantile}
    )


def service(source: Source) -> ForecastService:
    return ForecastService(source, lambda lead, width, q: Model(), refit_every=timedelta(hours=1))  # type: ignore[arg-type,return-value]


def test_same_query_and_settings_share_one_fit() -> None:
    Model.fitted = 0
    forecasts = service(Source())
    lead = timedelta(minutes=5)
    keys = [("ns", f"d{i}") for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: forecasts.forecast(k, spec("q_a"), lead, NOW), keys))
    assert Model.fitted == 1 and forecasts.fits == 1
    assert all(r.forecast is not None and r.forecast.peak == 10.0 for r in results)
    # Another query, or other settings, is another model.
    assert forecasts.forecast(("ns", "x"), spec("q_b"), lead, NOW).forecast.peak == 20.0  # type: ignore[union-attr]
    forecasts.forecast(("ns", "y"), spec("q_a", quantile=0.5), lead, NOW)
    forecasts.forecast(("ns", "z"), spec("q_a"), timedelta(minutes=9), NOW)
    assert forecasts.fits == 4


def test_refit_after_refit_every_and_forget() -> None:
    forecasts = service(Source())
    lead = timedelta(minutes=5)
    forecasts.forecast(("ns", "a"), spec("q_a"), lead, NOW)
    forecasts.forecast(("ns", "b"), spec("q_a"), lead, NOW + timedelta(minutes=30))
    assert forecasts.fits == 1
    forecasts.forecast(("ns", "a"), spec("q_a"), lead, NOW + timedelta(hours=1))
    assert forecasts.fits == 2
    # Forgetting one deployment keeps the model its group still uses.
    forecasts.forget(("ns", "a"))
    forecasts.forecast(("ns", "b"), spec("q_a"), lead, NOW + timedelta(hours=1, minutes=1))
    assert forecasts.fits == 2
    forecasts.forget(("ns", "b"))
    forecasts.forecast(("ns", "b"), spec("q_a"), lead, NOW + timedelta(hours=1, minutes=2))
    assert forecasts.fits == 3

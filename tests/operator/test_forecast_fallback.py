"""ForecastService: fits in the background, reactive sizing until a model exists or when its
own backtest is poor, and the Forecasting condition that says which one sized the service."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
import pytest
from manifests import deployment_spec

from peakwise.api.inferencedeployment import InferenceDeploymentSpec
from peakwise.forecasting.base import ForecastInfo
from peakwise.forecasting.select import default_forecaster
from peakwise.forecasting.series import Series
from peakwise.operator.forecasts import ForecastService, reactive_peak
from peakwise.operator.status import forecasting_condition

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
LEAD = timedelta(minutes=10)


class Ramp:
    """Demand rising by 1/s per minute over the day before NOW; `fail` makes fetches raise."""

    def __init__(self) -> None:
        self.fail = False
        self.ranges: list[timedelta] = []

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        if self.fail:
            raise ConnectionError("prometheus is down")
        self.ranges.append(end - start)
        stamps = np.arange(start.timestamp(), end.timestamp() + 1, step_seconds)
        origin = (NOW - timedelta(days=1)).timestamp()
        return Series(start, step_seconds, (stamps - origin) / 60.0)


class Model:
    """Forecasts a fixed level; `gate` holds its fit until released."""

    def __init__(self, level: float, coverage: float | None, gate: threading.Event | None) -> None:
        self.level, self.gate = level, gate
        self.info_ = ForecastInfo("flat", 0, backtest_loss=1.0, coverage=coverage)

    def discard_history(self) -> Model:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Model:
        # A refit starts from a copy of the served model; the copy shares the test's gate.
        return Model(self.level, self.info_.coverage, self.gate)

    def fit(self, series: Series) -> Model:
        if self.gate is not None:
            assert self.gate.wait(5), "test gate never opened"
        if np.isnan(self.level):
            raise RuntimeError("singular matrix")
        return self

    def predict_peak(self, series: Series, origins: Any, *, quantiles: Any, **_: Any) -> Any:
        return np.full((len(origins), len(quantiles)), self.level)


def spec(query: str = "demand", history: str = "1d") -> InferenceDeploymentSpec:
    return deployment_spec(query=query, forecast={"history": history, "quantile": 0.95})


def service(
    source: Ramp,
    level: float = 5000.0,
    coverage: float | None = 0.95,
    gate: threading.Event | None = None,
) -> ForecastService:
    return ForecastService(
        source,
        lambda lead, width, q: Model(level, coverage, gate),  # type: ignore[arg-type,return-value]
        refit_every=timedelta(hours=1),
        recent=timedelta(hours=1),
        reactive_margin=1.25,
    )


def settle(forecasts: ForecastService) -> None:
    deadline = time.monotonic() + 5
    while forecasts.pending_fits() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not forecasts.pending_fits()


def test_provisional_until_the_first_fit_lands_then_the_model() -> None:
    gate = threading.Event()
    source = Ramp()
    forecasts = service(source, gate=gate)
    first = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW, wait=False)
    # The ramp ends at 1440/s: the latest demand, marked provisional (the planner keeps at
    # least what runs now for it).
    assert first.forecast is not None and first.forecast.provisional
    assert first.forecast.peak == pytest.approx(1440)
    assert "being fitted in the background" in first.fallback
    assert forecasts.fits == 0 and forecasts.pending_fits() == 1
    # Only the last hour was read for it; the fit reads the whole day.
    assert timedelta(hours=1) in source.ranges
    gate.set()
    settle(forecasts)
    later = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW + timedelta(minutes=1), False)
    assert later.forecast is not None and later.forecast.peak == 5000.0
    assert not later.forecast.provisional and later.fallback == "" and forecasts.fits == 1


def test_a_group_fetches_and_predicts_once_a_minute() -> None:
    source = Ramp()
    forecasts = service(source)
    first = forecasts.forecast(("ns", "d0"), spec(), LEAD, NOW)
    fetched = len(source.ranges)  # the fit's history and the forecast's
    for i in range(1, 10):
        again = forecasts.forecast(("ns", f"d{i}"), spec(), LEAD, NOW + timedelta(seconds=30))
        assert again is first
    assert len(source.ranges) == fetched
    later = forecasts.forecast(("ns", "d3"), spec(), LEAD, NOW + timedelta(minutes=1))
    assert later is not first and len(source.ranges) == fetched + 1


def test_a_stale_model_serves_while_it_is_refitted() -> None:
    gate = threading.Event()
    gate.set()
    forecasts = service(Ramp(), gate=gate)
    forecasts.forecast(("ns", "a"), spec(), LEAD, NOW)
    assert forecasts.fits == 1
    gate.clear()
    stale = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW + timedelta(hours=2), False)
    # Not waiting: the old model answered and the refit is queued behind the gate.
    assert stale.forecast is not None and stale.forecast.peak == 5000.0 and not stale.fallback
    assert forecasts.pending_fits() == 1
    gate.set()
    settle(forecasts)
    assert forecasts.fits == 2


def test_a_poor_backtest_is_not_trusted_below_the_reactive_forecast() -> None:
    poor = service(Ramp(), level=100.0, coverage=0.6)
    result = poor.forecast(("ns", "a"), spec(), LEAD, NOW)
    assert result.forecast is not None
    assert result.forecast.peak == pytest.approx(1440 * 1.25)
    assert result.forecast.model.startswith("reactive")
    assert "60%" in result.fallback and "95%" in result.fallback
    # A model whose backtest covers as asked forecasts alone, even below the recent peak.
    good = service(Ramp(), level=100.0, coverage=0.93).forecast(("ns", "a"), spec(), LEAD, NOW)
    assert good.forecast is not None and good.forecast.peak == 100.0 and good.fallback == ""


def test_a_short_history_model_is_not_trusted_below_the_reactive_forecast() -> None:
    def young(lead: int, width: int, q: float) -> Model:
        model = Model(100.0, None, None)
        model.info_ = ForecastInfo(
            "recent-peak", 600, short_history=True, training_span_seconds=36000
        )
        return model

    forecasts = ForecastService(Ramp(), young)  # type: ignore[arg-type]
    result = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW)
    assert result.forecast is not None and result.forecast.peak == pytest.approx(1440 * 1.25)
    assert "history too short to learn seasonality (10 h of it)" in result.fallback
    cond = forecasting_condition([], result, NOW, 1)
    assert (cond.status, cond.reason) == ("False", "ReactiveFallback")


def test_a_round_waits_for_fits_only_when_they_can_finish_in_time() -> None:
    gate = threading.Event()
    forecasts = service(Ramp(), gate=gate)
    for i in range(3):
        forecasts.schedule(("ns", f"d{i}"), spec(f"q{i}"), LEAD, NOW)
    # Three queued fits at the initial guess of 1 s each on one worker cannot finish in 0.5 s:
    # no waiting at all.
    started = time.monotonic()
    forecasts.wait_for_fits(started + 0.5)
    assert time.monotonic() - started < 0.1 and forecasts.pending_fits() == 3
    # With time for them, the round waits until they have landed.
    threading.Timer(0.2, gate.set).start()
    forecasts.wait_for_fits(time.monotonic() + 10)
    assert forecasts.pending_fits() == 0 and forecasts.fits == 3
    result = forecasts.forecast(("ns", "d1"), spec("q1"), LEAD, NOW, wait=False)
    assert result.forecast is not None and result.forecast.peak == 5000.0


def test_a_failed_fit_sizes_reactively_and_says_why() -> None:
    forecasts = service(Ramp(), level=float("nan"))
    result = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW)
    assert result.forecast is not None and result.forecast.provisional
    assert "could not be fitted (singular matrix)" in result.fallback


def test_no_history_means_no_forecast_never_zero() -> None:
    source = Ramp()
    source.fail = True
    result = service(source).forecast(("ns", "a"), spec(), LEAD, NOW, wait=False)
    assert result.forecast is None and "prometheus is down" in result.problem


def test_reactive_peak_ignores_gaps() -> None:
    assert reactive_peak(np.array([1.0, np.nan, 3.0, 2.0]), 1.5) == 4.5
    assert reactive_peak(np.array([np.nan, np.nan]), 1.5) is None


def test_the_forecasting_condition_names_what_sized_the_service() -> None:
    forecasts = service(Ramp(), gate=threading.Event())
    pending = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW, wait=False)
    cond = forecasting_condition([], pending, NOW, 3)
    assert (cond.status, cond.reason) == ("False", "ModelPending")
    assert "holding current capacity" in cond.message
    modelled = service(Ramp()).forecast(("ns", "a"), spec(), LEAD, NOW)
    cond = forecasting_condition([], modelled, NOW, 3)
    assert (cond.status, cond.reason) == ("True", "Forecasting")
    assert "coverage 95.0%" in cond.message
    forecasts.close()


class Daily:
    """A day-periodic demand series (for real fits)."""

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        n = int((end - start).total_seconds() // step_seconds) + 1
        t = np.arange(n)
        noise = np.random.default_rng(0).normal(0, 5, n)
        return Series(start, step_seconds, 100 + 50 * np.sin(2 * np.pi * t / 1440) + noise)


def test_fits_in_a_worker_process_survive_the_worker_being_killed() -> None:
    pool = partial(ProcessPoolExecutor, 1, mp_context=multiprocessing.get_context("spawn"))
    forecasts = ForecastService(Daily(), default_forecaster, fit_pool=pool)
    try:
        first = forecasts.forecast(("ns", "a"), spec("a", "8d"), LEAD, NOW)
        assert first.forecast is not None and first.info is not None and not first.fallback
        worker = forecasts._fit_pool
        assert isinstance(worker, ProcessPoolExecutor)
        for pid in list(worker._processes):  # what the OOM killer would do
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        lost = forecasts.forecast(("ns", "b"), spec("b", "8d"), LEAD, NOW)
        assert lost.forecast is not None and "could not be fitted" in lost.fallback
        # A new worker takes over: the next fit works.
        again = forecasts.forecast(("ns", "c"), spec("c", "8d"), LEAD, NOW)
        assert again.info is not None and not again.fallback
    finally:
        forecasts.close()


def test_a_failed_fetch_is_tried_again_within_the_minute() -> None:
    source = Ramp()
    forecasts = service(source)
    settle_first = forecasts.forecast(("ns", "a"), spec(), LEAD, NOW)  # fitted, served
    assert settle_first.forecast is not None
    source.fail = True
    later = NOW + timedelta(minutes=1)
    down = forecasts.forecast(("ns", "a"), spec(), LEAD, later)
    assert down.forecast is None and "prometheus is down" in down.problem
    source.fail = False  # back, the same minute: the next round uses it at once
    back = forecasts.forecast(("ns", "a"), spec(), LEAD, later + timedelta(seconds=20))
    assert back.forecast is not None
    forecasts.close()

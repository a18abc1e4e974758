"""AutoForecaster's selection: what it scores (the capacity a held forecast gives) and how a
warm-started refit weighs the previous fits' scores.

The candidates here are stand-ins with known forecasts (a scale of the demand, set per day),
so every score is known exactly: on a constant demand of 100 at q = 0.9 a forecast of
``100 × s`` with ``s ≥ 1`` has pinball loss ``0.1 × 100 × (s - 1) = 10 (s - 1)``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np
import pytest
from forecast_data import constant

from peakwise.forecasting import select
from peakwise.forecasting.base import ForecastInfo, IntArray
from peakwise.forecasting.naive import DAY_SECONDS
from peakwise.forecasting.select import AutoForecaster
from peakwise.forecasting.series import FloatArray, Series

Q = 0.9
DAY = 1440


class Scaled:
    """Forecasts ``scale(origin) ×`` the demand last seen at the origin."""

    def __init__(self, name: str, scale: Callable[[int], float]) -> None:
        self.name = name
        self.scale = scale

    def fit(self, series: Series) -> Self:
        self.steps_ = len(series)
        return self

    def predict_peak(
        self,
        series: Series,
        origins: IntArray,
        *,
        lead: int,
        width: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        level = series.values[origins] * np.array([self.scale(int(o)) for o in origins])
        return np.repeat(level[:, None], len(quantiles), axis=1)

    def predict_steps(
        self,
        series: Series,
        origins: IntArray,
        *,
        horizon: int,
        quantiles: Sequence[float],
    ) -> FloatArray:
        peak = self.predict_peak(series, origins, lead=0, width=1, quantiles=quantiles)
        return np.repeat(peak[:, None, :], horizon, axis=1)

    @property
    def info_(self) -> ForecastInfo:
        return ForecastInfo(model=self.name, training_steps=self.steps_)

    def discard_history(self) -> Self:
        return self


@dataclass(frozen=True)
class by_day:  # noqa: N801 (reads as a function in the tests)
    """A scale per day of the origin (the last one for every later day); picklable."""

    scales: tuple[float, ...]

    def __call__(self, origin: int) -> float:
        return self.scales[min(origin // DAY, len(self.scales) - 1)]


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Replace the candidates by ``name=scale-by-origin`` stand-ins."""

    def install(**models: Callable[[int], float]) -> None:
        for name, scale in models.items():
            factory = lambda lead, width, q, name=name, scale=scale: Scaled(name, scale)  # noqa: E731
            monkeypatch.setitem(select.CANDIDATES, name, factory)

    return install


def auto(**params: object) -> AutoForecaster:
    """Validation on exactly the newest day, single models only, lead 1 and width 1."""
    settings: dict[str, object] = {
        "candidates": ("steady", "rival"),
        "lead": 1,
        "width": 1,
        "quantile": Q,
        "validation_fraction": 0.5,
        "max_validation_seconds": DAY_SECONDS,
        "max_blend": 1,
    }
    settings.update(params)
    return AutoForecaster(**settings)  # type: ignore[arg-type]


def chosen(model: AutoForecaster) -> str:
    return model.info_.model


def test_a_warm_refit_keeps_its_choice_when_the_new_day_is_a_near_tie(
    stand_ins: Callable[..., None],
) -> None:
    # steady: loss 1.0 every day. rival: 3.0 on day 2, then 0.95 (a near tie, slightly better).
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.30, 1.30, 1.30, 1.095)))
    demand = constant(4, 100.0)
    warm = auto(warm_start=True).fit(demand.head(3 * DAY))
    assert chosen(warm) == "steady"
    warm.fit(demand)
    # Half the old score is kept after a day: rival 0.5 × 3.0 + 0.5 × 0.95 ≈ 1.98 > 1.0.
    assert chosen(warm) == "steady"
    assert warm.scores_[(1, 1)][("rival",)] == pytest.approx(1.975, abs=0.01)
    # Scored on the new day alone (a cold fit, as before), the choice flips.
    assert chosen(auto().fit(demand)) == "rival"
    assert chosen(auto(warm_start=True).fit(demand)) == "rival"


def test_a_warm_refit_switches_when_a_candidate_is_clearly_better(
    stand_ins: Callable[..., None],
) -> None:
    # rival: loss 1.2 on day 2, then 0 (exact): clearly better at once.
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.12, 1.12, 1.12, 1.0)))
    demand = constant(4, 100.0)
    warm = auto(warm_start=True).fit(demand.head(3 * DAY))
    assert chosen(warm) == "steady"
    assert chosen(warm.fit(demand)) == "rival"  # 0.5 × 1.2 + 0.5 × 0 = 0.6 < 1.0


def test_a_warm_refit_switches_when_a_candidate_stays_better(
    stand_ins: Callable[..., None],
) -> None:
    # rival: loss 3.0 on day 2, then 0.1 every day: kept out one day, chosen the next.
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.30, 1.30, 1.30, 1.01)))
    demand = constant(5, 100.0)
    warm = auto(warm_start=True).fit(demand.head(3 * DAY))
    assert chosen(warm.fit(demand.head(4 * DAY))) == "steady"  # 1.55 > 1.0
    assert chosen(warm.fit(demand)) == "rival"  # 0.5 × 1.55 + 0.5 × 0.1 ≈ 0.83 < 1.0


def test_old_scores_fade_with_the_time_between_fits(stand_ins: Callable[..., None]) -> None:
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.30, 1.30, 1.30, 1.095)))
    demand = constant(4, 100.0)
    # Two days per half-life: the old score keeps 0.5 ** 0.5 of its weight after one day.
    warm = auto(warm_start=True, score_half_life_seconds=2 * DAY_SECONDS)
    warm.fit(demand.head(3 * DAY)).fit(demand)
    kept = 0.5**0.5
    assert warm.scores_[(1, 1)][("rival",)] == pytest.approx(
        kept * 3.0 + (1 - kept) * 0.95, abs=0.01
    )


def test_warm_start_never_carries_scores_back_in_time_or_across_settings(
    stand_ins: Callable[..., None],
) -> None:
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.30, 1.30, 1.30, 1.095)))
    demand = constant(4, 100.0)
    cold = auto().fit(demand.head(3 * DAY)).scores_
    # Fitted on four days, then on a history that ends earlier: scored afresh, as if cold.
    warm = auto(warm_start=True).fit(demand).fit(demand.head(3 * DAY))
    assert warm.scores_ == cold
    # Another quantile: other scores, not blended with the old ones.
    warm = auto(warm_start=True).fit(demand.head(3 * DAY)).set_params(quantile=0.8)
    assert warm.fit(demand).scores_ == auto(quantile=0.8).fit(demand).scores_


def test_the_operator_can_refit_a_pickled_model_without_its_history(
    stand_ins: Callable[..., None],
) -> None:
    stand_ins(steady=by_day((1.10,)), rival=by_day((1.30, 1.30, 1.30, 1.095)))
    demand = constant(4, 100.0)
    kept = auto(warm_start=True).fit(demand.head(3 * DAY)).discard_history()
    # The operator fits in a worker process: the model travels pickled and comes back fitted.
    refitted = pickle.loads(pickle.dumps(kept)).fit(demand)
    assert chosen(refitted) == "steady"  # the near tie of the first test, warm
    assert refitted.scores_until_ == demand.time_at(len(demand))


def test_candidates_are_scored_on_the_capacity_a_held_forecast_gives(
    stand_ins: Callable[..., None],
) -> None:
    # jumpy: 1.05 then 0.5 on alternate origins; steady: 1.10 on every origin. Forecast by
    # forecast the dips cost jumpy most (loss 22.75 against 1.0), but the planner keeps each
    # target until its window has passed (lead + width = 2 origins here), so the capacity
    # that follows jumpy is 105 throughout (loss 0.5).
    stand_ins(steady=by_day((1.10,)), jumpy=lambda o: 1.05 if o % 2 == 0 else 0.5)
    demand = constant(3, 100.0)
    held = auto(candidates=("steady", "jumpy")).fit(demand)
    assert chosen(held) == "jumpy"
    assert held.scores_[(1, 1)][("jumpy",)] == pytest.approx(0.5, abs=0.01)
    assert chosen(auto(candidates=("steady", "jumpy"), hold=1).fit(demand)) == "steady"
    with pytest.raises(ValueError, match="hold"):
        auto(candidates=("steady",), hold=0).fit(demand)


def test_blends_keep_their_scores_when_the_ranking_changes(
    stand_ins: Callable[..., None],
) -> None:
    # The two swap places from one day to the next; their blend is one option throughout.
    stand_ins(a=by_day((1.10, 1.10, 1.10, 1.20)), b=by_day((1.20, 1.20, 1.20, 1.10)))
    demand = constant(4, 100.0)
    warm = auto(candidates=("a", "b"), max_blend=2, warm_start=True).fit(demand.head(3 * DAY))
    first = warm.scores_[(1, 1)][("a", "b")]
    second = warm.fit(demand).scores_[(1, 1)][("a", "b")]
    assert set(warm.scores_[(1, 1)]) == {("a",), ("b",), ("a", "b")}
    # Day 2's blend weighs a (loss 1.0) 2:1 over b (2.0): forecast 1.133, loss 1.33; day 3
    # weighs the smoothed 1.5 and 1.5 equally: 1.15, loss 1.5; the score keeps half of each.
    assert first == pytest.approx(1.33, abs=0.01)
    assert second == pytest.approx(0.5 * 1.33 + 0.5 * 1.5, abs=0.01)

"""The compact residual quantiles behind every calibration: exact on the grid, conservative
between grid points, small whatever the history."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from peakwise.forecasting.calibration import (
    QUANTILE_GRID,
    ConformalQuantiles,
    RatioCalibration,
    ScaledCalibration,
)

# A 14-day minute series calibrates on about this many residuals.
FOURTEEN_DAYS = 20_160


def residuals(size: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(0.0, 0.4, size)


@pytest.mark.parametrize("size", [FOURTEEN_DAYS, QUANTILE_GRID + 2, 5_003])
def test_quantiles_with_three_decimals_match_the_full_sample(size: int) -> None:
    sample = residuals(size)
    table = ConformalQuantiles.of(sample)
    assert table.pairs == size
    assert table.table.shape[0] == QUANTILE_GRID + 1
    for level in (0.001, 0.05, 0.5, 0.9, 0.95, 0.98, 0.985, 0.988, 0.99, 0.995, 0.999):
        assert table.quantile(level) == np.quantile(sample, level, method="higher"), level


def test_between_grid_points_the_next_one_up_is_used() -> None:
    sample = residuals(FOURTEEN_DAYS)
    table = ConformalQuantiles.of(sample)
    for level in (0.9505, 0.98751, 0.99912):
        exact = float(np.quantile(sample, level, method="higher"))
        above = float(np.quantile(sample, min(level + 1 / QUANTILE_GRID, 1.0), method="higher"))
        assert exact <= table.quantile(level) <= above


def test_small_samples_are_kept_whole_and_exact() -> None:
    sample = residuals(300)
    table = ConformalQuantiles.of(sample)
    assert np.array_equal(table.table, np.sort(sample))
    for level in (0.5, 0.9873, 0.99):
        assert table.quantile(level) == np.quantile(sample, level, method="higher")


def test_an_empty_sample_has_no_quantile() -> None:
    table = ConformalQuantiles.of(np.empty(0))
    assert table.pairs == 0
    with pytest.raises(ValueError, match="no residuals"):
        table.quantile(0.9)


def test_calibrations_stay_small_with_a_long_history() -> None:
    actual = residuals(FOURTEEN_DAYS, seed=1) * 100
    base = residuals(FOURTEEN_DAYS, seed=2) * 100
    ratio = RatioCalibration.from_pairs(actual, base, floor=1.0)
    scaled = ScaledCalibration.from_pairs(actual, base, np.full(FOURTEEN_DAYS, 10.0))
    assert ratio.pairs == scaled.pairs == FOURTEEN_DAYS
    # The whole sample would pickle to 160 kB; the table is an eighth of a tenth of that.
    assert len(pickle.dumps(ratio)) < 10_000
    assert len(pickle.dumps(scaled)) < 10_000
    exact = np.quantile(actual / base, 0.99, method="higher")
    assert ratio.margin(0.99) == exact

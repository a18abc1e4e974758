"""Vectorised rolling-window helpers over series with gaps (NaN), shared by the estimators.

Every helper is causal where its name says "trailing": ``out[j]`` depends only on
``values[: j + 1]``, which is what keeps forecasts free of lookahead.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter1d

from peakwise.forecasting.base import IntArray
from peakwise.forecasting.series import FloatArray


def trailing_max(values: FloatArray, width: int) -> FloatArray:
    """``out[j] = max(values[max(0, j - width + 1) : j + 1])`` ignoring gaps; NaN if none known.

    The first ``width - 1`` entries use the shorter prefix, so a brand-new series has a level.
    """
    if values.shape[0] == 0:
        return np.empty(0)
    filled = np.where(np.isnan(values), -np.inf, values)
    # maximum_filter1d is O(n) whatever the width; this origin makes the window end at j.
    out = maximum_filter1d(
        filled, size=width, mode="constant", cval=-np.inf, origin=(width - 1) // 2
    )
    result: FloatArray = np.where(np.isneginf(out), np.nan, out)
    return result


def recent_range(values: FloatArray, window: int) -> FloatArray:
    """Highest minus lowest known value over the last ``window`` steps (0 where none known)."""
    spread = trailing_max(values, window) + trailing_max(-values, window)
    out: FloatArray = np.nan_to_num(spread, nan=0.0)
    return out


def trailing_mean(values: FloatArray, width: int) -> FloatArray:
    """``out[j] = mean(values[max(0, j - width + 1) : j + 1])`` ignoring gaps; NaN without data."""
    known = ~np.isnan(values)
    sums = np.concatenate(([0.0], np.cumsum(np.where(known, values, 0.0))))
    counts = np.concatenate(([0], np.cumsum(known)))
    idx = np.arange(values.shape[0]) + 1
    lo = np.maximum(idx - width, 0)
    total, count = sums[idx] - sums[lo], counts[idx] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        result: FloatArray = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return result


def trailing_gap_fraction(values: FloatArray, width: int) -> FloatArray:
    """Share of gaps among the last ``width`` steps (over the available prefix)."""
    gaps = np.isnan(values).astype(np.float64)
    return trailing_mean(gaps, width)


def last_known(values: FloatArray) -> FloatArray:
    """Each step's most recent known value (forward fill); NaN before the first known value."""
    known = ~np.isnan(values)
    idx = np.where(known, np.arange(values.shape[0]), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.full(values.shape[0], np.nan)
    has = idx >= 0
    out[has] = values[idx[has]]
    return out


def recent_peak_base(values: FloatArray, origins: IntArray, window: int) -> FloatArray:
    """Highest known value over the last ``window`` steps, else the last known value at all."""
    recent = trailing_max(values, window)[origins]
    return np.where(np.isnan(recent), last_known(values)[origins], recent)


def window_peak_targets(values: FloatArray, lead: int, width: int) -> FloatArray:
    """``out[o]`` = the actual window peak for origin ``o`` (NaN when unknown or off the end).

    This is ``max(values[o + lead + 1 : o + lead + width + 1])``: it looks ahead by design and
    is only used as the training/evaluation target, never as a feature.
    """
    n = values.shape[0]
    out = np.full(n, np.nan)
    first_unknown = n - lead - width  # origins from here have a window past the end
    if first_unknown <= 0:
        return out
    # trailing_max at the window's last step is the window maximum.
    window_max = trailing_max(values, width)
    out[:first_unknown] = window_max[lead + width : n]
    return out


def step_targets(values: FloatArray, origins: IntArray, horizon: int) -> FloatArray:
    """``out[i, h - 1] = values[origins[i] + h]`` for ``h = 1 … horizon`` (NaN off the end).

    The per-step target: it looks ahead by design, for training and evaluation only.
    """
    index = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    inside = index < values.shape[0]
    out = np.full(index.shape, np.nan)
    out[inside] = values[index[inside]]
    return out


def recent_peak_path(
    values: FloatArray, origins: IntArray, window: int, horizon: int
) -> FloatArray:
    """The recent peak held flat over the horizon, shape ``(len(origins), horizon)``."""
    return np.repeat(recent_peak_base(values, origins, window)[:, None], horizon, axis=1)


def lagged(values: FloatArray, lag: int) -> FloatArray:
    """``out[j] = values[j - lag]`` (NaN where that is before the start)."""
    out = np.full(values.shape[0], np.nan)
    if lag < values.shape[0]:
        out[lag:] = values[: values.shape[0] - lag]
    return out


def valid_origins(origins: IntArray, length: int) -> None:
    """Raise when an origin is outside the series it is meant to index."""
    if origins.size and (int(origins.min()) < 0 or int(origins.max()) >= length):
        raise ValueError(f"origins must index the series (0 ≤ origin < {length})")


def known_until(values: FloatArray, origins: IntArray) -> FloatArray:
    """The values up to the last origin, as float64: nothing later can leak into a forecast."""
    return np.asarray(values[: int(origins.max()) + 1], dtype=np.float64)

"""Synthetic demand series for the forecasting tests, and where the shared traces live."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from shared_traces import SERVEGEN, TRACES

from peakwise.forecasting.series import Series

START = datetime(2024, 1, 1, tzinfo=UTC)
__all__ = ["SERVEGEN", "START", "TRACES", "constant", "daily_demand"]


def daily_demand(days: float, seed: int = 0, level: float = 100.0) -> Series:
    """Per-minute demand with a daily cycle, 10-minute steps of noise and a slow drift."""
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    minutes = np.arange(n)
    cycle = 1.0 + 0.5 * np.sin(2 * np.pi * (minutes % 1440) / 1440)
    drift = 1.0 + 0.1 * minutes / max(n, 1)
    noise = np.repeat(rng.lognormal(0.0, 0.15, size=n // 10 + 1), 10)[:n]
    return Series(START, 60, level * cycle * drift * noise)


def constant(days: float, value: float) -> Series:
    return Series(START, 60, np.full(int(days * 1440), value))

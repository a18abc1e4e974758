"""A regular time series with gaps, the one input every estimator takes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Series:
    """Values sampled every `step_seconds` from `start`; NaN marks a gap (missing, not zero).

    Demand is in the service's own units per second (requests/s, tokens/s).
    """

    start: datetime
    step_seconds: int
    values: FloatArray

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("Series.start must be timezone-aware (UTC)")
        if self.step_seconds <= 0:
            raise ValueError(f"Series.step_seconds must be positive, got {self.step_seconds}")
        if self.values.ndim != 1:
            raise ValueError("Series.values must be one-dimensional")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def time_at(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index * self.step_seconds)

    def steps(self, duration: timedelta) -> int:
        """How many whole steps `duration` spans (at least one)."""
        return max(1, round(duration.total_seconds() / self.step_seconds))

    def frozen(self) -> Series:
        """This series with read-only float64 values, copied only if they are not already.

        Estimators keep their training history; the models a selection fits on one history
        then share one array instead of a copy each (at scale that is most of their memory).
        """
        values = self.values
        if values.dtype != np.float64 or values.flags.writeable:
            values = np.array(values, dtype=np.float64)
            values.setflags(write=False)
        return Series(self.start, self.step_seconds, values)

    def head(self, length: int) -> Series:
        """The first `length` steps: what was known at index `length - 1`."""
        return Series(self.start, self.step_seconds, self.values[:length])

"""The operator's demand history source: range queries against Prometheus, one step a minute.

Provisional: a direct prometheus-api-client call, to be replaced by the forecasting
package's incremental, chunked adapter.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from prometheus_api_client import PrometheusConnect

from peakwise.forecasting.series import Series

MAX_POINTS = 10_000  # Prometheus answers at most 11,000 points per series


class PrometheusHistorySource:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.client = PrometheusConnect(url=url, disable_ssl=True)
        self.timeout = timeout

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        steps = int((end - start).total_seconds() // step_seconds) + 1
        values = np.full(steps, np.nan)
        chunk = timedelta(seconds=step_seconds * MAX_POINTS)
        lo = start
        while lo <= end:
            hi = min(end, lo + chunk - timedelta(seconds=step_seconds))
            result = self.client.custom_query_range(
                query,
                start_time=lo,
                end_time=hi,
                step=str(step_seconds),
                params={"timeout": f"{int(self.timeout)}s"},
            )
            if len(result) > 1:
                raise ValueError(f"the demand query returned {len(result)} series; sum them")
            for stamp, value in result[0]["values"] if result else []:
                index = round((float(stamp) - start.timestamp()) / step_seconds)
                if 0 <= index < steps:
                    values[index] = float(value)
            lo = hi + timedelta(seconds=step_seconds)
        return Series(start, step_seconds, values)

"""The operator's commitment advice, streamed service by service, is the advice the backtest
gives from the whole fleet's history held at once (``fleet_advice`` on aligned histories).

The history source here is in-process (the adapter's grid: every step of [start, end], NaN
where there is no sample); the real Prometheus and API server check the same in
tests/e2e/test_fleet_backtest.py::test_the_operator_writes_the_advice_into_pool_status.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.backtest.fleet import Fleet, FleetOptions, align, fleet_advice, key_of
from peakwise.forecasting.series import Series
from peakwise.operator.advice import HISTORY, advice_status, compute_advice
from peakwise.operator.controller import parse_all
from peakwise.operator.indexes import Snapshot
from peakwise.operator.status import wire
from peakwise.trace import synthesize_family

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"
NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
FAILING = "support/summarizer"
LATE = "search/embedder"


class TraceSource:
    """Each demand query's synthetic history on the adapter's grid; one query fails."""

    def __init__(self, queries: list[str], failing: str) -> None:
        self.start = NOW.replace(second=0) - timedelta(days=15)
        self.values: dict[str, np.ndarray] = {}
        for i, query in enumerate(queries):
            family = ["weekly", "spikes", "growth", "level-shift"][i % 4]
            table = synthesize_family(family, 16, seed=i + 1, peak_requests_per_minute=900.0)
            self.values[query] = table.requests / 60.0
        self.failing = failing
        self.fetches = 0

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        self.fetches += 1
        if query == self.failing:
            raise RuntimeError("Prometheus refused the query")
        at = round((start - self.start).total_seconds() / 60)
        steps = round((end - start).total_seconds() / 60) + 1
        return Series(start, step_seconds, self.values[query][at : at + steps].copy())


def _snapshot() -> tuple[Snapshot, dict[str, str]]:
    deployments: dict[tuple[str, str], Any] = {}
    pools: dict[str, Any] = {}
    for path in sorted(EXAMPLE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "InferenceDeployment":
                deployments[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
            elif doc and doc["kind"] == "GPUNodePool":
                pools[doc["metadata"]["name"]] = doc
    # The example prices commitments of H100s only; a 1-year L40S price advises on both.
    pools["l40s-on-demand"]["metadata"].setdefault("annotations", {})[
        "peakwise.dev/reserved-price-1y"
    ] = "6.1"
    queries = {f"{k[0]}/{k[1]}": d["spec"]["demand"]["query"] for k, d in deployments.items()}
    snapshot = Snapshot(
        deployments=deployments, pools=pools, budgets={}, children={}, pool_nodes={}
    )
    return snapshot, queries


def _held_at_once(source: TraceSource, snapshot: Snapshot, gpu_type: str) -> dict[str, Any]:
    """The advice as the operator computed it before: every service's history fetched and
    held, then ``fleet_advice`` on the fleet (as ``peakwise advise`` does)."""
    deployments, pools, _, _ = parse_all(snapshot)
    end = NOW.replace(second=0)
    demand = {}
    kept: list[InferenceDeployment] = []
    for infd in deployments.values():
        try:
            demand[key_of(infd)] = source.fetch(infd.spec.demand.query, end - HISTORY, end, 60)
        except RuntimeError:
            continue
        kept.append(infd)
    _, _, aligned = align(demand)
    fleet = Fleet(tuple(pools.values()), tuple(sorted(kept, key=key_of)))
    (found,), problems = fleet_advice(fleet, aligned, FleetOptions(advice_gpu_types=(gpu_type,)))
    assert problems == []
    return wire(advice_status(found, NOW))


@pytest.mark.parametrize("gpu_type", ["nvidia-h100-80gb", "nvidia-l40s-48gb"])
def test_the_streamed_advice_is_the_advice_from_the_whole_history(gpu_type: str) -> None:
    snapshot, queries = _snapshot()
    source = TraceSource(list(queries.values()), failing=queries[FAILING])
    # One service's history starts two days into the window (NaN before, as the adapter
    # gives it): held at once or streamed, it is on the same grid.
    late = queries[LATE]
    source.values[late][: 3 * 1440] = np.nan
    streamed = wire(compute_advice(source, gpu_type, snapshot, NOW))
    expected = _held_at_once(source, snapshot, gpu_type)
    assert streamed["recommendedNodes"] == expected["recommendedNodes"]
    assert streamed["terms"] == expected["terms"]
    assert streamed["curve"] == expected["curve"]
    assert streamed["monthlyCost"] == expected["monthlyCost"]
    assert streamed["message"] == expected["message"]
    left_out = [a for a in streamed["assumptions"] if a.startswith("left out")]
    assert [a for a in streamed["assumptions"] if a not in left_out] == expected["assumptions"]
    # The summarizer counts on L40S (its cheapest on-demand way to serve its demand).
    if gpu_type == "nvidia-l40s-48gb":
        # Named in the assumptions, left out of the advice; the others still advised on.
        assert left_out == [f"left out: {FAILING} (Prometheus refused the query)"]
    else:
        assert left_out == []
    # H100: the chat services and the helpdesk; L40S: search's two (the summarizer failed).
    services = 3 if gpu_type == "nvidia-h100-80gb" else 2
    assert f"of {services} service(s)'" in streamed["assumptions"][0]
    assert streamed["terms"] and streamed["curve"]  # advised on, not "no advice"


def test_a_type_no_service_counts_on_gets_no_advice_and_fetches_nothing() -> None:
    snapshot, queries = _snapshot()
    source = TraceSource(list(queries.values()), failing="")
    advice = compute_advice(source, "nvidia-a100-80gb", snapshot, NOW)
    assert advice.message == "no advice: no service with demand history runs on this GPU type"
    assert advice.terms == []
    assert source.fetches == 0

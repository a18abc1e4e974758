"""Status is written only when it changes; informational fields wait for the heartbeat; and
every key written is one the CRD defines (the API server drops unknown ones silently)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from test_children import DEPLOYMENTS, POOLS

from peakwise.api.costbudget import CostBudget
from peakwise.forecasting.base import ForecastInfo
from peakwise.operator.forecasts import ForecastResult
from peakwise.operator.handlers import write_status
from peakwise.operator.planning import Observed, plan_input
from peakwise.operator.status import (
    PoolObservation,
    PoolScaling,
    budget_status,
    deployment_status,
    pool_status,
    wire,
)
from peakwise.planner import DemandForecast, plan

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
CRDS = Path(__file__).resolve().parents[2] / "crds"
HEARTBEAT = timedelta(minutes=5)


def _status_of(peak: float, now: datetime = NOW, stale: str = "") -> dict[str, Any]:
    infd = DEPLOYMENTS["assistant"]
    key = ("chat", "assistant")
    info = ForecastInfo("nowcast", 100, backtest_loss=1.5, coverage=0.96, quantile=0.95)
    result = ForecastResult(
        DemandForecast(peak, 0.95, peak_at=now + timedelta(minutes=7), model="nowcast"),
        info,
        peak,
        stale=stale,
    )
    observed = Observed(
        now=now,
        deployments=[infd],
        pools=list(POOLS.values()),
        budgets=[],
        forecasts={key: result},
    )
    planned = plan(plan_input(observed))
    return wire(
        deployment_status(
            infd,
            planned.deployments[key],
            planned.namespaces["chat"],
            result,
            {"h100-reserved": 1},
            POOLS,
            now,
            lead=timedelta(minutes=7),
        )
    )


def _write(
    status: dict[str, Any], live: dict[str, Any] | None, now: datetime = NOW
) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    body = {"status": live} if live is not None else {}
    write_status(patch, body, status, "InferenceDeployment", now, HEARTBEAT)  # type: ignore[arg-type]
    return patch


def test_a_field_that_became_unknown_is_removed_not_left_as_it_was() -> None:
    status = _status_of(400.0)
    live = {**status, "slo": {**status["slo"], "achievedShortfall": "1.2%"}, "kopf": {"x": 1}}
    live["replicas"] = status["replicas"] + 1  # a decision changed: written at once
    written = _write(status, live)["status"]
    assert written["slo"]["achievedShortfall"] is None  # a merge patch's null removes it
    assert {k: v for k, v in written["slo"].items() if v is not None} == status["slo"]
    assert "kopf" not in written  # top-level fields the operator does not write stay
    assert written["replicas"] == status["replicas"]


def test_a_first_status_is_written() -> None:
    status = _status_of(400.0)
    assert _write(status, None) == {"status": status}


def test_an_unchanged_plan_writes_nothing_until_the_heartbeat() -> None:
    first = _status_of(400.0)
    # A minute later: a slightly different forecast, the same replicas.
    later = NOW + timedelta(minutes=1)
    again = _status_of(401.0, later)
    assert again["desiredReplicas"] == first["desiredReplicas"]
    assert again["forecast"] != first["forecast"]
    assert _write(again, first, later) == {}
    # Once the last write is a heartbeat old, the fresh forecast is written.
    due = NOW + HEARTBEAT
    assert _write(_status_of(401.0, due), first, due) != {}


def test_a_changed_decision_is_written_at_once() -> None:
    first = _status_of(400.0)
    later = NOW + timedelta(minutes=1)
    more = _status_of(4000.0, later)
    assert more["desiredReplicas"] > first["desiredReplicas"]
    assert _write(more, first, later) == {"status": more}


def test_a_round_later_the_same_plan_is_the_same_decision() -> None:
    """The builder itself: another clock and another forecast give the same decision fields;
    only informational ones (time, forecast, targets) differ, and nothing is patched."""
    first = _status_of(400.0)
    later = NOW + timedelta(seconds=31)
    again = _status_of(400.4, later)
    informational = {"lastPlanTime", "forecast", "recentTargets", "slo"}
    assert {k for k in first if first[k] != again.get(k)} <= informational | {"conditions"}

    def judged(status: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(c["type"], c["status"], c["reason"]) for c in status["conditions"]]

    assert judged(again) == judged(first)
    assert again["forecast"] != first["forecast"]  # something did move
    assert _write(again, first, later) == {}


def test_a_changed_condition_is_written_in_the_same_round() -> None:
    first = _status_of(400.0)
    later = NOW + timedelta(seconds=31)
    stale = _status_of(400.0, later, stale="refits have failed for 13h")
    assert stale["desiredReplicas"] == first["desiredReplicas"]
    reasons = {c["type"]: c["reason"] for c in stale["conditions"]}
    assert reasons["Forecasting"] == "ModelStale"
    assert _write(stale, first, later) == {"status": stale}


def test_keys_the_live_status_has_and_we_do_not_write_do_not_force_a_write() -> None:
    first = _status_of(400.0)
    live = {**first, "legacyField": 1}
    later = NOW + timedelta(minutes=1)
    assert _write(_status_of(400.0, later), live, later) == {}


def _status_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"peakwise.dev_{kind}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["status"])


def _undefined(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Keys of `value` that `schema` does not define, recursively."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props = schema.get("properties", {})
        out = []
        for k, v in value.items():
            if k not in props:
                out.append(f"{path}.{k}")
            else:
                out += _undefined(v, props[k], f"{path}.{k}")
        return out
    if isinstance(value, list):
        items = schema["items"]
        return [m for i, v in enumerate(value) for m in _undefined(v, items, f"{path}[{i}]")]
    return []


def test_every_key_written_is_defined_by_the_crds() -> None:
    infd = _status_of(400.0)
    pool = POOLS["l40s-spot"]
    scaling = PoolScaling(3, asked=True, error="denied", error_reason="Forbidden")
    observed = PoolObservation(nodes=2, ready_nodes=1, allocatable_gpus=8)
    pool_written = wire(pool_status(pool, observed, scaling, 1, timedelta(seconds=30), NOW))
    budget = CostBudget.model_validate(
        {
            "apiVersion": "peakwise.dev/v1alpha1",
            "kind": "CostBudget",
            "metadata": {"name": "b", "namespace": "chat"},
            "spec": {"limits": {"hourly": 100, "monthly": 1000}},
        }
    )
    budget_written = wire(budget_status(budget, 90.0, NOW, None))
    # Every field is there to be checked: nothing was left out as None.
    assert {"forecast", "cost", "pools", "recentTargets", "conditions"} <= infd.keys()
    assert "lastInterruptionTime" in pool_written and "hourlyHeadroom" in budget_written
    undefined = (
        _undefined(infd, _status_schema("inferencedeployments"), "status")
        + _undefined(pool_written, _status_schema("gpunodepools"), "status")
        + _undefined(budget_written, _status_schema("costbudgets"), "status")
    )
    assert undefined == []


def test_the_check_finds_an_undefined_key() -> None:
    schema = _status_schema("inferencedeployments")
    assert _undefined({"forecast": {"peek": 1}}, schema, "status") == ["status.forecast.peek"]


def test_the_shortfall_target_and_what_was_achieved_are_in_status() -> None:
    from peakwise.forecasting.base import CalibrationInfo

    calibration = CalibrationInfo(
        target=0.005,
        mode="forecast",
        margin="q0.987",
        quantile=0.987,
        headroom=None,
        replayed_shortfall=0.004,
        calibration_seconds=7 * 86400,
        achieved_shortfall=0.0042,
        achieved_seconds=7 * 86400,
        censored_minutes=3,
    )
    info = ForecastInfo("nowcast", 100, calibration=calibration)
    result = ForecastResult(DemandForecast(400.0, 0.987, model="nowcast"), info, 400.0)
    infd = DEPLOYMENTS["assistant"]
    observed = Observed(
        now=NOW,
        deployments=[infd],
        pools=list(POOLS.values()),
        budgets=[],
        forecasts={("chat", "assistant"): result},
    )
    planned = plan(plan_input(observed)).deployments[("chat", "assistant")]
    status = wire(deployment_status(infd, planned, None, result, {}, POOLS, NOW))
    assert status["slo"] == {
        "shortfallTarget": "0.5%",
        "achievedShortfall": "0.42%",
        "achievedWindow": "7d",
        "margin": "q0.987",
        "mode": "Forecast",
        "censoredMinutes": 3,
        "quantilesByTimeOfDay": [],
    }


def test_the_time_of_day_margins_are_in_status_and_stay_until_a_refit() -> None:
    from peakwise.forecasting.base import CalibrationInfo

    calibration = CalibrationInfo(
        target=0.005,
        mode="forecast",
        margin="q0.2–q0.3 by time of day",
        quantile=0.3,
        headroom=None,
        replayed_shortfall=0.004,
        calibration_seconds=7 * 86400,
        achieved_shortfall=None,
        achieved_seconds=0.0,
        censored_minutes=0,
        quantiles_by_time_of_day=(0.2, 0.3, 0.25, 0.2),
    )
    info = ForecastInfo("nowcast", 100, calibration=calibration)
    infd = DEPLOYMENTS["assistant"]

    def slo_at(now: datetime, peak: float) -> Any:
        result = ForecastResult(DemandForecast(peak, 0.3, model="nowcast"), info, peak)
        observed = Observed(
            now=now,
            deployments=[infd],
            pools=list(POOLS.values()),
            budgets=[],
            forecasts={("chat", "assistant"): result},
        )
        planned = plan(plan_input(observed)).deployments[("chat", "assistant")]
        return wire(deployment_status(infd, planned, None, result, {}, POOLS, now))["slo"]

    slo = slo_at(NOW, 400.0)
    assert slo["margin"] == "q0.2–q0.3 by time of day"
    assert slo["quantilesByTimeOfDay"] == [
        {"start": "00:00", "quantile": 0.2},
        {"start": "06:00", "quantile": 0.3},
        {"start": "12:00", "quantile": 0.25},
        {"start": "18:00", "quantile": 0.2},
    ]
    # Another round with the same model: a later clock and another forecast, the same margins.
    assert slo_at(NOW + timedelta(seconds=31), 410.0) == slo

"""One object that cannot be planned never stops the round for the others."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from test_forecast_fallback import Ramp, service

from peakwise.operator.controller import Controller
from peakwise.operator.indexes import Snapshot

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)

POOL = {
    "apiVersion": "peakwise.dev/v1alpha1",
    "kind": "GPUNodePool",
    "metadata": {"name": "od", "uid": "p1", "generation": 1},
    "spec": {
        "gpuType": "g",
        "gpusPerNode": 4,
        "capacityType": "onDemand",
        "pricePerNodeHour": 10,
        "maxNodes": 10,
        "provider": {"kwok": {}},
    },
}


def _deployment(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "peakwise.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": "team", "uid": f"u-{name}", "generation": 1},
        "spec": {
            "mode": "Enforce",
            "template": {"spec": {"containers": [{"name": "s", "image": "s:1"}]}},
            "gpuProfiles": [{"gpuType": "g", "throughputPerReplica": 4}],
            "demand": {"query": "demand"},
            "replicas": {"min": 1, "max": 8},
            "forecast": {"history": "1d"},
        },
    }
    body["spec"].update(spec)
    return body


def _round(*bodies: dict[str, Any], pools: tuple[dict[str, Any], ...] = (POOL,)) -> Any:
    controller = Controller(
        service(Ramp(), level=10.0), timedelta(seconds=30), lambda: NOW, fit_wait=timedelta(0)
    )
    snapshot = Snapshot(
        deployments={("team", b["metadata"]["name"]): b for b in bodies},
        pools={p["metadata"]["name"]: p for p in pools},
        budgets={},
        children={},
        pool_nodes={},
    )

    async def run() -> Any:
        return await controller.round(lambda: snapshot)

    try:
        return asyncio.run(run())
    finally:
        controller.forecasts.close()


def test_hostile_durations_are_left_out_and_the_rest_is_planned() -> None:
    good = _deployment("good")
    far_lead = _deployment("far-lead", forecast={"history": "1d", "leadTime": "3650000d"})
    huge_load = _deployment("huge-load", modelLoadTime="1000000000d")
    broken = _deployment("broken")
    del broken["spec"]["gpuProfiles"]
    round_ = _round(good, far_lead, huge_load, broken)
    assert round_.plan.deployments[("team", "good")].total >= 1
    left_out = {name.split("/")[-1]: why for name, why in round_.invalid.items()}
    assert set(left_out) >= {"huge-load", "broken"}
    assert "gpuProfiles" in left_out["broken"]
    assert "out of range" in left_out["huge-load"] or "modelLoadTime" in left_out["huge-load"]
    # The far lead time is either refused or planned without its forecast: never a crash.
    assert "far-lead" in left_out or ("team", "far-lead") in round_.plan.deployments


def test_an_invalid_pool_is_left_out_and_the_others_serve() -> None:
    bad_pool = copy.deepcopy(POOL)
    bad_pool["metadata"]["name"] = "bad"
    bad_pool["spec"]["maxNodes"] = -1
    round_ = _round(_deployment("good"), pools=(POOL, bad_pool))
    assert "GPUNodePool bad" in round_.invalid
    assert round_.plan.deployments[("team", "good")].replicas.get("od", 0) >= 1

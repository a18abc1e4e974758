"""One object that cannot be planned never stops the round for the others."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import manifests
from test_forecast_fallback import Ramp, service

from peakwise.forecasting.series import Series
from peakwise.operator.controller import Controller
from peakwise.operator.indexes import Snapshot
from peakwise.operator.metrics import REGISTRY

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)

POOL = manifests.pool("od")
POOL["metadata"].update(uid="p1", generation=1)


def _deployment(name: str, **spec: Any) -> dict[str, Any]:
    body = manifests.deployment(name, "team", replicas={"min": 1, "max": 8}, **spec)
    body["metadata"].update(uid=f"u-{name}", generation=1)
    return body


class SlowFor(Ramp):
    """A Prometheus that takes `seconds` to answer one query (until `release` is set)."""

    def __init__(self, query: str, seconds: float) -> None:
        super().__init__()
        self.query, self.seconds = query, seconds
        self.release = threading.Event()

    def fetch(self, query: str, start: datetime, end: datetime, step_seconds: int) -> Series:
        if query == self.query:
            self.release.wait(self.seconds)
        return super().fetch(query, start, end, step_seconds)


def _round(
    *bodies: dict[str, Any],
    pools: tuple[dict[str, Any], ...] = (POOL,),
    source: Ramp | None = None,
    deadline: timedelta | None = None,
) -> Any:
    controller = Controller(
        service(source or Ramp(), level=10.0),
        timedelta(seconds=30),
        lambda: NOW,
        fit_wait=timedelta(0),
        forecast_deadline=deadline,
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
        controller.close()
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


def test_a_slow_query_holds_its_own_capacity_and_the_round_goes_on() -> None:
    slow = SlowFor("slow-demand", seconds=30)
    started = time.monotonic()
    try:
        round_ = _round(
            _deployment("good"),
            _deployment("slow", demand={"query": "slow-demand"}),
            source=slow,
            deadline=timedelta(seconds=1),
        )
    finally:
        slow.release.set()
    assert time.monotonic() - started < 10
    assert round_.plan.deployments[("team", "good")].total >= 1
    late = round_.forecasts[("team", "slow")]
    assert late.forecast is None and "holding capacity" in late.problem
    held = round_.plan.deployments[("team", "slow")]
    assert any("no usable forecast" in r for r in held.reasons)


def test_a_round_is_complete_once_every_deployment_followed_it_or_a_later_one() -> None:
    controller = Controller(service(Ramp()), timedelta(seconds=30), lambda: NOW)
    keys = {("t", "a"): None, ("t", "b"): None}
    # reported() reads only these fields of a round.
    rounds = [
        SimpleNamespace(number=n, deployments=keys, invalid={}, started=time.monotonic())
        for n in (1, 2)
    ]
    try:
        before = _observations()
        controller.reported(rounds[0], ("t", "a"))  # type: ignore[arg-type]
        assert _observations() == before  # b has not followed round 1 yet
        # b's timer comes late and follows round 2 straight away: round 1 is done.
        controller.reported(rounds[1], ("t", "b"))  # type: ignore[arg-type]
        assert _observations() == before + 1
        controller.reported(rounds[1], ("t", "a"))  # type: ignore[arg-type]
        assert _observations() == before + 2
    finally:
        controller.close()
        controller.forecasts.close()


def _observations() -> float:
    value = REGISTRY.get_sample_value("peakwise_full_round_seconds_count")
    return value or 0.0


def test_each_handler_follows_each_round_once_right_after_it_is_planned() -> None:
    controller = Controller(
        service(Ramp(), level=10.0), timedelta(seconds=0.5), lambda: NOW, fit_wait=timedelta(0)
    )
    body = _deployment("good")
    snapshot = Snapshot(
        deployments={("team", "good"): body},
        pools={"od": POOL},
        budgets={},
        children={},
        pool_nodes={},
    )

    async def run() -> tuple[list[int], int]:
        key = ("team", "good")
        first = await controller.round(lambda: snapshot, key, 1)
        second = await controller.round(lambda: snapshot, key, 1)  # waits for the next
        pool = await controller.round(lambda: snapshot, follower=("GPUNodePool", "od"))
        # A changed object is planned at once, without waiting for the schedule.
        body["metadata"]["generation"] = 2
        changed = await controller.round(lambda: snapshot, key, 2)
        return [first.number, second.number, changed.number], pool.number

    try:
        numbers, pool_round = asyncio.run(run())
    finally:
        controller.close()
        controller.forecasts.close()
    assert numbers == [1, 2, 3]  # one round each time: the schedule's, then the change's
    assert pool_round == numbers[1]  # the pool's first call: the current round, no wait


def test_an_object_missing_from_the_index_gets_a_round_without_planning_forever() -> None:
    controller = Controller(service(Ramp()), timedelta(seconds=30), lambda: NOW)
    empty = Snapshot(deployments={}, pools={}, budgets={}, children={}, pool_nodes={})

    async def run() -> Any:
        # A deleted object's last timer: its key is in no snapshot any more.
        return await asyncio.wait_for(
            controller.round(lambda: empty, ("team", "gone"), 3), timeout=10
        )

    try:
        round_ = asyncio.run(run())
    finally:
        controller.close()
        controller.forecasts.close()
    assert ("team", "gone") not in round_.deployments
    assert round_.number <= 2  # planned once for it, not over and over


def _budget(namespace: str, name: str = "cap", **spec: Any) -> dict[str, Any]:
    body = manifests.budget(namespace, name, hourly=100, **spec)
    body["metadata"]["generation"] = 1
    return body


def _round_with(
    deployments: dict[tuple[str, str], dict[str, Any]],
    budgets: dict[str, tuple[dict[str, Any], ...]],
    children: dict[tuple[str, str], dict[str, int]] | None = None,
) -> Any:
    controller = Controller(
        service(Ramp(), level=10.0), timedelta(seconds=30), lambda: NOW, fit_wait=timedelta(0)
    )
    snapshot = Snapshot(
        deployments=deployments,
        pools={"od": POOL},
        budgets=budgets,
        children=children or {},
        pool_nodes={},
    )

    async def run() -> Any:
        return await controller.round(lambda: snapshot)

    try:
        return asyncio.run(run())
    finally:
        controller.close()
        controller.forecasts.close()


def test_a_namespace_without_a_budget_is_planned_but_nothing_is_scaled() -> None:
    bare = _deployment("bare")
    bare["metadata"]["namespace"] = "nobudget"
    round_ = _round_with(
        {("team", "good"): _deployment("good"), ("nobudget", "bare"): bare},
        {"team": (_budget("team"),)},
        children={("nobudget", "bare"): {"od": 3}},
    )
    assert round_.effective["team"].enforce
    closed = round_.effective["nobudget"]
    assert not closed.enforce and "Recommend only" in closed.reason
    # Still planned, for status; its three running replicas keep their nodes.
    assert ("nobudget", "bare") in round_.plan.deployments
    good = round_.plan.deployments[("team", "good")].replicas.get("od", 0)
    assert round_.pool_targets["od"] >= -(-(good + 3) // 4)  # 4 GPUs a node


def test_two_budgets_in_a_namespace_apply_the_strictest_and_say_so() -> None:
    loose, strict = _budget("team", "loose"), _budget("team", "strict")
    loose["spec"]["limits"] = {"hourly": 1000}
    strict["spec"]["limits"] = {"hourly": 5}
    round_ = _round_with({("team", "good"): _deployment("good")}, {"team": (loose, strict)})
    effective = round_.effective["team"]
    assert effective.budget is not None and effective.budget.spec.limits.hourly == 5
    assert "strictest" in effective.reason and set(effective.ignored) == {"loose", "strict"}


def test_a_template_asking_for_the_host_network_is_left_out() -> None:
    hostile = _deployment("hostile")
    hostile["spec"]["template"]["spec"]["hostNetwork"] = True
    round_ = _round_with(
        {("team", "good"): _deployment("good"), ("team", "hostile"): hostile},
        {"team": (_budget("team"),)},
    )
    assert round_.invalid["InferenceDeployment team/hostile"].startswith("pod template rejected")
    assert "hostNetwork" in round_.invalid["InferenceDeployment team/hostile"]
    assert ("team", "good") in round_.plan.deployments

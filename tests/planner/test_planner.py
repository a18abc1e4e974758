from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from planner_factories import NOW, budget, deployment, pool

from peakwise.planner import DeploymentState, PlanInput, plan

SOLVERS = ["greedy", "milp"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_scales_to_cover_the_forecast(solver: str) -> None:
    result = plan(PlanInput(NOW, (deployment("chat", 950.0),), (pool("od"),), solver=solver))
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"od": 10}
    assert chat.capacity >= 950.0
    assert result.pools["od"].nodes == 2  # 10 one-GPU replicas on 8-GPU nodes
    assert chat.reasons[0] == "scale up 0 → 10 replicas"


TIERED = (
    pool("res", "reserved", 30.0, reserved=1, max_nodes=1),
    pool("spot", "spot", 15.0),
    pool("od", "onDemand", 40.0),
)


def test_greedy_fills_reserved_then_spot_then_on_demand() -> None:
    # 30 replicas: 8 fit the reserved node; spot may hold 60% of the total.
    result = plan(PlanInput(NOW, (deployment("chat", 3000.0),), TIERED, solver="greedy"))
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"res": 8, "spot": 18, "od": 4}
    assert chat.replicas_by_tier == {"reserved": 8, "spot": 18, "onDemand": 4}
    # Reserved capacity is already paid: only spot and on-demand count as spend.
    assert chat.hourly_cost == pytest.approx(18 * 15.0 / 8 + 4 * 40.0 / 8)


def test_milp_counts_whole_nodes() -> None:
    greedy = plan(PlanInput(NOW, (deployment("chat", 3000.0),), TIERED, solver="greedy"))
    exact = plan(PlanInput(NOW, (deployment("chat", 3000.0),), TIERED, solver="milp"))
    chat = exact.deployments[("team", "chat")]
    assert chat.replicas["res"] == 8
    assert chat.replicas["spot"] <= 0.6 * chat.total
    assert chat.capacity >= 3000.0
    # Two full spot nodes and one full on-demand node beat three part-filled spot nodes.
    assert sum(p.hourly_cost for p in exact.pools.values()) == pytest.approx(70.0)
    assert sum(p.hourly_cost for p in greedy.pools.values()) == pytest.approx(85.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_on_demand_floor_keeps_replicas_off_spot(solver: str) -> None:
    pools = (
        pool("spot", "spot", 10.0, gpus_per_node=1),
        pool("od", "onDemand", 40.0, gpus_per_node=1),
    )
    result = plan(
        PlanInput(
            NOW,
            (deployment("chat", 500.0, spot_fraction=1.0, on_demand_min=2),),
            pools,
            solver=solver,
        )
    )
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"od": 2, "spot": 3}


@pytest.mark.parametrize("solver", SOLVERS)
def test_picks_the_cheapest_gpu_per_unit_of_throughput(solver: str) -> None:
    profiles = [
        {"gpuType": "h100", "gpusPerReplica": 1, "throughputPerReplica": 300},
        {"gpuType": "l40s", "gpusPerReplica": 2, "throughputPerReplica": 200},
    ]
    pools = (
        pool("h100", price=48.0, gpu="h100", gpus_per_node=8),  # $6 a replica-hour: 50/s per $
        pool("l40s", price=4.0, gpu="l40s", gpus_per_node=4),  # $2 a replica-hour: 100/s per $
    )
    result = plan(
        PlanInput(NOW, (deployment("chat", 1200.0, profiles=profiles),), pools, solver=solver)
    )
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"l40s": 6}
    assert result.pools["l40s"].nodes == 3  # two 2-GPU replicas per 4-GPU node
    assert chat.hourly_cost == pytest.approx(12.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_respects_pool_max_nodes_and_reports_the_shortfall(solver: str) -> None:
    result = plan(
        PlanInput(NOW, (deployment("chat", 5000.0),), (pool("od", max_nodes=2),), solver=solver)
    )
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"od": 16}
    assert result.pools["od"].nodes == 2
    assert any("short of the target" in r and "pool capacity" in r for r in chat.reasons)


@pytest.mark.parametrize("solver", SOLVERS)
def test_hard_budget_lower_priority_gives_way_first(solver: str) -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=20),)  # $10 per replica-hour
    deployments = (
        deployment("important", 1000.0, priority=500),
        deployment("batch", 1000.0, priority=10, min_replicas=2),
    )
    result = plan(PlanInput(NOW, deployments, pools, (budget(hourly=150.0),), solver=solver))
    important = result.deployments[("team", "important")]
    batch = result.deployments[("team", "batch")]
    assert important.replicas == {"od": 10}
    assert batch.replicas == {"od": 5}
    assert batch.budget_limited and not important.budget_limited
    assert result.namespaces["team"].hourly_cost <= 150.0
    assert result.namespaces["team"].limited == ("batch",)
    assert any("Hard budget" in r for r in batch.reasons)


@pytest.mark.parametrize("solver", SOLVERS)
def test_minimums_break_only_when_they_cannot_fit(solver: str) -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=20),)
    deployments = (
        deployment("important", 1000.0, priority=500, min_replicas=5),
        deployment("batch", 1000.0, priority=10, min_replicas=5),
    )
    result = plan(PlanInput(NOW, deployments, pools, (budget(hourly=70.0),), solver=solver))
    important = result.deployments[("team", "important")]
    batch = result.deployments[("team", "batch")]
    assert result.namespaces["team"].hourly_cost <= 70.0
    assert important.total == 5  # keeps its minimum
    assert batch.total == 2  # the lower priority breaks its minimum
    assert "even the minimum" in result.namespaces["team"].reasons[0]


def test_soft_budget_only_warns() -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=20),)
    result = plan(
        PlanInput(
            NOW, (deployment("chat", 1000.0),), pools, (budget(hourly=50.0, enforcement="Soft"),)
        )
    )
    assert result.deployments[("team", "chat")].total == 10
    assert result.namespaces["team"].hourly_cost == pytest.approx(100.0)
    assert "Soft" in result.namespaces["team"].reasons[0]


def test_no_forecast_holds_current_capacity() -> None:
    state = deployment("chat", None, current={"od": 7})
    result = plan(PlanInput(NOW, (state,), (pool("od"),)))
    chat = result.deployments[("team", "chat")]
    assert chat.replicas == {"od": 7}
    assert any("no usable forecast" in r for r in chat.reasons)


def test_a_provisional_forecast_keeps_current_capacity_and_scales_up_for_demand() -> None:
    def provisional(peak: float, current: int) -> DeploymentState:
        state = deployment("chat", peak, current={"od": current})
        assert state.forecast is not None
        return replace(state, forecast=replace(state.forecast, provisional=True))

    pools = (pool("od"),)
    # Demand needs 2 replicas, 7 run: a model still being fitted does not scale them down.
    kept = plan(PlanInput(NOW, (provisional(200.0, 7),), pools)).deployments[("team", "chat")]
    assert kept.replicas == {"od": 7}
    assert any("model not fitted yet" in r for r in kept.reasons)
    # Demand needs 9: it does scale up.
    up = plan(PlanInput(NOW, (provisional(900.0, 7),), pools)).deployments[("team", "chat")]
    assert up.replicas == {"od": 9}


def test_nan_forecast_never_scales_to_zero() -> None:
    state = deployment("chat", float("nan"), current={"od": 4}, min_replicas=0)
    result = plan(PlanInput(NOW, (state,), (pool("od"),)))
    assert result.deployments[("team", "chat")].total == 4


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    pools = (pool("od"),)
    first = plan(PlanInput(NOW, (deployment("chat", 1000.0),), pools))
    history = first.deployments[("team", "chat")].demand_history
    later = NOW + timedelta(minutes=10)
    held = plan(
        PlanInput(later, (deployment("chat", 300.0, current={"od": 10}, history=history),), pools)
    )
    assert held.deployments[("team", "chat")].total == 10
    assert any("stabilisation" in r for r in held.deployments[("team", "chat")].reasons)
    after = NOW + timedelta(minutes=16)
    released = plan(
        PlanInput(after, (deployment("chat", 300.0, current={"od": 10}, history=history),), pools)
    )
    assert released.deployments[("team", "chat")].total == 3
    assert released.deployments[("team", "chat")].reasons[0] == "scale down 10 → 3 replicas"


def test_scale_up_is_immediate_despite_history() -> None:
    pools = (pool("od"),)
    history = ((NOW - timedelta(minutes=1), 300.0),)
    result = plan(PlanInput(NOW, (deployment("chat", 900.0, history=history),), pools))
    assert result.deployments[("team", "chat")].total == 9


def test_risky_spot_moves_capacity_to_on_demand() -> None:
    def spot_share(rate: float) -> float:
        pools = (pool("spot", "spot", 15.0, interruption_rate=rate), pool("od", "onDemand", 40.0))
        chat = plan(PlanInput(NOW, (deployment("chat", 2000.0),), pools)).deployments[
            ("team", "chat")
        ]
        return chat.replicas.get("spot", 0) / chat.total, chat.capacity

    calm_share, calm_capacity = spot_share(0.0)
    risky_share, risky_capacity = spot_share(2.0)
    stormy_share, _ = spot_share(10.0)
    assert calm_share == pytest.approx(0.6, abs=0.05)
    assert risky_capacity >= 2000.0 and calm_capacity >= 2000.0
    assert stormy_share == 0.0  # spot would lose most nodes before replacements arrive
    assert risky_share <= calm_share


def test_floor_from_kubectl_scale_is_respected() -> None:
    state = deployment("chat", 100.0, floor=12)  # one replica would do
    result = plan(PlanInput(NOW, (state,), (pool("od"),)))
    assert result.deployments[("team", "chat")].total == 12


def test_milp_is_never_dearer_than_greedy() -> None:
    pools = (
        pool("res", "reserved", 30.0, reserved=1, max_nodes=1),
        pool("spot", "spot", 15.0, max_nodes=3),
        pool("od", "onDemand", 40.0, max_nodes=6),
    )
    deployments = tuple(
        deployment(f"d{i}", 130.0 * (i + 1), priority=10 * i, on_demand_min=i % 2) for i in range(6)
    )
    greedy = plan(PlanInput(NOW, deployments, pools, solver="greedy"))
    exact = plan(PlanInput(NOW, deployments, pools, solver="milp"))
    assert exact.solver == "milp"

    def shortfall(p: object) -> float:
        return sum(max(0.0, d.demand_target - d.capacity) for d in p.deployments.values())  # type: ignore[attr-defined]

    def bill(p: object) -> float:
        return sum(x.hourly_cost for x in p.pools.values())  # type: ignore[attr-defined]

    assert shortfall(exact) <= shortfall(greedy) + 1e-6
    if shortfall(exact) == shortfall(greedy):
        assert bill(exact) <= bill(greedy) + 1e-6


def test_lost_spot_replicas_move_to_on_demand_while_spot_recovers() -> None:
    def placed(recovering: bool) -> dict[str, int]:
        spot = pool("spot", "spot", 10.0, gpus_per_node=4)
        spot = type(spot)(spot.name, spot.spec, nodes=1, recovering=recovering)
        pools = (spot, pool("od", "onDemand", 40.0, gpus_per_node=4))
        chat = plan(PlanInput(NOW, (deployment("chat", 1200.0, spot_fraction=1.0),), pools))
        return dict(chat.deployments[("team", "chat")].replicas)

    assert placed(False) == {"spot": 12}
    # One spot node left and no time to replace the others: on-demand takes the rest.
    assert placed(True) == {"spot": 4, "od": 8}


def _held(minutes_later: int, window: timedelta | None, stabilization: str) -> int:
    """Replicas planned `minutes_later` after a 1000/s target, when demand fell to 300/s."""
    extra = {"scaleDown": {"stabilizationWindow": stabilization}}

    def state(peak: float, **kw: Any) -> DeploymentState:
        s = deployment("chat", peak, **extra, **kw)
        if window is None or s.forecast is None:
            return s
        return replace(s, forecast=replace(s.forecast, window=window))

    first = plan(PlanInput(NOW, (state(1000.0),), (pool("od"),)))
    history = first.deployments[("team", "chat")].demand_history
    later = state(300.0, current={"od": 10}, history=history)
    result = plan(PlanInput(NOW + timedelta(minutes=minutes_later), (later,), (pool("od"),)))
    return result.deployments[("team", "chat")].total


def test_a_target_is_held_until_its_forecast_window_has_passed() -> None:
    # Lead 10 min: a target for [now + 10m, now + 11m] must stand for 11 minutes, since
    # capacity asked for at the last decision before that window only arrives as it starts.
    assert _held(10, None, "0s") == 10
    assert _held(11, None, "0s") == 3
    # A 30-minute window is covered until it ends, 40 minutes after it was planned.
    assert _held(39, timedelta(minutes=30), "0s") == 10
    assert _held(40, timedelta(minutes=30), "0s") == 3
    # A longer stabilisation window still wins.
    assert _held(19, None, "20m") == 10


def test_of_plans_that_cost_the_same_the_one_that_moves_nothing_wins() -> None:
    # Two identical on-demand pools: either serves the 5 replicas at the same price. Whichever
    # runs them now keeps them, whichever order the pools come in.
    pools = (pool("od-a", price=40.0), pool("od-b", price=40.0))
    for running in ("od-a", "od-b"):
        chat = deployment("chat", 500.0, current={running: 5}, spot_fraction=0.0)
        planned = plan(PlanInput(NOW, (chat,), pools)).deployments[chat.key]
        assert dict(planned.replicas) == {running: 5}


def test_a_real_saving_still_moves_replicas() -> None:
    # Spot at a quarter of the price: the replicas move there, what runs now or not.
    pools = (pool("od", price=40.0), pool("spot", "spot", price=10.0))
    chat = deployment("chat", 500.0, current={"od": 5}, spot_fraction=1.0)
    planned = plan(PlanInput(NOW, (chat,), pools)).deployments[chat.key]
    assert planned.replicas_by_tier["spot"] == 5


def test_a_replica_no_one_needs_is_not_kept_for_being_there() -> None:
    pools = (pool("od", price=40.0),)
    chat = deployment("chat", 300.0, current={"od": 8}, spot_fraction=0.0)
    planned = plan(PlanInput(NOW, (chat,), pools)).deployments[chat.key]
    assert planned.total == 3

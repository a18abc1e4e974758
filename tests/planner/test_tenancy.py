"""One tenant cannot hurt another through the planner: the attacks of issue 13, replayed.

Each test builds the situation that was reproduced against the live demo and checks what the
other namespaces keep. The property tests in test_tenancy_properties.py generalise them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from planner_factories import NOW, budget, deployment, pool

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.planner import DeploymentState, PlanInput, plan
from peakwise.planner.tenancy import TenancyPolicy

SOLVERS = ["greedy", "milp"]
SPOT_AND_ON_DEMAND = (
    pool("spot", "spot", 15.0, max_nodes=4, interruption_rate=0.05),
    pool("od", "onDemand", 40.0, max_nodes=4),
)


def _neighbours() -> tuple[DeploymentState, ...]:
    return (
        deployment("query-rewriter", 1200.0, namespace="search", min_replicas=4, max_replicas=20),
        deployment("assistant", 800.0, namespace="chat", min_replicas=2, max_replicas=20),
    )


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("peak", [1e6, 1e9, 1e12])
def test_a_huge_demand_cannot_zero_a_neighbour(solver: str, peak: float) -> None:
    # Was: vector(1e9) with replicas.max 10 took search/query-rewriter from 13 replicas to 0.
    attacker = deployment("evil", peak, namespace="evil", max_replicas=10)
    alone = plan(PlanInput(NOW, _neighbours(), SPOT_AND_ON_DEMAND, solver=solver))
    attacked = plan(PlanInput(NOW, (*_neighbours(), attacker), SPOT_AND_ON_DEMAND, solver=solver))
    for key, before in alone.deployments.items():
        after = attacked.deployments[key]
        assert after.total >= after.demand_target / 100.0 - 1e-9  # 4 to 13 before the fix: 0
        assert after.capacity >= before.demand_target - 1e-6, (key, dict(after.replicas))
        assert after.total >= 2
    evil = attacked.deployments[("evil", "evil")]
    assert evil.total == 10  # its own claim, clamped to replicas.max, is still served
    assert evil.clamped and any("more than replicas.max (10)" in r for r in evil.reasons)
    assert evil.demand_target == pytest.approx(10 * 100.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_an_inflated_query_with_a_tiny_budget_gets_only_its_share_of_reserved(solver: str) -> None:
    # Was: a $1/h Hard budget and an inflated query took 15 of 16 reserved slots.
    pools = (
        pool("res", "reserved", 30.0, reserved=2, max_nodes=2),
        pool("od", "onDemand", 40.0, max_nodes=10),
    )
    victim = deployment("victim", 1000.0, namespace="search", max_replicas=20)
    attacker = deployment("evil", 1e9, namespace="evil", max_replicas=15)
    result = plan(
        PlanInput(
            NOW,
            (victim, attacker),
            pools,
            (budget("evil", 1.0), budget("search", 100.0)),
            solver=solver,
        )
    )
    assert result.deployments[("search", "victim")].replicas.get("res") == 8
    assert result.deployments[("evil", "evil")].replicas.get("res", 0) <= 8
    assert result.namespaces["search"].reserved_gpus == {"res": 8}
    assert result.deployments[("search", "victim")].capacity >= 1000.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_more_minimums_or_more_deployments_gain_no_reserved_share(solver: str) -> None:
    # Was: reserved shares were cut for minimums first, so a namespace that added deployments
    # with a minimum each (or raised its minimums) took reserved GPUs from its neighbours.
    pools = (
        pool("res", "reserved", 30.0, reserved=2, max_nodes=2),
        pool("od", "onDemand", 40.0, max_nodes=10),
    )
    victim = deployment("victim", 1000.0, namespace="search", max_replicas=20)
    honest = deployment("honest", 1000.0, namespace="evil", max_replicas=20)
    budgets = (budget("evil", 1000.0), budget("search", 1000.0))
    alone = plan(PlanInput(NOW, (victim, honest), pools, budgets, solver=solver))
    grabbers = tuple(
        deployment(f"grab{i}", 100.0, namespace="evil", min_replicas=3, max_replicas=3)
        for i in range(4)
    )
    grabbed = plan(PlanInput(NOW, (victim, honest, *grabbers), pools, budgets, solver=solver))
    assert alone.namespaces["search"].reserved_gpus == {"res": 8}
    assert grabbed.namespaces["search"].reserved_gpus == {"res": 8}
    assert (
        grabbed.deployments[("search", "victim")].replicas
        == alone.deployments[("search", "victim")].replicas
    )
    # The grabbers' minimums run, on what the evil namespace pays for.
    assert all(grabbed.deployments[("evil", f"grab{i}")].total == 3 for i in range(4))


@pytest.mark.parametrize("solver", SOLVERS)
def test_reserved_weights_set_the_shares_and_unwanted_share_goes_to_others(solver: str) -> None:
    pools = (pool("res", "reserved", 30.0, reserved=2, max_nodes=2), pool("od", "onDemand"))
    big = deployment("big", 2000.0, namespace="a", max_replicas=20)
    small = deployment("small", 300.0, namespace="b", max_replicas=20)
    budgets = (budget("a", 1000.0), budget("b", 1000.0, reservedWeight=3))
    result = plan(PlanInput(NOW, (big, small), pools, budgets, solver=solver))
    # b wants 3 GPUs, less than its 3/4 share: it gets them; a gets the other 13.
    assert result.deployments[("b", "small")].replicas == {"res": 3}
    assert result.deployments[("a", "big")].replicas["res"] == 13
    assert result.namespaces["b"].reserved_gpus == {"res": 3}


@pytest.mark.parametrize("solver", SOLVERS)
def test_capacity_a_budget_trims_is_offered_to_the_others_in_the_same_round(solver: str) -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=1),)  # 8 slots at $10/h each
    thrifty = deployment("thrifty", 1000.0, namespace="a", max_replicas=8)
    other = deployment("other", 1000.0, namespace="b", max_replicas=8)
    result = plan(
        PlanInput(NOW, (thrifty, other), pools, (budget("a", 20.0), budget("b", 500.0)), solver)
    )
    assert result.deployments[("a", "thrifty")].total == 2
    # Without re-offering, b kept its half (4) and 2 slots stayed idle.
    assert result.deployments[("b", "other")].total == 6


@pytest.mark.parametrize("solver", SOLVERS)
def test_cross_namespace_priority_is_the_platforms_not_the_tenants(solver: str) -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=1),)  # 8 slots

    def split(platform: tuple[int, int], tenants: tuple[int, int]) -> tuple[int, int]:
        deployments = (
            deployment("loud", 1000.0, namespace="a", priority=tenants[0], min_replicas=0),
            deployment("quiet", 1000.0, namespace="b", priority=tenants[1], min_replicas=0),
        )
        budgets = (
            budget("a", 1000.0, priority=platform[0]),
            budget("b", 1000.0, priority=platform[1]),
        )
        result = plan(PlanInput(NOW, deployments, pools, budgets, solver=solver))
        return result.deployments[("a", "loud")].total, result.deployments[("b", "quiet")].total

    # The platform ranks b first: b is served in full although a's tenant wrote 1,000,000.
    assert split((100, 200), (1000000, 0)) == (0, 8)
    assert split((200, 100), (0, 1000000)) == (8, 0)
    # Same platform priority: what the tenants wrote does not decide between them.
    same = split((100, 100), (1000000, 0))
    assert sum(same) == 8
    assert split((100, 100), (0, 1000000)) == same


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_huge_minimum_cannot_take_the_others_minimums(solver: str) -> None:
    pools = (pool("od", "onDemand", 40.0, max_nodes=2),)  # 16 slots
    greedy_min = deployment("evil", 1e9, namespace="evil", min_replicas=16, max_replicas=16)
    victims = (
        deployment("a", 100.0, namespace="a", min_replicas=3),
        deployment("b", 100.0, namespace="b", min_replicas=2),
    )
    result = plan(PlanInput(NOW, (greedy_min, *victims), pools, solver=solver))
    assert result.deployments[("a", "a")].total >= 3
    assert result.deployments[("b", "b")].total >= 2
    evil = result.deployments[("evil", "evil")]
    assert evil.total == 11
    assert evil.below_minimum.endswith("the pools have no room left")


@pytest.mark.parametrize("solver", SOLVERS)
def test_below_minimum_only_for_its_own_hard_budget_and_the_reason_says_so(solver: str) -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=4),)
    poor = deployment("poor", 500.0, namespace="a", min_replicas=4)
    rich = deployment("rich", 500.0, namespace="b", min_replicas=4)
    result = plan(
        PlanInput(NOW, (poor, rich), pools, (budget("a", 25.0), budget("b", 500.0)), solver)
    )
    poor_plan = result.deployments[("a", "poor")]
    assert poor_plan.total == 2
    assert "Hard budget (25.00/h) cannot pay even for the minimums" in poor_plan.below_minimum
    assert poor_plan.budget_limited
    rich_plan = result.deployments[("b", "rich")]
    assert rich_plan.total == 5 and rich_plan.below_minimum == ""


@pytest.mark.parametrize("solver", SOLVERS)
def test_spot_risk_is_priced_per_deployment(solver: str) -> None:
    # Was: one team's modelLoadTime 10h priced spot for every team (another moved off spot).
    # One-GPU nodes: no replica shares a node with another deployment's.
    pools = (
        pool("spot", "spot", 2.0, gpus_per_node=1, max_nodes=80, interruption_rate=0.5),
        pool("od", "onDemand", 5.0, gpus_per_node=1, max_nodes=80),
    )
    victim = deployment("victim", 1500.0, namespace="search", spot_fraction=1.0)
    slow = deployment("slow", 500.0, namespace="evil", modelLoadTime="2h", spot_fraction=1.0)
    alone = plan(PlanInput(NOW, (victim,), pools, solver=solver))
    together = plan(PlanInput(NOW, (victim, slow), pools, solver=solver))
    key = ("search", "victim")
    assert together.deployments[key].replicas == alone.deployments[key].replicas
    assert together.deployments[key].replicas.get("spot", 0) > 0
    assert together.deployments[key].hourly_cost == pytest.approx(
        alone.deployments[key].hourly_cost
    )
    # The slow loader itself loses most spot nodes before a replacement serves: no spot.
    assert together.deployments[("evil", "slow")].replicas.get("spot", 0) == 0


def test_the_longest_durations_the_api_accepts_plan_without_overflow() -> None:
    spec_extra = {
        "forecast": {"leadTime": "6h", "history": "35d"},
        "modelLoadTime": "2h",
        "scaleDown": {"stabilizationWindow": "1d"},
    }
    # An old target of 1e300 in status (written before the bounds) is clamped as well.
    history = ((NOW - timedelta(hours=23), 1e300),)
    state = deployment(
        "long", 1e12, max_replicas=10000, current={"od": 3}, history=history, **spec_extra
    )
    big_pool = pool("od", "onDemand", 10000.0, max_nodes=100000, provisioningTime="6h")
    for solver in SOLVERS:
        result = plan(PlanInput(NOW, (state,), (big_pool,), solver=solver))
        planned = result.deployments[("team", "long")]
        assert planned.total == 10000
        assert planned.demand_target == pytest.approx(10000 * 100.0)


def test_namespaces_without_a_budget_get_the_platform_default_cap() -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=4),)
    policy = TenancyPolicy(
        unbudgeted="DefaultBudget",
        default_budget=CostBudgetSpec.model_validate({"limits": {"hourly": 30}}),
    )
    free_rider = deployment("free", 1000.0, namespace="nobudget")
    result = plan(PlanInput(NOW, (free_rider,), pools, policy=policy))
    assert result.deployments[("nobudget", "free")].total == 3
    assert result.namespaces["nobudget"].hourly_cap == pytest.approx(30.0)
    assert result.namespaces["nobudget"].enforcement == "Hard"
    # Without a policy the planner plans it uncapped (the operator only recommends it).
    assert plan(PlanInput(NOW, (free_rider,), pools)).deployments[("nobudget", "free")].total == 10


def test_two_budget_states_for_one_namespace_apply_the_strictest() -> None:
    pools = (pool("od", "onDemand", 80.0, max_nodes=4),)
    result = plan(
        PlanInput(
            NOW,
            (deployment("chat", 1000.0),),
            pools,
            (budget("team", 500.0), budget("team", 40.0, enforcement="Soft")),
        )
    )
    assert result.namespaces["team"].hourly_cap == pytest.approx(40.0)
    assert result.namespaces["team"].enforcement == "Hard"
    assert result.deployments[("team", "chat")].total == 4


def test_a_time_limited_solve_that_leaves_a_minimum_short_is_repaired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HiGHS stopped at its time limit may hand back anything feasible: here the attacker
    holds every slot. The planner gives the neighbour back the minimum the greedy placement
    (smaller minimums first) gave it, taking from the larger minimum."""
    from peakwise.planner import milp

    pools = (pool("od", "onDemand", 40.0, max_nodes=1),)  # 8 slots
    neighbour = deployment("small", 100.0, namespace="a", min_replicas=3, max_replicas=3)
    attacker = deployment("evil", 1e12, namespace="evil", min_replicas=8, max_replicas=8)

    def greedy_for_evil(demands, members, slices, packing, time_limit):  # type: ignore[no-untyped-def]
        allocations = {d: ({0: 8} if demands[d].key[0] == "evil" else {}) for d in members}
        return milp.Solution(allocations, objective=0.0, proven=True)

    monkeypatch.setattr(milp, "allocate", greedy_for_evil)
    result = plan(PlanInput(NOW, (neighbour, attacker), pools, solver="milp"))
    assert result.deployments[("a", "small")].total == 3
    assert result.deployments[("evil", "evil")].total == 5
    assert "below replicas.min (8)" in result.deployments[("evil", "evil")].below_minimum


def test_the_exact_plan_is_not_topped_up_between_rounds() -> None:
    """A sliver of demand past whole replicas is worth less than a new node to the exact
    solver; the re-offer (only for what budgets trim) must not add a replica for it, or the
    plan would flip between rounds as the forecast moves by a fraction."""
    pools = (pool("od", "onDemand", 40.0, gpus_per_node=4), pool("spot", "spot", 12.0))
    plans = {
        peak: plan(PlanInput(NOW, (deployment("chat", peak),), pools, solver="milp"))
        .deployments[("team", "chat")]
        .replicas
        for peak in (399.9, 400.1)
    }
    assert plans == {399.9: {"od": 4}, 400.1: {"od": 4}}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("peak", [1e6, 1e9])
def test_a_claim_its_budget_trims_leaves_no_mark_on_the_others_plans(
    solver: str, peak: float
) -> None:
    # Was: the joint plan was solved with the attacker's 10 replicas on on-demand, so another
    # team's spot replicas were moved beside them (the slot was free there); the attacker's
    # $1/h Hard budget then trimmed all 10, and the other team kept the dearer plan:
    # $16/h -> $30/h.
    pools = (
        pool("res", "reserved", 30.0, gpus_per_node=4, max_nodes=2, reserved=2),
        pool("spot", "spot", 12.0, gpus_per_node=4, max_nodes=6),
        pool("od", "onDemand", 40.0, gpus_per_node=4, max_nodes=8, minNodes=4),
    )

    def service(
        name: str, ns: str, demand: float, lo: int, hi: int, spot: float
    ) -> DeploymentState:
        return deployment(
            name,
            demand,
            namespace=ns,
            throughput=2,
            min_replicas=lo,
            max_replicas=hi,
            spot_fraction=spot,
        )

    tenants = (
        service("chat", "a", 14, 2, 8, 0),
        service("search", "b", 10, 2, 6, 0.5),
        service("batch", "c", 6, 1, 4, 0),
        # The attacker's own honest service already wants more than its reserved share.
        service("honest", "x", 6, 1, 4, 0),
    )
    budgets = (*(budget(ns, 1000.0, "Soft") for ns in "abc"), budget("x", 1.0))
    alone = plan(PlanInput(NOW, tenants, pools, budgets, solver=solver))
    evil = service("evil", "x", peak, 1, 10, 0)
    attacked = plan(PlanInput(NOW, (*tenants, evil), pools, budgets, solver=solver))
    for key, before in alone.deployments.items():
        if key[0] == "x":
            continue
        after = attacked.deployments[key]
        assert after.total == before.total, key
        assert after.hourly_cost == pytest.approx(before.hourly_cost), (key, after.replicas)
    assert attacked.namespaces["x"].hourly_cost <= 1.0  # its share of reserved, no more

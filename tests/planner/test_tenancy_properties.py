"""Property tests: whatever one tenant writes (within what the API accepts, demands up to 1e12),
the other tenants keep their minimums, and where capacity is ample their plans do not change.

An *attacker* is one InferenceDeployment in its own namespace with adversarial settings: a
huge (or infinite, or NaN) demand, the largest replicas.max and minimum, the longest model
load and lead time, the highest in-namespace priority, extreme throughput. It is planned
together with ordinary deployments of two other namespaces and compared with the plan
without it.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_factories import (
    NOW,
    assert_plan_keeps_the_rules,
    budget,
    deployment,
    describe,
    pool,
)

from peakwise.planner import BudgetState, DeploymentState, Plan, PlanInput, PoolState, plan

SOLVERS = st.sampled_from(["greedy", "milp"])
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
huge_demands = st.one_of(
    st.floats(1e3, 1e12),
    st.sampled_from([1e12, 1e9, 1e6, math.inf, math.nan]),
)


@st.composite
def attackers(
    draw: st.DrawFn, max_replicas: int = 10000, huge_minimum: bool = False
) -> DeploymentState:
    hi = draw(st.integers(1, max_replicas))
    # With `huge_minimum`, a minimum above every neighbour's (they ask for at most 4): when
    # minimums cannot all fit the smaller ones go first, so a small one is an ordinary claim.
    lo = draw(st.integers(5, hi)) if huge_minimum and hi >= 5 else 0
    extra: dict[str, Any] = {
        "modelLoadTime": draw(st.sampled_from(["0s", "10m", "2h"])),
        "forecast": {"leadTime": draw(st.sampled_from(["0s", "10m", "6h"]))},
    }
    return deployment(
        "evil",
        draw(huge_demands),
        namespace="evil",
        priority=1000000,
        throughput=draw(st.sampled_from([1e-3, 1.0, 100.0, 1e9])),
        min_replicas=lo,
        max_replicas=hi,
        spot_fraction=draw(st.floats(0.0, 1.0)),
        on_demand_min=draw(st.integers(0, min(lo, 50))),
        **extra,
    )


@st.composite
def victims(draw: st.DrawFn, gpu_types: list[str]) -> tuple[DeploymentState, ...]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        lo = draw(st.integers(0, 4))
        hi = draw(st.integers(max(lo, 1), 30))
        out.append(
            deployment(
                f"d{i}",
                draw(st.floats(0.0, 3000.0)),
                namespace=draw(st.sampled_from(["a", "b"])),
                priority=draw(st.integers(0, 3)) * 100,
                profiles=[
                    {
                        "gpuType": draw(st.sampled_from(gpu_types)),
                        "throughputPerReplica": draw(st.floats(20.0, 400.0)),
                    }
                ],
                min_replicas=lo,
                max_replicas=hi,
                spot_fraction=draw(st.floats(0.0, 1.0)),
                on_demand_min=draw(st.integers(0, lo)),
                modelLoadTime=draw(st.sampled_from(["1m", "5m"])),
            )
        )
    return tuple(out)


def _budgets(draw: st.DrawFn) -> tuple[BudgetState, ...]:
    return tuple(
        budget(ns, draw(st.floats(1.0, 300.0)), draw(st.sampled_from(["Hard", "Soft"])))
        for ns in ("a", "b")
        if draw(st.booleans())
    )


def _both(
    victims_: tuple[DeploymentState, ...],
    attacker: DeploymentState,
    pools: tuple[PoolState, ...],
    budgets: tuple[BudgetState, ...],
    solver: str,
) -> tuple[Plan, Plan, PlanInput]:
    # A time limit no example reaches, so the exact solver's answer does not depend on load.
    limit = timedelta(seconds=60)
    alone = plan(PlanInput(NOW, victims_, pools, budgets, solver=solver, time_limit=limit))
    request = PlanInput(NOW, (*victims_, attacker), pools, budgets, solver=solver, time_limit=limit)
    return alone, plan(request), request


@st.composite
def contended(draw: st.DrawFn) -> tuple[Any, ...]:
    """Any pools, small enough to run out, reserved ones among them: reserved capacity is
    shared by weight over what each namespace wants, so an attacker's huge minimum gains it
    no reserved GPUs."""
    huge_minimum = draw(st.booleans())
    tiers = ["reserved", "spot", "onDemand"]
    pools = []
    for i in range(draw(st.integers(1, 3))):
        tier = draw(st.sampled_from(tiers))
        nodes = draw(st.integers(1, 4))
        pools.append(
            pool(
                f"p{i}",
                tier,
                draw(st.floats(1.0, 100.0)),
                gpus_per_node=draw(st.sampled_from([1, 4, 8])),
                max_nodes=nodes,
                reserved=nodes if tier == "reserved" else 0,
                interruption_rate=draw(st.floats(0.0, 2.0)) if tier == "spot" else 0.0,
            )
        )
    return (
        draw(victims(["h100"])),
        draw(attackers(huge_minimum=huge_minimum)),
        tuple(pools),
        _budgets(draw),
        draw(SOLVERS),
    )


@PROPERTY
@given(contended())
def test_an_attacker_never_takes_a_neighbours_minimum(problem: tuple[Any, ...]) -> None:
    victims_, attacker, pools, budgets, solver = problem
    alone, attacked, request = _both(victims_, attacker, pools, budgets, solver)
    assert_plan_keeps_the_rules(request, attacked)
    huge_minimum = attacker.spec.replicas.min > 0
    for state in victims_:
        before, after = alone.deployments[state.key], attacked.deployments[state.key]
        # Minimums are placed smaller first; the attacker's comes after every neighbour's.
        assert after.guaranteed == before.guaranteed, state.key
        if "Hard budget" in after.below_minimum:
            continue  # its own namespace's budget, the same with or without the attacker
        # Without a minimum of its own the attacker cannot take anything from a neighbour's
        # minimum. With a huge one, when the minimums cannot all fit, a neighbour keeps what
        # the placement of minimums gives it (a greedy packing: the exact plan without the
        # attacker may fit more).
        floor = min(state.spec.replicas.min, after.guaranteed if huge_minimum else before.total)
        assert after.total >= floor, (
            f"{state.key}: {dict(before.replicas)} -> {dict(after.replicas)}\n"
            + describe(request)
            + f"\n{ {k: dict(v.replicas) for k, v in attacked.deployments.items()} }"
        )
    evil = attacked.deployments[attacker.key]
    assert evil.total <= attacker.spec.replicas.max
    assert math.isfinite(evil.demand_target)


# Prices far enough apart that no two choices cost the same.
PRICES = [2.0, 3.5, 5.0, 9.0, 17.0, 33.0]


@st.composite
def ample(draw: st.DrawFn) -> tuple[Any, ...]:
    """Spot and on-demand pools of one-GPU nodes with room for every replicas.max: nothing
    the attacker does is forced by shared capacity."""
    victims_ = draw(victims(["h100", "l40s"]))
    attacker = draw(attackers(max_replicas=300))
    room = sum(v.spec.replicas.max for v in victims_) + attacker.spec.replicas.max
    kinds = draw(
        st.lists(
            st.tuples(st.sampled_from(["spot", "onDemand"]), st.sampled_from(["h100", "l40s"])),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    prices = draw(
        st.lists(st.sampled_from(PRICES), min_size=len(kinds), max_size=len(kinds), unique=True)
    )
    pools = tuple(
        pool(
            f"p{i}",
            tier,
            price,
            gpu=gpu,
            gpus_per_node=1,
            max_nodes=room,
            interruption_rate=draw(st.sampled_from([0.0, 0.3, 1.0])) if tier == "spot" else 0.0,
        )
        for i, ((tier, gpu), price) in enumerate(zip(kinds, prices, strict=True))
    )
    attacker = attacker.__class__(
        attacker.namespace,
        attacker.name,
        attacker.spec.model_copy(
            update={
                "gpu_profiles": [
                    p.model_copy(update={"gpu_type": draw(st.sampled_from(["h100", "l40s"]))})
                    for p in attacker.spec.gpu_profiles
                ]
            }
        ),
        attacker.forecast,
    )
    return victims_, attacker, pools, _budgets(draw), draw(SOLVERS)


@PROPERTY
@given(ample())
def test_with_room_for_everyone_an_attacker_changes_no_neighbours_plan(
    problem: tuple[Any, ...],
) -> None:
    victims_, attacker, pools, budgets, solver = problem
    alone, attacked, request = _both(victims_, attacker, pools, budgets, solver)
    assert_plan_keeps_the_rules(request, attacked)
    for state in victims_:
        before, after = alone.deployments[state.key], attacked.deployments[state.key]
        assert dict(after.replicas) == dict(before.replicas), state.key
        assert dict(after.replicas_by_tier) == dict(before.replicas_by_tier)
        assert after.hourly_cost == before.hourly_cost
    for ns, before_ns in alone.namespaces.items():
        assert attacked.namespaces[ns].hourly_cost == before_ns.hourly_cost


@st.composite
def reserved_contest(draw: st.DrawFn) -> tuple[Any, ...]:
    gpus_per_node = draw(st.sampled_from([1, 8]))
    nodes = draw(st.integers(1, 4))
    pools = (
        pool("res", "reserved", 30.0, gpus_per_node=gpus_per_node, max_nodes=nodes, reserved=nodes),
        pool("od", "onDemand", 40.0, gpus_per_node=gpus_per_node, max_nodes=400),
    )
    victim = deployment(
        "victim",
        # Whole replicas of demand: a sliver past them is the exact solver's to leave.
        draw(st.integers(0, 40)) * 100.0,
        namespace="a",
        min_replicas=draw(st.integers(0, 4)),
        max_replicas=40,
    )
    weights = draw(st.tuples(st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([0.5, 1.0, 3.0])))
    budgets = (
        budget("a", 1000.0, reservedWeight=weights[0]),
        budget("evil", draw(st.floats(0.5, 1000.0)), reservedWeight=weights[1]),
    )
    return victim, draw(attackers(max_replicas=300)), pools, budgets, weights, draw(SOLVERS)


@PROPERTY
@given(reserved_contest())
def test_reserved_capacity_keeps_each_namespaces_weighted_share(problem: tuple[Any, ...]) -> None:
    victim, attacker, pools, budgets, weights, solver = problem
    request = PlanInput(
        NOW, (victim, attacker), pools, budgets, solver=solver, time_limit=timedelta(seconds=60)
    )
    result = plan(request)
    assert_plan_keeps_the_rules(request, result)
    capacity = pools[0].spec.max_nodes * pools[0].spec.gpus_per_node
    forecast = victim.forecast
    assert forecast is not None
    wanted = min(max(math.ceil(forecast.peak / 100.0 - 1e-9), victim.spec.replicas.min), 40)
    share = math.floor(capacity * weights[0] / sum(weights))
    kept = result.deployments[victim.key].replicas.get("res", 0)
    assert kept >= min(wanted, share), (
        wanted,
        share,
        dict(result.deployments[victim.key].replicas),
    )
    assert result.namespaces["a"].reserved_gpus.get("res", 0) >= min(wanted, share)

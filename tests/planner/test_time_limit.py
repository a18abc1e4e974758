"""The exact solver stopped at its time limit: the plan must not depend on the CPU it got.

At fleet scale HiGHS stops at the time limit with whatever it found, or nothing; which one a
round gets depends on the machine's load. Measured at 1,000 services, that flipped about half
the plans every round (4 -> 2 -> 4 replicas). The planner keeps the greedy's plan (the same
every round) unless the exact solver's is cheaper by the solver's own objective.
"""

from __future__ import annotations

import random

import pytest
from planner_factories import NOW, deployment, pool

from peakwise.planner import PlanInput, milp, plan
from peakwise.planner.capacity import build_slices
from peakwise.planner.greedy import Packing
from peakwise.planner.plan import _demands
from peakwise.planner.tenancy import planning_budgets, share_reserved

POOLS = (
    pool("res", "reserved", 30.0, reserved=1, max_nodes=1),
    pool("spot", "spot", 15.0, max_nodes=3),
    pool("od", "onDemand", 40.0, max_nodes=6),
)


def _fleet(seed: int) -> PlanInput:
    rng = random.Random(seed)
    deployments = tuple(
        deployment(
            f"d{i}",
            rng.uniform(50.0, 900.0),
            namespace=f"ns{i % 3}",
            priority=rng.choice([0, 10, 50]),
            on_demand_min=rng.choice([0, 0, 1]),
            min_replicas=rng.choice([0, 1, 2]),
        )
        for i in range(rng.randint(2, 7))
    )
    return PlanInput(NOW, deployments, POOLS, solver="milp")


def _unproven(
    replace_with: dict[str, dict[int, int]] | None,
    objective: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Make `milp.allocate` stop "at its time limit" with a plan of our choosing."""
    real = milp.allocate

    def stopped_early(demands, members, slices, packing, time_limit):  # type: ignore[no-untyped-def]
        found = real(demands, members, slices, packing, time_limit)
        assert found is not None
        allocations = found.allocations
        if replace_with is not None:
            allocations = {d: replace_with.get(demands[d].key[1], {}) for d in members}
        return milp.Solution(allocations, objective=objective, proven=False)

    monkeypatch.setattr(milp, "allocate", stopped_early)


def test_a_dearer_plan_at_the_time_limit_gives_way_to_the_greedy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request = _fleet(3)
    greedy = plan(PlanInput(NOW, request.deployments, POOLS, solver="greedy"))
    # What HiGHS might hold after a fraction of a second: nothing at all placed.
    _unproven({}, objective=1e12, monkeypatch=monkeypatch)
    stopped = plan(request)
    assert stopped.solver.startswith("greedy (no dearer than the exact plan")
    for key, p in greedy.deployments.items():
        assert stopped.deployments[key].replicas == p.replicas, key


def test_a_cheaper_plan_at_the_time_limit_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    request = _fleet(3)
    exact = plan(request)
    assert exact.solver == "milp"
    # The optimum, handed back as if HiGHS had not yet proven it: the greedy's is dearer.
    _unproven(None, objective=-1e12, monkeypatch=monkeypatch)
    stopped = plan(request)
    assert stopped.solver == "milp"
    for key, p in exact.deployments.items():
        assert stopped.deployments[key].replicas == p.replicas, key


@pytest.mark.parametrize("seed", range(12))
def test_evaluate_prices_a_plan_as_the_solver_does(seed: int) -> None:
    """`milp.evaluate` of the optimum is the optimum's objective; of the greedy's plan, no
    less (the greedy is one of the plans the solver chose among)."""
    request = _fleet(seed)
    budgets = planning_budgets(request.budgets, set(), request.policy)
    slices = build_slices(request.pools)
    demands, _, _ = _demands(request, slices, budgets)
    shares = share_reserved(demands, slices, {d.namespace: 1.0 for d in demands})
    members = list(range(len(demands)))
    found = milp.allocate(demands, members, slices, Packing(slices, shares), 5.0)
    assert found is not None and found.proven
    value = milp.evaluate(demands, members, slices, Packing(slices, shares), found.allocations, 5.0)
    assert value == pytest.approx(found.objective, abs=1e-6)

    from peakwise.planner import greedy

    quick = greedy.allocate(demands, members, Packing(slices, shares))
    priced = milp.evaluate(demands, members, slices, Packing(slices, shares), quick, 5.0)
    assert priced is not None
    assert priced >= found.objective - 1e-6

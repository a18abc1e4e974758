"""Property tests: whatever the pools, deployments and budgets, a plan keeps the rules."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_factories import NOW, assert_plan_keeps_the_rules, budget, deployment, pool

from peakwise.planner import PlanInput, plan

GPU_TYPES = ["h100", "l40s"]


@st.composite
def problems(draw: st.DrawFn) -> tuple[PlanInput, dict[str, int]]:
    pools = []
    for i in range(draw(st.integers(1, 4))):
        capacity_type = draw(st.sampled_from(["reserved", "spot", "onDemand"]))
        max_nodes = draw(st.integers(1, 6))
        pools.append(
            pool(
                f"p{i}",
                capacity_type,
                draw(st.floats(1.0, 100.0)),
                gpu=draw(st.sampled_from(GPU_TYPES)),
                gpus_per_node=draw(st.sampled_from([1, 2, 4, 8])),
                max_nodes=max_nodes,
                reserved=max_nodes if capacity_type == "reserved" else 0,
                interruption_rate=draw(st.floats(0.0, 3.0)) if capacity_type == "spot" else 0.0,
            )
        )
    deployments = []
    for i in range(draw(st.integers(1, 5))):
        lo = draw(st.integers(0, 4))
        hi = draw(st.integers(max(lo, 1), 30))
        profiles = [
            {
                "gpuType": gpu,
                "gpusPerReplica": draw(st.sampled_from([1, 2])),
                "throughputPerReplica": draw(st.floats(10.0, 500.0)),
            }
            for gpu in draw(
                st.lists(st.sampled_from(GPU_TYPES), min_size=1, max_size=2, unique=True)
            )
        ]
        deployments.append(
            deployment(
                f"d{i}",
                draw(st.one_of(st.none(), st.floats(0.0, 5000.0))),
                namespace=draw(st.sampled_from(["a", "b"])),
                priority=draw(st.integers(0, 3)) * 100,
                profiles=profiles,
                min_replicas=lo,
                max_replicas=hi,
                spot_fraction=draw(st.floats(0.0, 1.0)),
                on_demand_min=draw(st.integers(0, lo)),
                current={p.name: draw(st.integers(0, 5)) for p in pools[:1]},
            )
        )
    budgets = tuple(
        budget(ns, draw(st.floats(0.5, 300.0)), draw(st.sampled_from(["Hard", "Soft"])))
        for ns in ("a", "b")
        if draw(st.booleans())
    )
    solver = draw(st.sampled_from(["greedy", "milp"]))
    request = PlanInput(NOW, tuple(deployments), tuple(pools), budgets, solver=solver)
    return request, {d.name: d.spec.replicas.min for d in deployments}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_plans_keep_every_rule(problem: tuple[PlanInput, dict[str, int]]) -> None:
    request, _ = problem
    assert_plan_keeps_the_rules(request, plan(request))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_planning_is_deterministic(problem: tuple[PlanInput, dict[str, int]]) -> None:
    request, _ = problem
    first, second = plan(request), plan(request)
    assert {k: dict(v.replicas) for k, v in first.deployments.items()} == {
        k: dict(v.replicas) for k, v in second.deployments.items()
    }

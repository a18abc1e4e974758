"""Budgets fail closed and count what is billed: the pure rules the operator applies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_factories import pool

from peakwise.api.costbudget import CostBudgetSpec
from peakwise.planner.billing import PoolUsage, namespace_spend
from peakwise.planner.tenancy import (
    ObservedBudget,
    TenancyPolicy,
    effective_budgets,
    strictest,
    water_fill,
)


def _spec(**fields: object) -> CostBudgetSpec:
    return CostBudgetSpec.model_validate({"limits": {"hourly": 100}, **fields})


# --- one effective budget per namespace ------------------------------------------------


def test_a_namespace_without_a_budget_is_recommend_only_by_default() -> None:
    result = effective_budgets(["chat"], [], TenancyPolicy())
    chat = result["chat"]
    assert chat.budget is None and not chat.enforce
    assert "no CostBudget in the namespace" in chat.reason
    assert "Recommend only" in chat.reason


def test_the_platform_may_give_unbudgeted_namespaces_a_default_cap() -> None:
    policy = TenancyPolicy(
        unbudgeted="DefaultBudget",
        default_budget=_spec(limits={"hourly": 25}),
        default_priority=5,
        default_reserved_weight=0.5,
    )
    chat = effective_budgets(["chat"], [], policy)["chat"]
    assert chat.enforce and chat.source == "platform default"
    assert chat.budget is not None
    assert chat.budget.spec.limits.hourly == 25
    assert chat.budget.spec.priority == 5 and chat.budget.spec.reserved_weight == 0.5
    with pytest.raises(ValueError, match="needs a default_budget"):
        TenancyPolicy(unbudgeted="DefaultBudget")


def test_several_budgets_apply_the_strictest_of_each_and_say_so() -> None:
    budgets = [
        ObservedBudget("chat", "a", _spec(limits={"hourly": 50, "monthly": 9000}), spend=10),
        ObservedBudget(
            "chat", "b", _spec(limits={"hourly": 80}, enforcement="Soft", priority=7), spend=12
        ),
    ]
    chat = effective_budgets(["chat"], budgets, TenancyPolicy(), hours_left_in_period=100)["chat"]
    assert chat.enforce and chat.budget is not None
    spec = chat.budget.spec
    assert (spec.limits.hourly, spec.limits.monthly) == (50, 9000)
    assert spec.enforcement == "Hard" and spec.priority == 7
    assert chat.budget.spend == 12  # the larger accrual: never under-count
    assert chat.source == "strictest of CostBudgets a, b"
    assert "2 CostBudgets in the namespace (a, b)" in chat.reason
    assert chat.ignored == ("a", "b")


def test_an_invalid_budget_is_reported_not_silently_skipped() -> None:
    invalid = ObservedBudget("chat", "typo", None, problem="spec.limits: Field required")
    alone = effective_budgets([], [invalid], TenancyPolicy())["chat"]
    assert not alone.enforce
    assert "CostBudget typo is invalid (spec.limits: Field required)" in alone.reason
    with_valid = effective_budgets(
        [], [invalid, ObservedBudget("chat", "ok", _spec())], TenancyPolicy()
    )
    assert with_valid["chat"].enforce
    assert with_valid["chat"].source == "CostBudget ok"
    assert "CostBudget typo is invalid" in with_valid["chat"].reason
    assert with_valid["chat"].ignored == ("typo",)


def test_budgets_in_different_currencies_cannot_be_merged_and_fail_closed() -> None:
    budgets = [
        ObservedBudget("chat", "usd", _spec()),
        ObservedBudget("chat", "eur", _spec(currency="EUR")),
    ]
    chat = effective_budgets([], budgets, TenancyPolicy())["chat"]
    assert not chat.enforce
    assert "different currencies (EUR, USD)" in chat.reason


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.floats(1, 1000),
            st.none() | st.floats(1, 100000),
            st.sampled_from(["Hard", "Soft"]),
        ).filter(lambda t: t[0] is not None or t[1] is not None),
        min_size=1,
        max_size=4,
    )
)
def test_adding_a_budget_never_loosens_a_limit(
    limits: list[tuple[float | None, float | None, str]],
) -> None:
    specs = [
        CostBudgetSpec.model_validate(
            {"limits": {"hourly": h, "monthly": m}, "enforcement": e}
            if h is not None and m is not None
            else {"limits": {"hourly": h} if h is not None else {"monthly": m}, "enforcement": e}
        )
        for h, m, e in limits
    ]
    merged = strictest(specs)
    for spec in specs:
        if spec.limits.hourly is not None:
            assert merged.limits.hourly is not None and merged.limits.hourly <= spec.limits.hourly
        if spec.limits.monthly is not None:
            assert merged.limits.monthly is not None
            assert merged.limits.monthly <= spec.limits.monthly
        if spec.enforcement == "Hard":
            assert merged.enforcement == "Hard"


# --- shares of reserved capacity --------------------------------------------------------


def test_water_fill_gives_each_the_smaller_of_its_want_and_its_weighted_share() -> None:
    assert water_fill(16, {"a": 15, "b": 15}, {"a": 1, "b": 1}) == {"a": 8, "b": 8}
    assert water_fill(16, {"a": 15, "b": 3}, {"a": 1, "b": 1}) == {"a": 13, "b": 3}
    assert water_fill(16, {"a": 15, "b": 15}, {"a": 1, "b": 3}) == {"a": 4, "b": 12}
    assert water_fill(16, {"a": 15, "b": 15}, {"a": 0, "b": 1}) == {"a": 0, "b": 15}
    assert water_fill(10, {"a": 3, "b": 3, "c": 3}, {"a": 1, "b": 1, "c": 1}) == {
        "a": 3,
        "b": 3,
        "c": 3,
    }


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 200),
    st.dictionaries(
        st.sampled_from("abcdef"),
        st.tuples(st.integers(0, 100), st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])),
        min_size=1,
    ),
)
def test_water_fill_is_fair_and_wastes_nothing(
    capacity: int, asks: dict[str, tuple[int, float]]
) -> None:
    wants = {ns: w for ns, (w, _) in asks.items()}
    weights = {ns: wt for ns, (_, wt) in asks.items()}
    shares = water_fill(capacity, wants, weights)
    assert sum(shares.values()) <= capacity
    weighted = {ns for ns in wants if weights[ns] > 0}
    total_weight = sum(weights[ns] for ns in weighted)
    for ns, want in wants.items():
        assert 0 <= shares[ns] <= want
        if ns in weighted:
            fair = int(capacity * weights[ns] / total_weight)
            assert shares[ns] >= min(want, fair), (ns, shares)
        else:
            assert shares[ns] == 0
    # Nothing left idle while a weighted namespace still wants more.
    if any(shares[ns] < wants[ns] for ns in weighted):
        assert sum(shares.values()) == capacity


# --- billing-true spend -------------------------------------------------------------------


def _usage(name: str, tier: str, nodes: int, **kw: object) -> PoolUsage:
    spec = pool(name, tier, 40.0, max_nodes=10, reserved=4 if tier == "reserved" else 0).spec
    return PoolUsage(name, spec, nodes, **kw)  # type: ignore[arg-type]


def test_pods_that_never_turn_ready_are_billed_as_scheduled() -> None:
    # Was: spend accrued from readyReplicas, so pods stuck starting cost nothing.
    spend = namespace_spend([_usage("od", "onDemand", 2, scheduled_gpus={"chat": 16})])
    assert spend.billed == {"chat": pytest.approx(80.0)}
    assert spend.unattributed == 0


def test_a_pools_nodes_are_shared_by_scheduled_gpus_whoever_labelled_the_pods() -> None:
    # Was: a Deployment labelled like a child shadowed the real child and ran 8 GPUs for $0.
    usage = _usage("od", "onDemand", 3, scheduled_gpus={"chat": 8, "search": 16})
    spend = namespace_spend([usage])
    assert spend.billed["chat"] == pytest.approx(40.0)
    assert spend.billed["search"] == pytest.approx(80.0)
    assert spend.total == pytest.approx(120.0)


def test_nodes_provisioned_ahead_of_pods_are_billed_to_who_the_plan_put_there() -> None:
    usage = _usage(
        "od", "onDemand", 2, scheduled_gpus={"chat": 4}, planned_gpus={"chat": 4, "search": 12}
    )
    spend = namespace_spend([usage])
    assert spend.billed["chat"] == pytest.approx(20.0)
    assert spend.billed["search"] == pytest.approx(60.0)


def test_reserved_nodes_are_not_billed_again_but_their_overflow_is() -> None:
    reserved = _usage("res", "reserved", 6, scheduled_gpus={"chat": 48})
    spend = namespace_spend([reserved])
    assert spend.billed == {"chat": pytest.approx(2 * 40.0)}  # 2 nodes past the 4 reserved
    assert spend.reserved == {"chat": pytest.approx(4 * 40.0)}  # reported, already paid


def test_a_namespace_pays_for_the_gpus_it_holds_not_for_the_free_ones_beside_them() -> None:
    # Was: a pool's whole node cost was split among its holders, so one 1-GPU pod on a pool
    # kept at 4 nodes (32 GPUs) by its minimum paid for all four: more than any plan priced.
    usage = _usage("od", "onDemand", 4, scheduled_gpus={"chat": 1})
    spend = namespace_spend([usage])
    assert spend.billed == {"chat": pytest.approx(40.0 / 8)}
    assert spend.unattributed == pytest.approx(4 * 40.0 - 5.0)


def test_reserved_nodes_are_filled_first_whoever_holds_them() -> None:
    # Two of six reserved-pool nodes are overflow; holders using only 2 nodes' GPUs fit in
    # the reserved ones and are billed nothing, the idle overflow is the platform's.
    reserved = _usage("res", "reserved", 6, scheduled_gpus={"chat": 10, "search": 6})
    spend = namespace_spend([reserved])
    assert spend.billed == {}
    assert spend.reserved == {"chat": pytest.approx(50.0), "search": pytest.approx(30.0)}
    assert spend.unattributed == pytest.approx(80.0)


def test_idle_nodes_nobody_holds_are_the_platforms() -> None:
    spend = namespace_spend([_usage("spot", "spot", 2)])
    assert spend.billed == {}
    assert spend.unattributed == pytest.approx(80.0)
    assert spend.by_pool == {"spot": pytest.approx(80.0)}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserved", "spot", "onDemand"]),
            st.integers(0, 10),
            st.dictionaries(st.sampled_from("abc"), st.integers(0, 80)),
            st.dictionaries(st.sampled_from("abc"), st.integers(0, 80)),
        ),
        max_size=4,
    )
)
def test_every_billed_dollar_is_attributed_once(
    pools: list[tuple[str, int, dict[str, int], dict[str, int]]],
) -> None:
    usages = [
        _usage(f"p{i}", tier, nodes, scheduled_gpus=scheduled, planned_gpus=planned)
        for i, (tier, nodes, scheduled, planned) in enumerate(pools)
    ]
    spend = namespace_spend(usages)
    assert spend.total == pytest.approx(sum(spend.by_pool.values()))
    # Nobody is billed above the price of the GPUs it holds (what the planner priced).
    for ns in spend.billed:
        held_cost = sum(
            max(u.scheduled_gpus.get(ns, 0), u.planned_gpus.get(ns, 0))
            * u.spec.price_per_node_hour
            / u.spec.gpus_per_node
            for u in usages
        )
        assert spend.billed[ns] <= held_cost + 1e-9
    for value in (*spend.billed.values(), *spend.reserved.values(), spend.unattributed):
        assert value >= 0

"""Commitment advice: the model's optimum where it is known in closed form, and the advice
against a brute force with the real planner on synthetic fleets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from peakwise.api.gpunodepool import GPUNodePool
from peakwise.api.inferencedeployment import InferenceDeployment
from peakwise.backtest import advice as advice_module
from peakwise.backtest.advice import (
    HOURS_PER_MONTH,
    AdviceError,
    FleetNeed,
    GPUTypeMarket,
    ServiceNeed,
    TermPrice,
    advise,
    capped_demand,
    flexible_cost_per_minute,
    market_for,
    monthly_costs,
    service_need,
    term_prices,
)
from peakwise.backtest.fleet import (
    Fleet,
    FleetOptions,
    brute_force_commitment,
    fleet_advice,
    key_of,
)
from peakwise.trace import synthesize_family

GPU = "nvidia-h100-80gb"


def _market(
    reserved: float, on_demand: float = 100.0, spot: float | None = None, **kw: Any
) -> GPUTypeMarket:
    return GPUTypeMarket(
        gpu_type=GPU,
        gpus_per_node=8,
        on_demand=on_demand,
        spot=spot,
        spot_interruptions_per_node_hour=kw.get("rate", 0.0),
        spot_rate_source="assumed",
        spot_replacement=timedelta(minutes=10),
        terms=(TermPrice("3y", reserved),),
    )


def _need(gpus: np.ndarray, spot: np.ndarray | None = None) -> ServiceNeed:
    return ServiceNeed(
        "a/b", gpus.astype(float), (spot if spot is not None else 0 * gpus).astype(float), 0.005
    )


@pytest.mark.parametrize(("busy", "expected"), [(0.3, 2), (0.6, 3)])
def test_a_node_is_committed_when_it_is_busy_more_often_than_its_break_even(
    busy: float, expected: int
) -> None:
    minutes = 1000
    gpus = np.full(minutes, 16.0)
    gpus[: int(busy * minutes)] = 24.0  # a third node's worth, `busy` of the time
    advice = advise([_need(gpus)], _market(reserved=50.0))
    (term,) = advice.terms
    assert term.break_even_on_demand == pytest.approx(0.5)
    assert term.nodes == expected
    assert term.last_node_busy == pytest.approx(busy if expected == 3 else 1.0)
    # The curve is the model's cost at each count, cheapest at the advice.
    assert min(term.curve, key=lambda p: p.monthly_cost).nodes == expected


def test_cheap_spot_leaves_nothing_worth_committing() -> None:
    gpus = np.full(500, 16.0)
    advice = advise([_need(gpus, spot=gpus)], _market(reserved=50.0, spot=30.0))
    assert advice.best.nodes == 0
    # Unless spot is interrupted so often that its expected survival makes it dear.
    risky = advise([_need(gpus, spot=gpus)], _market(reserved=50.0, spot=30.0, rate=4.0))
    assert risky.best.nodes == 2


def test_capped_demand_leaves_at_most_the_target_short() -> None:
    rng = np.random.default_rng(4)
    values = rng.gamma(2.0, 10.0, 5000)
    values[::97] = np.nan
    capped = capped_demand(values, 0.01)
    known = ~np.isnan(values)
    assert np.isnan(capped[~known]).all()
    short = (values[known] > capped[known] + 1e-12).mean()
    assert 0.005 < short <= 0.01


def _deployment(name: str, ns: str, throughput: float, **spec: Any) -> InferenceDeployment:
    return InferenceDeployment.model_validate(
        {
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "template": {"spec": {"containers": [{"name": "s", "image": "x"}]}},
                "gpuProfiles": [{"gpuType": GPU, "throughputPerReplica": throughput}],
                "demand": {"query": f"q_{name}"},
                "replicas": {"min": 1, "max": 64},
                **spec,
            },
        }
    )


def _pool(name: str, tier: str, price: float, **spec: Any) -> GPUNodePool:
    return GPUNodePool.model_validate(
        {
            "metadata": {"name": name, "annotations": spec.pop("annotations", {})},
            "spec": {
                "gpuType": GPU,
                "gpusPerNode": 8,
                "capacityType": tier,
                "pricePerNodeHour": price,
                "maxNodes": spec.pop("maxNodes", 20),
                "provisioningTime": "8m",
                "provider": {"kwok": {}},
                **spec,
            },
        }
    )


def test_service_need_keeps_replica_bounds_and_spot_rules() -> None:
    infd = _deployment(
        "a", "ns", 10.0, capacity={"spot": {"maxFraction": 0.5}, "onDemand": {"minReplicas": 3}}
    )
    demand = np.array([0.0, 7.9, 40.0, np.nan, 80.0])
    need = service_need("ns/a", infd.spec, demand, GPU, 8)
    # 8 demand/s per replica at 80%: 1 (the minimum), 1, 5, held 5, 10; then capped at the
    # target quantile (0.5%: the top value, kept).
    assert need.gpus.tolist() == [1, 1, 5, 5, 10]
    assert need.spot_gpus.tolist() == [0, 0, 2, 2, 5]


def test_term_prices_from_annotations_overrides_and_the_reserved_pool() -> None:
    annotated = _pool(
        "r",
        "reserved",
        40.0,
        reservedNodes=1,
        maxNodes=1,
        annotations={
            "peakwise.dev/reserved-price-1y": "60",
            "peakwise.dev/reserved-price-3y": "41",
        },
    )
    assert [(t.term, t.price_per_node_hour) for t in term_prices([annotated], {"3y": 39.0})] == [
        ("1y", 60.0),
        ("3y", 39.0),
    ]
    plain = _pool("r", "reserved", 40.0, reservedNodes=1, maxNodes=1)
    assert [(t.term, t.price_per_node_hour) for t in term_prices([plain], {})] == [
        ("current", 40.0)
    ]
    broken = _pool(
        "r",
        "reserved",
        40.0,
        reservedNodes=1,
        maxNodes=1,
        annotations={"peakwise.dev/reserved-price-1y": "cheap"},
    )
    with pytest.raises(AdviceError, match="reserved-price-1y must be a price"):
        term_prices([broken], {})


def test_the_spot_rate_is_the_pools_observed_one_where_known() -> None:
    spot = _pool("s", "spot", 30.0)
    od = _pool("o", "onDemand", 100.0)
    assumed = market_for(GPU, [spot, od], {"1y": 60.0}, assumed_spot_interruptions=0.05)
    assert assumed.spot_interruptions_per_node_hour == 0.05
    assert assumed.spot_rate_source == "assumed"
    observed = spot.model_copy(
        update={
            "status": spot.status.model_validate({"interruptionRate": 0.4}) if spot.status else None
        }
    )
    from peakwise.api.gpunodepool import GPUNodePoolStatus

    observed = spot.model_copy(update={"status": GPUNodePoolStatus(interruption_rate=0.4)})
    market = market_for(GPU, [observed, od], {"1y": 60.0}, assumed_spot_interruptions=0.05)
    assert market.spot_interruptions_per_node_hour == 0.4
    assert market.spot_rate_source == "observed on s"
    with pytest.raises(AdviceError, match="no onDemand pool"):
        market_for(GPU, [spot], {"1y": 60.0})


def _synthetic_fleet(
    seed: int, sizes: tuple[int, ...] = (1,)
) -> tuple[Fleet, dict[tuple[str, str], np.ndarray]]:
    """Two or three services of different shapes and sizes on H100 spot and on-demand, their
    replicas of `sizes` GPUs in turn."""
    rng = np.random.default_rng(seed)
    families = ["weekly", "spikes", "growth"]
    deployments, demand = [], {}
    for i in range(2 + seed % 2):
        gpus = sizes[i % len(sizes)]
        throughput = float(rng.uniform(3, 8)) * gpus
        infd = _deployment(
            f"svc{i}",
            f"team{i % 2}",
            throughput,
            capacity={"spot": {"maxFraction": float(rng.choice([0.0, 0.5]))}},
            gpuProfiles=[
                {"gpuType": GPU, "gpusPerReplica": gpus, "throughputPerReplica": throughput}
            ],
        )
        table = synthesize_family(
            families[(seed + i) % 3],
            1,
            seed=seed * 10 + i,
            peak_requests_per_minute=float(rng.uniform(600, 2400)),
        )
        deployments.append(infd)
        # Every tenth minute of a day: the advice and the brute force look at the demand's
        # distribution only (no dynamics), and the exact solver at every minute would be slow.
        demand[key_of(infd)] = table.requests[::10] / 60.0
    pools = (_pool("spot", "spot", 39.0), _pool("od", "onDemand", 98.0))
    return Fleet(pools, tuple(deployments)), demand


@pytest.mark.parametrize(
    ("seed", "sizes"), [(1, (1,)), (2, (1,)), (3, (1,)), (4, (1, 2)), (5, (2, 1))]
)
def test_the_advice_is_within_a_few_percent_of_the_planners_brute_force_optimum(
    seed: int, sizes: tuple[int, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    fleet, demand = _synthetic_fleet(seed, sizes)
    options = FleetOptions(spot_interruptions_per_node_hour=0.05, reserved_prices={"3y": 42.5})
    (advice,), problems = fleet_advice(fleet, demand, options)
    assert problems == []
    (term,) = advice.terms
    counts = list(range(int(advice.peak_gpus // 8) + 2))
    costs = brute_force_commitment(
        fleet, demand, datetime(2024, 1, 1, tzinfo=UTC), advice.market, 42.5, counts
    )
    best = int(np.argmin(costs))
    gap = costs[term.nodes] / costs[best] - 1
    with capsys.disabled():
        print(
            f"\n  fleet {seed} ({'/'.join(map(str, sizes))}-GPU replicas): advice {term.nodes} "
            f"nodes, brute force {best}; cost gap {gap:.2%}"
        )
    assert gap <= 0.03
    assert abs(term.nodes - best) <= 1


def test_each_replica_size_is_packed_on_nodes_of_its_own() -> None:
    """Four 1-GPU and two 2-GPU replicas all the time: the planner packs each size on nodes
    of its own, so they take two nodes, not the one their eight GPUs would fill."""
    four = np.full(100, 4.0)
    needs = [
        ServiceNeed("a/small", four, 0 * four, 0.005, gpus_per_replica=1),
        ServiceNeed("a/large", four, 0 * four, 0.005, gpus_per_replica=2),
    ]
    market = _market(reserved=42.5, on_demand=100.0)
    costs = monthly_costs(needs, market, 42.5, [0, 1, 2, 3])
    np.testing.assert_allclose(
        costs, np.array([200.0, 142.5, 85.0, 127.5]) * HOURS_PER_MONTH, rtol=1e-12
    )
    assert advise(needs, market).best.nodes == 2


def _many_needs(services: int, days: int) -> list[ServiceNeed]:
    """Services of every family and size, some allowed on spot, on H100 nodes of 8."""
    rng = np.random.default_rng(services)
    needs = []
    for i in range(services):
        infd = _deployment(
            f"svc{i}",
            f"team{i % 3}",
            float(rng.uniform(2, 9)),
            capacity={"spot": {"maxFraction": float(rng.choice([0.0, 0.3, 0.5]))}},
            replicas={"min": int(rng.integers(0, 3)), "max": 64},
            slo={"shortfallMinutes": float(rng.choice([0.001, 0.01]))},
        )
        table = synthesize_family(
            ["weekly", "spikes", "growth", "level-shift"][i % 4],
            days,
            seed=100 + i,
            peak_requests_per_minute=float(rng.uniform(300, 3000)),
        )
        demand = table.requests / 60.0
        demand[rng.integers(0, demand.shape[0], 50)] = np.nan  # gaps are held through
        needs.append(service_need(f"team{i % 3}/svc{i}", infd.spec, demand, GPU, 8))
    return needs


@pytest.mark.parametrize("spot", [None, 39.0])
def test_the_curve_from_summed_needs_equals_the_one_over_every_service_and_minute(
    spot: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advice folds services into two sums, prices each distinct (need, spot room) pair
    of minutes once and a chunk of those pairs at a time; the costs are those
    of pricing every minute of the services' stacked needs at every count (as it did when
    it held the whole fleet's history, hundreds of MiB at fleet scale)."""
    needs = _many_needs(12, 8)
    market = _market(reserved=42.5, on_demand=98.0, spot=spot, rate=0.05)
    # Every minute of every service, all counts at once: the computation before.
    gpus = np.sum([n.gpus for n in needs], axis=0)
    spot_room = np.sum([n.spot_gpus for n in needs], axis=0)
    counts = np.arange(int(np.ceil(gpus.max() / 8)) + 1, dtype=float)
    per_minute = flexible_cost_per_minute(gpus, spot_room, counts * 8, market).mean(axis=0)
    before = (counts * 42.5 + per_minute * 60.0) * HOURS_PER_MONTH
    # Streamed one service at a time, in chunks of a few minutes.
    monkeypatch.setattr(advice_module, "CELLS_PER_CHUNK", 200)
    streamed = FleetNeed(gpus.shape[0])
    for need in needs:
        streamed.add(need)
    assert np.array_equal(streamed.gpus, gpus)
    assert np.array_equal(streamed.spot_gpus, spot_room)
    after = monthly_costs(streamed, market, 42.5, counts.astype(int).tolist())
    np.testing.assert_allclose(after, before, rtol=1e-12)
    advice = advise(streamed, market)
    assert advice.best.nodes == int(np.argmin(before))
    assert advice.best.monthly_cost == pytest.approx(float(before.min()), rel=1e-12)
    assert [(p.nodes, round(p.monthly_cost, 2)) for p in advice.best.curve] == [
        (p.nodes, round(p.monthly_cost, 2)) for p in advise(needs, market).best.curve
    ]
    assert advice.services == tuple(n.name for n in needs)
    with pytest.raises(AdviceError, match="one grid"):
        streamed.add(_need(np.ones(5)))

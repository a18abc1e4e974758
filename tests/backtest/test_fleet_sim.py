"""The fleet simulator: shared nodes, provisioning, billing and the split of each bill."""

from __future__ import annotations

import numpy as np
import pytest

from peakwise.backtest.fleet import reactive_wants, single_pool_ready
from peakwise.backtest.fleet_sim import (
    FleetPool,
    FleetSimulator,
    Placement,
    attribute_cost,
    simulate_fleet,
)
from peakwise.backtest.policies import ReactivePolicy
from peakwise.backtest.simulator import SimPool, Simulator


def _pool(tier: str = "onDemand", **kw: object) -> FleetPool:
    settings: dict[str, object] = {
        "name": f"p-{tier}",
        "tier": tier,
        "gpus_per_node": 8,
        "node_price": 80.0,
        "reserved_nodes": 0,
        "min_nodes": 0,
        "max_nodes": 10,
        "provisioning_minutes": 5,
    }
    settings.update(kw)
    return FleetPool(**settings)  # type: ignore[arg-type]


def test_a_second_service_fits_on_the_node_the_first_left_room_on() -> None:
    pools = [_pool()]
    placements = [Placement(0, 0, 1, 10.0, 2), Placement(1, 0, 1, 10.0, 3)]
    sim = FleetSimulator(pools, placements)
    sim.step(0, np.array([4, 0]))
    assert sim.nodes(0) == 1
    for t in range(1, 7):
        sim.step(t, np.array([4, 0]))
    assert sim.ready == [0, 0]  # provisioning 5 + load 2: ready at minute 7
    sim.step(7, np.array([4, 0]))
    assert sim.ready == [4, 0]
    # The second service's 4 replicas fit on the same node: only its model load (3) delays them.
    sim.step(8, np.array([4, 4]))
    assert sim.nodes(0) == 1
    sim.step(10, np.array([4, 4]))
    assert sim.ready[1] == 0
    sim.step(11, np.array([4, 4]))
    assert sim.ready[1] == 4
    # A fifth replica needs a second node: provisioning plus load.
    sim.step(12, np.array([5, 4]))
    assert sim.nodes(0) == 2
    sim.step(18, np.array([5, 4]))
    assert sim.ready[0] == 4
    sim.step(19, np.array([5, 4]))
    assert sim.ready[0] == 5


def test_replica_sizes_pack_on_nodes_of_their_own_and_max_nodes_binds() -> None:
    pools = [_pool(max_nodes=2)]
    placements = [Placement(0, 0, 1, 10.0, 0), Placement(1, 0, 2, 20.0, 0)]
    sim = FleetSimulator(pools, placements)
    sim.step(0, np.array([1, 20]))
    # One node for the 1-GPU replica, one for the 2-GPU replicas: 4 of them fit, not 20.
    assert sim.nodes(0) == 2
    assert sim.requested().tolist() == [1, 4]


def test_scale_down_cancels_starting_replicas_first_and_reserved_nodes_are_always_billed() -> None:
    pools = [_pool("reserved", reserved_nodes=2, max_nodes=2)]
    placements = [Placement(0, 0, 1, 10.0, 4)]
    sim = FleetSimulator(pools, placements)
    assert sim.nodes(0) == 2  # paid for, used or not
    sim.step(0, np.array([3]))
    for t in range(1, 5):
        sim.step(t, np.array([3]))
    assert sim.ready == [3]
    sim.step(5, np.array([6]))  # three more starting (on the free reserved GPUs: load only)
    sim.step(6, np.array([4]))  # two of the starting ones are cancelled, the ready stay
    assert sim.ready == [3]
    assert sim.requested().tolist() == [4]
    sim.step(9, np.array([4]))
    assert sim.ready == [4]


def test_spot_interruptions_are_seeded_and_take_replicas_with_them() -> None:
    pools = [_pool("spot", interruptions_per_node_hour=6.0, provisioning_minutes=1)]
    placements = [Placement(0, 0, 1, 10.0, 0)]

    def run(seed: int) -> tuple[int, list[int]]:
        record = simulate_fleet(pools, placements, 300, lambda t, now: np.array([16]), seed)
        return record.interruptions, record.ready[:, 0].tolist()

    first, again = run(3), run(3)
    assert first == again
    assert first[0] > 0
    assert min(first[1][10:]) < 16  # some minutes lost replicas to interruptions


def test_each_bill_is_split_by_the_gpus_held_and_idle_nodes_are_the_fleets() -> None:
    pools = [_pool("reserved", reserved_nodes=2, max_nodes=3, node_price=40.0), _pool()]
    placements = [
        Placement(0, 0, 1, 10.0, 0),
        Placement(1, 0, 2, 10.0, 0),
        Placement(1, 1, 2, 10.0, 0),
    ]
    wants = np.array([[6, 1, 0]] * 10 + [[0, 0, 0]] * 10)
    record = simulate_fleet(pools, placements, 20, lambda t, now: wants[t], 0)
    per_service, idle = attribute_cost(pools, placements, record, 2)
    total = (record.nodes * np.array([40.0, 80.0])).sum() / 60.0
    assert np.isclose(per_service.sum() + idle.sum(), total)
    # While both hold GPUs on the reserved pool: 6 against 2 of its 8 held GPUs.
    assert np.isclose(per_service[5, 0] / per_service[5, 1], 6 / 2)
    # Once nobody holds anything, the two reserved nodes are the fleet's.
    assert np.isclose(idle[15], 2 * 40.0 / 60.0)
    assert per_service[15].sum() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vectorised_reactive_schedule_is_the_reactive_policys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    demand = rng.gamma(3.0, 20.0, 3000)
    demand[rng.integers(0, 3000, 80)] = np.nan
    demand[1000:1030] = np.nan
    demand[2000:2050] = 0.0
    window = int(rng.integers(1, 40))
    policy = ReactivePolicy("p", demand, 7.0, 0.8, 2, 30, window, headroom=0.15)
    expected = [policy(t, {})["p"] for t in range(demand.shape[0])]
    got = reactive_wants(demand, 7.0, 0.8, 2, 30, window, 0.15)
    assert got.tolist() == expected


def test_the_single_pool_shortcut_is_the_simulators() -> None:
    rng = np.random.default_rng(5)
    wants = np.clip(np.round(np.cumsum(rng.normal(0, 1.5, 2000)) + 20), 0, 60).astype(np.int64)
    pool = SimPool("od", "onDemand", 4, 10.0, 40.0, 0, 12, 6, 3)
    sim = Simulator([pool])
    expected = []
    for t in range(wants.shape[0]):
        ready, _ = sim.step(t, {"od": int(wants[t])})
        expected.append(ready["od"])
    assert single_pool_ready(wants, 4, 3, 6, 12).tolist() == expected

from peakwise.backtest.simulator import SimPool, Simulator


def _pool(tier: str = "onDemand", **extra: object) -> SimPool:
    base: dict[str, object] = {
        "name": "p",
        "tier": tier,
        "slots": 4,
        "throughput": 10.0,
        "node_price": 60.0,
        "reserved_nodes": 0,
        "max_nodes": 10,
        "provisioning_minutes": 5,
        "load_minutes": 2,
    }
    base.update(extra)
    return SimPool(**base)  # type: ignore[arg-type]


def test_new_nodes_take_provisioning_plus_load_and_are_billed_at_once() -> None:
    sim = Simulator([_pool()])
    ready_by_minute = []
    for t in range(9):
        ready, cost = sim.step(t, {"p": 3})
        ready_by_minute.append(ready["p"])
        assert cost == 1.0  # one node at $60/h, billed from the request
    assert ready_by_minute == [0] * 7 + [3, 3]


def test_room_on_existing_nodes_only_waits_for_the_model_to_load() -> None:
    sim = Simulator([_pool()])
    sim.start_with({"p": 2})
    ready = [sim.step(t, {"p": 4})[0]["p"] for t in range(3)]
    assert ready == [2, 2, 4]


def test_scale_down_drops_starting_replicas_first_and_stops_billing() -> None:
    sim = Simulator([_pool()])
    sim.start_with({"p": 4})
    sim.step(0, {"p": 8})  # asks for a second node
    ready, cost = sim.step(1, {"p": 4})
    assert ready["p"] == 4
    assert cost == 1.0


def test_reserved_nodes_are_paid_for_even_when_idle() -> None:
    sim = Simulator([_pool("reserved", reserved_nodes=2, node_price=30.0)])
    _, cost = sim.step(0, {})
    assert cost == 1.0


def test_spot_interruptions_are_seeded_and_take_replicas() -> None:
    def run(seed: int) -> list[int]:
        sim = Simulator([_pool("spot", interruptions_per_node_hour=6.0)], seed=seed)
        sim.start_with({"p": 40})
        return [sim.step(t, {"p": 40})[0]["p"] for t in range(60)]

    first, again = run(7), run(7)
    assert first == again
    assert min(first) < 40  # ten nodes at 6/h: interruptions within an hour are certain

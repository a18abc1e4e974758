"""Only losses Peakwise did not ask for count as spot interruptions, for every provider."""

from datetime import UTC, datetime, timedelta

from peakwise.operator.interruptions import EXPECTED_FOR, InterruptionTracker

NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


def test_a_node_deleted_out_of_the_blue_is_an_interruption() -> None:
    tracker = InterruptionTracker()
    assert tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    assert tracker.take("spot") == 1
    assert tracker.take("spot") == 0  # counted once


def test_removals_after_a_scale_down_are_the_operators_own() -> None:
    tracker = InterruptionTracker()
    tracker.scaled("spot", observed=3, desired=1, now=NOW)
    assert not tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    assert not tracker.node_event("spot", "n-2", [], deleted=True, now=NOW)
    # A third loss was not asked for.
    assert tracker.node_event("spot", "n-3", [], deleted=True, now=NOW)
    assert tracker.take("spot") == 1


def test_an_expected_removal_that_never_came_does_not_hide_a_later_interruption() -> None:
    tracker = InterruptionTracker()
    # E.g. a Karpenter limit lowered above what runs.
    tracker.scaled("spot", observed=1, desired=0, now=NOW)
    later = NOW + EXPECTED_FOR + timedelta(seconds=1)
    assert tracker.node_event("spot", "n-1", [], deleted=True, now=later)


def test_a_termination_notice_counts_once_before_the_node_goes() -> None:
    tracker = InterruptionTracker()
    notice = ["aws-node-termination-handler/spot-itn"]
    assert tracker.node_event("spot", "n-1", notice, deleted=False, now=NOW)
    assert not tracker.node_event("spot", "n-1", notice, deleted=False, now=NOW)
    assert not tracker.node_event("spot", "n-1", notice, deleted=True, now=NOW)
    assert tracker.take("spot") == 1


def test_karpenter_disruptions_are_voluntary() -> None:
    tracker = InterruptionTracker()
    taint = ["karpenter.sh/disrupted"]
    assert not tracker.node_event("spot", "n-1", taint, deleted=False, now=NOW)
    assert not tracker.node_event("spot", "n-1", taint, deleted=True, now=NOW)
    assert tracker.take("spot") == 0


def test_pools_are_counted_apart() -> None:
    tracker = InterruptionTracker()
    tracker.scaled("a", observed=1, desired=0, now=NOW)
    assert tracker.node_event("b", "b-1", [], deleted=True, now=NOW)
    assert not tracker.node_event("a", "a-1", [], deleted=True, now=NOW)
    assert (tracker.take("a"), tracker.take("b")) == (0, 1)


def test_asking_the_same_target_again_before_the_watch_catches_up_expects_nothing_more() -> None:
    tracker = InterruptionTracker()
    tracker.scaled("spot", observed=1, desired=0, now=NOW)
    # The next round still sees the node (its deletion not delivered yet) and asks 0 again.
    tracker.scaled("spot", observed=1, desired=0, now=NOW)
    assert not tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    # Scaled up again, the new node's loss is an interruption.
    tracker.scaled("spot", observed=0, desired=1, now=NOW)
    assert tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    assert tracker.take("spot") == 1


def test_a_higher_target_withdraws_removals_not_made_yet() -> None:
    tracker = InterruptionTracker()
    tracker.scaled("spot", observed=3, desired=1, now=NOW)  # the backend removes lazily
    tracker.scaled("spot", observed=3, desired=3, now=NOW)  # and need not now
    assert tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)


def test_nodes_the_backend_never_made_are_not_expected_to_go() -> None:
    tracker = InterruptionTracker()
    # A Karpenter limit of 5 nodes with 3 running, lowered to 2: one removal comes.
    tracker.scaled("spot", observed=3, desired=5, now=NOW)
    tracker.scaled("spot", observed=3, desired=2, now=NOW)
    assert not tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    assert tracker.node_event("spot", "n-2", [], deleted=True, now=NOW)

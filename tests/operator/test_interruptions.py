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
    tracker.scaled_down("spot", 2, NOW)
    assert not tracker.node_event("spot", "n-1", [], deleted=True, now=NOW)
    assert not tracker.node_event("spot", "n-2", [], deleted=True, now=NOW)
    # A third loss was not asked for.
    assert tracker.node_event("spot", "n-3", [], deleted=True, now=NOW)
    assert tracker.take("spot") == 1


def test_an_expected_removal_that_never_came_does_not_hide_a_later_interruption() -> None:
    tracker = InterruptionTracker()
    tracker.scaled_down("spot", 1, NOW)  # e.g. a Karpenter limit lowered above what runs
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
    tracker.scaled_down("a", 1, NOW)
    assert tracker.node_event("b", "b-1", [], deleted=True, now=NOW)
    assert not tracker.node_event("a", "a-1", [], deleted=True, now=NOW)
    assert (tracker.take("a"), tracker.take("b")) == (0, 1)

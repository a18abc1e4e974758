"""The fit queue serves namespaces in turn: a team with many fits queued does not make
another team's one fit wait behind all of them."""

from __future__ import annotations

import threading
import time

import pytest

from peakwise.operator.fitqueue import FairExecutor


def test_groups_are_served_in_turn_not_in_arrival_order() -> None:
    queue = FairExecutor(1)
    gate, order = threading.Event(), []
    try:
        blocker = queue.submit("busy", gate.wait, 5)
        while not blocker.running():
            time.sleep(0.01)
        busy = [queue.submit("busy", order.append, f"busy-{i}") for i in range(5)]
        quiet = queue.submit("quiet", order.append, "quiet-0")
        assert queue.queued() == {"busy": 5, "quiet": 1}
        gate.set()
        for job in (blocker, *busy, quiet):
            job.result(timeout=5)
        # FIFO would have run quiet-0 last; in turn it runs right after busy's next job.
        assert order == ["busy-0", "quiet-0", "busy-1", "busy-2", "busy-3", "busy-4"]
    finally:
        queue.shutdown()


def test_errors_reach_the_waiter_and_the_worker_goes_on() -> None:
    queue = FairExecutor(1)
    try:
        failing = queue.submit("a", int, "not a number")
        with pytest.raises(ValueError, match="invalid literal"):
            failing.result(timeout=5)
        assert queue.submit("a", int, "7").result(timeout=5) == 7
    finally:
        queue.shutdown()


def test_shutdown_cancels_what_is_queued() -> None:
    queue = FairExecutor(1)
    gate = threading.Event()
    running = queue.submit("a", gate.wait, 5)
    while not running.running():
        time.sleep(0.01)
    queued = queue.submit("b", int, "1")
    queue.shutdown()
    gate.set()
    assert queued.cancelled()
    assert running.result(timeout=5) is True
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit("a", int, "1")

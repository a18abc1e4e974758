"""The fit queue: fair across namespaces, so one team's many services never make another
team's fits wait behind them.

A FIFO queue serves fits in the order they were asked for: a team that creates 200
InferenceDeployments at once (or whose queries are slow to fit) would hold every other team's
first fit and refits behind its own. Here each group (a namespace) has its own queue and the
workers take one job from each group with work in turn, so a group waits behind at most one
job of every other group.

`concurrent.futures` has no executor with a choice of what runs next, so this is a small one
of our own: worker threads, one condition, futures from the standard library.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class FairExecutor:
    """Runs `submit(group, fn, *args)` jobs on `workers` threads, groups served in turn."""

    def __init__(self, workers: int, name: str = "fair-executor") -> None:
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, group: str, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the fit queue is shut down")
            self._queues.setdefault(group, deque()).append((future, fn, args))
            self._ready.notify()
        return future

    def queued(self) -> dict[str, int]:
        """Jobs waiting per group (not those running)."""
        with self._ready:
            return {group: len(jobs) for group, jobs in self._queues.items()}

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are cancelled, running ones finish."""
        with self._ready:
            self._closed = True
            for jobs in self._queues.values():
                for future, _, _ in jobs:
                    future.cancel()
            self._queues.clear()
            self._ready.notify_all()

    def _next(self) -> _Job | None:
        with self._ready:
            while not self._queues and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            # The group served longest ago is first; after one job it goes to the back.
            group, jobs = self._queues.popitem(last=False)
            job = jobs.popleft()
            if jobs:
                self._queues[group] = jobs
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as error:  # the future carries it to whoever waits
                future.set_exception(error)
            else:
                future.set_result(result)

"""Waiting for the cluster: poll a check until it returns something truthy, with a deadline.

End-to-end tests never sleep for a fixed time hoping something happened; they poll with
``wait_for`` and fail with what was last seen when the deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 90.0, every: float = 0.5) -> T:
    """The first truthy result of ``check()``; an exception counts as "not yet" (the API
    server or kubectl may fail while things settle) and is shown if the deadline passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
        except Exception as error:
            last = error
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(every)

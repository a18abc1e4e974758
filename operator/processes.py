"""Worker processes that never outlive the operator.

The model fits run in spawned worker processes. If the operator is killed (SIGKILL, the OOM
killer) it cannot stop them, and they would linger, each holding a fitted model's memory. On
Linux a worker asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`); in case
the parent died before that call took effect, and on other systems, a watcher thread ends the
worker once its parent is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading
import time

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Call first thing in a worker process started by the process `parent`: the worker dies
    when `parent` does."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watcher below does it

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()

"""Worker processes that never outlive the operator, and do not fight over the cores.

The model fits run in spawned worker processes. If the operator is killed (SIGKILL, the OOM
killer) it cannot stop them, and they would linger, each holding a fitted model's memory. On
Linux a worker asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`); in case
the parent died before that call took effect, and on other systems, a watcher thread ends the
worker once its parent is gone.

A worker also runs its BLAS libraries on one thread (`one_blas_thread`): it shares the cores
with the operator and the other workers, and OpenBLAS's own threads, which spin while they
wait for a core, would take it from them.
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


def one_blas_thread() -> None:
    """Run this process's BLAS libraries (numpy's and scipy's OpenBLAS) on one thread each.

    For a process that shares every core with other busy ones: there OpenBLAS's threads spin
    waiting for a core. In the fleet backtest (20 services, two workers beside the replay)
    they cost the workers a third more CPU, 180 s against 130-135 s, and the command 130 s
    of wall time against 101.5-106.8 s."""
    # threadpoolctl limits the libraries loaded so far: load both first.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=1, user_api="blas")


def start_worker(parent: int) -> None:
    """The initializer of a fit worker process started by `parent`: it exits with `parent`
    (`exit_with_parent`) and runs one BLAS thread (`one_blas_thread`)."""
    exit_with_parent(parent)
    one_blas_thread()

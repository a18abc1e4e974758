"""Keep the operator's resident memory close to what it actually holds.

Each round forecasts every service in worker threads, and each forecast copies the service's
history (about 160 kB for 14 days of minutes). glibc's malloc gives every thread its own
arena and keeps what is freed there for reuse, so with a thousand services the arenas fill
with hundreds of MiB of freed, fragmented memory that the process never hands back. The
operator's threads mostly wait on the network, so two arenas lose nothing, and trimming after
each round returns the freed pages to the kernel.

Both are glibc calls; with another C library (musl) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

# From glibc's malloc.h: the mallopt parameter that caps the number of arenas.
_M_ARENA_MAX = -8


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl has mallopt as a no-op but no malloc_trim: only glibc gets tuned.
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas(arenas: int = 2) -> bool:
    """Cap malloc's arenas; call it before the threads start. True if it took effect."""
    libc = _glibc()
    if libc is None:
        log.info("not glibc: malloc arenas left as they are")
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Return freed heap pages to the kernel. True if any memory was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False

"""Keeps freed heap memory for reuse, so batch-sized buffers are not faulted in again each time.

glibc gives memory back to the system as soon as the free space at the top of its heap passes
the trim threshold (about twice the largest block freed so far: a few MiB). A process that
allocates and frees buffers of about a batch (1 MiB reads, their lines, numpy temporaries, the
batch's bytes) many times a second then has every page of them faulted in anew; on a virtual
machine that was about a sixth of the logger's CPU at 100 MiB/s of log lines. Raising the
thresholds once at start keeps up to `trim_bytes` of freed memory for the next batch. A no-op
where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

__all__ = ["keep_freed_memory", "return_freed_memory", "trim", "trim_when_grown"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(trim_bytes: int = 64 << 20, mmap_bytes: int = 16 << 20) -> bool:
    """Blocks under `mmap_bytes` come from the heap, and freed heap memory is given back only
    past `trim_bytes`. Call once, at the start of an agent's process. Returns whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_bytes))
    if not done:
        log.debug("mallopt refused the heap thresholds")
    return done


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        return ctypes.CDLL(None)
    except (OSError, ValueError, AttributeError):
        return None


def return_freed_memory(mmap_bytes: int = 1 << 20) -> bool:
    """The control plane's choice, the opposite of `keep_freed_memory`: blocks of `mmap_bytes`
    and more are mapped on their own and unmapped when freed. glibc's default raises that
    threshold after each large block freed, so a burst of 10 MB requests left the server's heap
    at 1-2 GB after they were gone. Returns whether it took."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes))


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim); False elsewhere."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


async def trim_when_grown(interval_s: float = 10.0, grown_bytes: int = 64 << 20) -> None:
    """Run forever: every `interval_s`, when the process has grown by `grown_bytes` since the
    last time, collect cyclic garbage and give free heap pages back.

    Why the collection: every call that ends in an error keeps its request alive in a cycle
    (grpc keeps the abort's exception, whose traceback holds the handler's frames, which hold
    the call); only a full collection frees it, and full collections are rare. With 10 MB
    requests that was 200 MB of dead requests after 140 calls. A full collection pauses the
    process for tens of milliseconds: it runs only after such growth."""
    import asyncio
    import gc

    import psutil  # type: ignore[import-untyped]

    proc = psutil.Process()
    baseline = proc.memory_info().rss
    while True:
        await asyncio.sleep(interval_s)
        if proc.memory_info().rss - baseline > grown_bytes:
            gc.collect()
            await asyncio.to_thread(trim)
            baseline = proc.memory_info().rss

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

__all__ = ["keep_freed_memory"]

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

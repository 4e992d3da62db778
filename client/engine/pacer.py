"""Wake-ups at exact instants on an asyncio loop: a Linux timerfd, else a timer and a short spin.

asyncio timers are coarse (uvloop's resolution is 1 ms, and a loop sleeps in whole milliseconds),
so an open loop that sleeps on them sends up to a millisecond late, and one that spins instead
holds the core at 100 % and loses it to every other process the kernel schedules there. A timerfd
armed at an absolute CLOCK_MONOTONIC instant (the clock behind `perf_counter_ns` on Linux) and
watched with `add_reader` wakes the loop within tens of microseconds while it sleeps in the
kernel. Without a timerfd (not Linux, or no libc through ctypes) the pacer falls back to a loop
timer that fires `SPIN_NS` early and then yields to the loop until the instant has passed.

    pacer = Pacer(loop, on_due)      # on_due() is called at or after each armed instant
    pacer.arm(when_ns)               # one pending wake-up; arming again replaces it
    pacer.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Callable
from time import perf_counter_ns

__all__ = ["SPIN_NS", "Pacer", "precise_timer_available"]

SPIN_NS = 1_500_000  # fallback: wake this early on a loop timer, then yield until due

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                         ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def precise_timer_available() -> bool:
    return _LIBC is not None


class Pacer:
    """Calls `on_due()` once at (never before) each instant given to `arm`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None], *,
                 precise: bool = True) -> None:
        self._loop = loop
        self._on_due = on_due
        self._when = 0
        self._armed = False
        self._handle: asyncio.Handle | None = None
        self._fd = -1
        self._rearmed = False
        if precise and _LIBC is not None:
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._spec = _Itimerspec()
                self._spec_ref = ctypes.byref(self._spec)
                loop.add_reader(fd, self._on_readable)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    def arm(self, when_ns: int) -> None:
        self._when = when_ns
        self._armed = True
        if self._fd >= 0:
            value = self._spec.it_value
            value.tv_sec, value.tv_nsec = divmod(max(when_ns, 1), 1_000_000_000)
            if _LIBC is not None and _LIBC.timerfd_settime(
                    self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) == 0:
                self._rearmed = True
                return
            self._drop_fd()  # the timerfd refused: fall back for the rest of the run
        if self._handle is not None:
            self._handle.cancel()
        delay = when_ns - SPIN_NS - perf_counter_ns()
        if delay > 0:
            self._handle = self._loop.call_later(delay / 1e9, self._spin)
        else:
            self._handle = self._loop.call_soon(self._spin)

    def disarm(self) -> None:
        self._armed = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _on_readable(self) -> None:
        # Arming again (timerfd_settime) clears the expiry, so the read is needed only when the
        # callback does not arm: one syscall less per wake-up.
        self._rearmed = False
        self._due()
        if not self._rearmed and self._fd >= 0:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(self._fd, 8)

    def _spin(self) -> None:
        self._handle = None
        if perf_counter_ns() < self._when:
            self._handle = self._loop.call_soon(self._spin)
            return
        self._due()

    def _due(self) -> None:
        if not self._armed:
            return
        if perf_counter_ns() < self._when:  # a stale expiry of an earlier arm
            if self._fd < 0:
                self._handle = self._loop.call_soon(self._spin)
            return
        self._armed = False
        self._on_due()

    def _drop_fd(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        self.disarm()
        self._drop_fd()

"""One shared poller: one scheduler query per tick for all active jobs, slowing down while
nothing changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aifb.mesh.errors import SchedulerUnavailable
from aifb.server.jobs import JobStatus, Scheduler

__all__ = ["PollInterval", "Poller"]

log = logging.getLogger(__name__)


@dataclass
class PollInterval:
    """Interval policy: `fast` while something is in motion, growing x`factor` up to `slow`
    while nothing changes."""

    fast: float
    slow: float
    factor: float = 1.6
    current: float = 0.0

    def __post_init__(self) -> None:
        self.current = self.fast

    def next(self, *, busy: bool) -> float:
        self.current = self.fast if busy else min(self.slow, self.current * self.factor)
        return self.current


class Poller:
    """Polls `scheduler` for the ids `active_jobs()` returns and hands results to `apply`.

    `apply(statuses, asked)` receives the statuses found and the ids asked for, and returns True
    when it changed something or something is still in motion (keeps the fast tick). `wake()`
    makes the next tick happen now (after a create or delete).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        active_jobs: Callable[[], Sequence[str]],
        apply: Callable[[dict[str, JobStatus], Sequence[str]], Awaitable[bool]],
        interval: PollInterval,
    ) -> None:
        self.scheduler = scheduler
        self.active_jobs = active_jobs
        self.apply = apply
        self.interval = interval
        self.ticks = 0
        self.queries = 0
        self.last_tick = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aifb-poller")

    async def stop(self) -> None:
        """Stop the loop. Python 3.11's `wait_for` can swallow a cancellation that arrives as
        the wake event fires (a delete wakes the poller as the server stops), so the loop also
        checks a flag, and the cancel is repeated until the task has ended."""
        self._stopping = True
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def tick(self) -> bool:
        """One poll: at most one scheduler query. Returns whether to stay on the fast tick."""
        self.ticks += 1
        self.last_tick = time.monotonic()
        ids = list(self.active_jobs())
        statuses: dict[str, JobStatus] = {}
        if ids:
            self.queries += 1
            statuses = await self.scheduler.query(ids)
        # Called with no job too: a service whose ended job awaits its replacement has none.
        return await self.apply(statuses, ids)

    async def _run(self) -> None:
        while not self._stopping:
            # Ticks stay at least `fast` apart: a burst of creates or deletes (each wakes the
            # poller) costs one scheduler query per fast interval, not one per request. Before
            # this, 50 CreateService calls in a row ran ~50 squeue calls and registry scans,
            # and the poller took most of the server's time during the burst.
            since = time.monotonic() - self.last_tick
            if self.last_tick and since < self.interval.fast:
                await asyncio.sleep(self.interval.fast - since)
            self._wake.clear()
            try:
                busy = await self.tick()
            except SchedulerUnavailable as exc:
                log.warning("scheduler unavailable, backing off: %s", exc)
                busy = False
            except Exception:
                log.exception("poll tick failed")
                busy = False
            delay = self.interval.next(busy=busy)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
                self.interval.current = self.interval.fast
            except TimeoutError:
                pass

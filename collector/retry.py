"""Jittered exponential backoff with a bounded total time, shared by both forwarders."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from aifb.collector.config import RetryConfig

__all__ = ["Backoff"]


class Backoff:
    """Delays for one request's retries: full jitter over min(max, initial * multiplier**n).

    `next_delay()` returns None once waiting again would pass `max_elapsed_seconds`.
    """

    def __init__(self, config: RetryConfig, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._start = clock()
        self.attempts = 0

    def next_delay(self) -> float | None:
        cap = min(self.config.max_seconds,
                  self.config.initial_seconds * self.config.multiplier ** self.attempts)
        self.attempts += 1
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        if self._clock() - self._start + delay > self.config.max_elapsed_seconds:
            return None
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep before the next try; False when the budget is spent (or `stop` is set)."""
        delay = self.next_delay()
        if delay is None:
            return False
        if stop is None:
            await asyncio.sleep(delay)
            return True
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return True
        return False

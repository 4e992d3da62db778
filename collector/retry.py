"""Jittered exponential backoff for the forwarders: retries go on until the target answers or
the collector stops (what is being retried is not acknowledged to the agents yet)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from aifb.collector.config import RetryConfig

__all__ = ["Backoff"]


class Backoff:
    """Delays for one request's retries: full jitter over min(max, initial * multiplier**n).

    `overdue()` turns true once the request has been retried for `max_elapsed_seconds` (the
    forwarder then logs an error once; it keeps trying).
    """

    def __init__(self, config: RetryConfig, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._clock = clock
        self._start = clock()
        self.attempts = 0

    def next_delay(self) -> float:
        cap = min(self.config.max_seconds,
                  self.config.initial_seconds * self.config.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def overdue(self) -> bool:
        """True once the first try is `max_elapsed_seconds` old."""
        return self._clock() - self._start > self.config.max_elapsed_seconds

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep before the next try; False when `stop` is set (before or during the sleep)."""
        if stop is not None and stop.is_set():
            return False
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
            return True
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            return True
        return False

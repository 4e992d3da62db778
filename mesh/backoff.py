"""Jittered exponential backoff, the one retry policy of every component.

The n-th delay is uniform in [cap/2, cap] with cap = min(maximum, initial * multiplier**n):
agents reconnecting to the collector, discovery re-watching the server, and the collector's
forwarders retrying Prometheus and Loki all wait this way, so that many clients that failed
together do not come back together.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    # When the first try of this series was (monotonic seconds); reset() starts a new series.
    started: float = field(default_factory=time.monotonic)

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the first try of this series."""
        return time.monotonic() - self.started

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep the next delay; False when `stop` is set (before or during the sleep)."""
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

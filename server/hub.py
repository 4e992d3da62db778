"""Fan-out of service changes to watchers: every transition reaches every subscriber, in order.

Each subscriber owns a queue; `publish` puts the new record on every matching queue. (A single
asyncio.Condition, as in the health servicer, only lets a watcher see the latest state; watchers
here must see each transition, so queues.) A subscriber that falls more than `max_backlog`
records behind has its backlog collapsed to the latest record per service, so a slow client
costs bounded memory and still ends on the true state. `close()` wakes every subscriber before
shutdown so streams end instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aifb.server.model import ServiceRecord

__all__ = ["Hub", "Subscription"]

_CLOSED = object()


@dataclass(eq=False)
class Subscription:
    accept: Callable[[ServiceRecord], bool]
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    collapsed: int = 0


class Hub:
    def __init__(self, max_backlog: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self.max_backlog = max_backlog
        self.closed = False

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, accept: Callable[[ServiceRecord], bool]) -> Subscription:
        sub = Subscription(accept=accept)
        if self.closed:
            sub.queue.put_nowait(_CLOSED)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, record: ServiceRecord) -> None:
        for sub in self._subs:
            if sub.accept(record):
                if sub.queue.qsize() >= self.max_backlog:
                    self._collapse(sub)
                sub.queue.put_nowait(record)

    def _collapse(self, sub: Subscription) -> None:
        latest: dict[str, ServiceRecord] = {}
        while not sub.queue.empty():
            item = sub.queue.get_nowait()
            if isinstance(item, ServiceRecord):
                latest[item.id] = item
        sub.collapsed += 1
        for item in latest.values():
            sub.queue.put_nowait(item)

    def close(self) -> None:
        self.closed = True
        for sub in self._subs:
            sub.queue.put_nowait(_CLOSED)

    async def iterate(self, sub: Subscription) -> AsyncIterator[ServiceRecord]:
        """Yield the subscription's records until the hub closes."""
        while True:
            item = await sub.queue.get()
            if item is _CLOSED:
                return
            assert isinstance(item, ServiceRecord)
            yield item

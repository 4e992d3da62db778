"""Which process streams as which agent: one process per agent id and kind at a time.

Two processes pushing as the same agent (an embedded monitor and a node daemon both calling
themselves `monitor@node`) would interleave two sets of samples in the same series, which
Prometheus refuses as out of order, and share one sequence space. An agent names its id and a
per-process instance in the stream's headers; a second instance is refused at the stream's
start while the first one's stream is open. A reconnect of the same instance is no collision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aifb.mesh.auth import Principal
from aifb.mesh.errors import AlreadyExists

__all__ = ["AgentRegistry"]


@dataclass
class _Live:
    instance: str
    streams: int
    since: float


class AgentRegistry:
    """Open streams per (kind, pushing identity, agent id); entries live only while a stream
    is open, so the map is bounded by the open streams."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str, str], _Live] = {}

    def open(self, kind: str, agent_id: str, instance: str, who: Principal | None
             ) -> Callable[[], None]:
        """Register a stream; the returned function ends it. Raises AlreadyExists when
        another instance streams as this agent now."""
        key = (kind, "" if who is None else f"{who.user}/{who.service}", agent_id)
        live = self._live.get(key)
        if live is not None and live.instance != instance:
            raise AlreadyExists(
                f"agent id {agent_id!r} is already pushing {kind} from another process "
                f"(for {time.time() - live.since:.0f}s): each agent needs its own id; set "
                "`agent_id` in the monitor: or logger: config section (AIFB_MONITOR__AGENT_ID, "
                "AIFB_LOGGER__AGENT_ID), or serve the agents on different ports")
        if live is None:
            live = self._live[key] = _Live(instance, 0, time.time())
        live.streams += 1

        def close() -> None:
            found = self._live.get(key)
            if found is live:
                live.streams -= 1
                if live.streams <= 0:
                    del self._live[key]

        return close

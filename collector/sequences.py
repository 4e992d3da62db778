"""Per-agent sequence windows, and the acknowledgements of resends.

Each pushing identity and agent has a window of the sequence numbers delivered (the last `size`)
and of those in flight. A resend of a delivered batch is answered "duplicate" at once; a resend
of one still in flight gets an ack that follows the original's delivery (`echo`), so no second
copy is queued; anything else is a new batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aifb.collector.model import NotDelivered, PushOutcome

__all__ = ["Ack", "AgentWindow", "SequenceWindow", "answered", "observed", "resend"]

Ack = asyncio.Future[PushOutcome]


@dataclass
class AgentWindow:
    highest: int = 0
    seen: set[int] = field(default_factory=set)
    # Accepted, not yet settled: a resend of one of these waits for the same delivery.
    inflight: dict[int, Ack] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def idle(self) -> bool:
        return not self.inflight and not self.lock.locked()


class SequenceWindow:
    """Which sequence numbers each agent has had delivered (the last `size` of them), and
    which are in flight.

    A number already delivered, or older than the window, is a duplicate (a resend)."""

    def __init__(self, size: int, max_agents: int = 50_000) -> None:
        self.size = size
        self.max_agents = max_agents
        self.agents: dict[str, AgentWindow] = {}

    def agent(self, agent_id: str) -> AgentWindow:
        found = self.agents.get(agent_id)
        if found is None:
            found = self.agents[agent_id] = AgentWindow()
            if len(self.agents) > self.max_agents:  # the longest-known agent that is idle
                oldest = next((k for k, w in self.agents.items() if w.idle()), None)
                if oldest is not None and oldest != agent_id:
                    del self.agents[oldest]
        return found

    def forget_if_unused(self, agent_id: str) -> None:
        """Drop the window of an agent none of whose batches was accepted (a refused batch
        must not leave state behind: hostile ids would grow the map without end)."""
        window = self.agents.get(agent_id)
        if window is not None and window.highest == 0 and not window.seen \
                and not window.inflight:
            del self.agents[agent_id]

    def is_duplicate(self, agent: AgentWindow, sequence: int) -> bool:
        # 0 is no sequence number: never a resend, so validation refuses it (INVALID_ARGUMENT).
        return sequence > 0 and (sequence in agent.seen or sequence <= agent.highest - self.size)

    def mark(self, agent: AgentWindow, sequence: int) -> None:
        agent.seen.add(sequence)
        agent.highest = max(agent.highest, sequence)
        if len(agent.seen) > 2 * self.size:
            floor = agent.highest - self.size
            agent.seen = {s for s in agent.seen if s > floor}


def resend(seqs: SequenceWindow, agent: AgentWindow, sequence: int) -> Ack | None:
    """The ack of a resend (one in flight waits for its delivery), None for a new batch."""
    if sequence in agent.inflight:
        return echo(agent.inflight[sequence], sequence)
    if seqs.is_duplicate(agent, sequence):
        return answered(PushOutcome(sequence, duplicate=True))
    return None


def observed(future: asyncio.Future[Any]) -> None:
    """Mark a settled future's exception as seen (its stream may be gone)."""
    if not future.cancelled():
        future.exception()


def answered(outcome: PushOutcome) -> Ack:
    ack: Ack = asyncio.get_running_loop().create_future()
    ack.set_result(outcome)
    return ack


def echo(original: Ack, sequence: int) -> Ack:
    """The ack of a resend of a batch still in flight: "duplicate" once the original is
    delivered, the original's error if it is not."""
    ack: Ack = asyncio.get_running_loop().create_future()

    def settle(done: Ack) -> None:
        if ack.done():
            return
        exc = done.exception() if not done.cancelled() else NotDelivered("cancelled")
        if exc is not None:
            ack.set_exception(exc)
        else:
            ack.set_result(PushOutcome(sequence, duplicate=True))

    original.add_done_callback(settle)
    ack.add_done_callback(observed)
    return ack

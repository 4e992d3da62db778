"""The workload plug-in interface: prepare, one coroutine per request returning an Outcome, extras.

A workload knows its protocol (HTTP, OpenAI chat, a vector DB); the engine knows time. The engine
calls `prepare()` once, then `request(seq)` as often as the load shape demands (concurrently in
open loop), then `extra_metrics()` and `close()`. `request` must not raise for a failed request:
it returns `Outcome(ok=False, error="<stable kind>")`; an exception is counted as an error of kind
`exception:<Type>`. Latency is measured by the engine from the intended send time to
`Outcome.end_ns` (or to when the coroutine returned); `sent_ns`, when known, also gives the
service time (from the actual wire send, the measure that hides queueing: reported beside it).
Streaming workloads report when the first chunk/token arrived (`first_chunk_ns`, giving TTFT)
and every chunk's arrival (`chunk_ns`, giving inter-token latency); `values` carries
per-request numbers (tokens, bytes) that the engine sums.
All timestamps are `time.perf_counter_ns()`.

A workload that can send without a coroutine also implements `CallbackWorkload.start_request`:
the open loop then calls it from its timer callback, the workload writes at once (or queues for a
connection) and reports the write and the outcome to a `RequestSink`; no task per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["CallbackWorkload", "Outcome", "RequestSink", "WarmWorkload", "Workload"]


@dataclass(slots=True)
class Outcome:
    """What one request produced."""

    ok: bool
    error: str = ""  # stable error kind, e.g. "status_503", "timeout", "connect"; "" when ok
    status: int = 0  # protocol status (HTTP status code), 0 when none
    end_ns: int = 0  # completion time; 0 = the engine takes the time the coroutine returned
    sent_ns: int = 0  # when the request actually went on the wire (0 = unknown): service time
    first_chunk_ns: int = 0  # streaming: first chunk/token arrival (TTFT); 0 = not streaming
    chunk_ns: list[int] | None = None  # streaming: every chunk's arrival, in order (ITL)
    values: dict[str, float] | None = None  # per-request numbers the engine sums by name


@runtime_checkable
class Workload(Protocol):
    """A kind of load. Implementations: `aifb.client.workloads.http.HttpWorkload`."""

    name: str

    async def prepare(self) -> None:
        """Open connections, load datasets; called once before the first request."""

    async def request(self, seq: int) -> Outcome:
        """Send request number `seq` (0, 1, ...) and wait for its outcome."""

    def extra_metrics(self) -> dict[str, float]:
        """Workload-specific totals for the report (connections opened, bytes received...)."""

    async def close(self) -> None:
        """Release everything prepare() opened."""


class RequestSink(Protocol):
    """Where a CallbackWorkload reports each request: `sent` once, then `done` once."""

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        """The request went on the wire at `sent_ns` (or was given up on before it could)."""

    def done(self, intended_ns: int, outcome: Outcome) -> None:
        """The request finished (ok or not); `outcome.end_ns` must be set."""


@runtime_checkable
class CallbackWorkload(Workload, Protocol):
    """A workload that sends from a callback (`aifb.client.workloads.http.HttpWorkload`)."""

    def start_request(self, seq: int, intended_ns: int, sink: RequestSink) -> None:
        """Send request `seq` now or as soon as a connection is free; never raises, never
        drops: every call ends in exactly one `sink.sent` and one `sink.done`."""


@runtime_checkable
class WarmWorkload(Workload, Protocol):
    """A workload that can open ahead what an open loop would otherwise open mid-run."""

    async def warm(self) -> None:
        """Called after prepare() in open loop only (a closed loop opens one connection per
        user as users start): a request that waits for a connect counts it as schedule lag.
        Best effort: a failure here is logged and the run goes on."""

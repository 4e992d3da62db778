"""Multi-turn sessions in the load engine: a closed-loop user or an open-loop arrival runs one
conversation, turn by turn, and every turn is recorded as a request of its own.

A workload that holds conversations (`SessionWorkload`: `openai-chat` with `turns` > 1) opens
one `Session` per conversation; `SessionRunner.run` sends its turns in order, waits each turn's
think time after the previous reply ended, and records each turn like any request (latency,
TTFT, errors, per-request samples), because a turn is what a server sees. Think time is never
latency or lag: a turn's clock starts when its think time is over (open loop: the instant it
was due, so only a late wake-up shows, as lag; closed loop: when it is sent). A failed turn ends
its session (the next one starts); a stop, the end of the run or `max_requests` cuts a session
between turns.

While sessions run, `Recorder.in_flight` counts live sessions, not requests: it is what bounds
an open loop (an arrival finding `max_in_flight` sessions live is dropped and counted) and what
a closed loop keeps at `users`.

Per-turn figures go into the result under `turn_key` names, so they travel and merge like every
other figure: histograms `turn<k>_ttft` and `turn<k>_latency`, values `turn<k>_requests`,
`turn<k>_errors`, `turn<k>_input_tokens` and `turn<k>_output_tokens` (k = 1, 2, ...), with
counters `sessions_started`, `sessions_completed`, `sessions_failed` and `sessions_cut`. They
cover what was intended in the measurement window: a turn by its own intended time, a session by
its first turn's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from time import perf_counter_ns
from typing import Protocol, runtime_checkable

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.recorder import Recorder
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import Outcome, Workload

__all__ = ["MAX_TURNS", "SESSIONS_NOT_CANCELLED", "SESSION_COUNTERS", "Session",
           "SessionRunner", "SessionWorkload", "parse_turn_key", "turn_key"]

log = logging.getLogger(__name__)

MAX_TURNS = 100  # per session: bounds the per-turn figures a run can create
SESSION_COUNTERS = ("sessions_started", "sessions_completed", "sessions_failed", "sessions_cut")
_TURN_KEY = re.compile(r"^turn(\d{1,3})_([a-z_]+)$")


def turn_key(turn: int, name: str) -> str:
    """The result key of figure `name` ("ttft", "input_tokens"...) for turn `turn` (from 1)."""
    return f"turn{turn}_{name}"


def parse_turn_key(key: str) -> tuple[int, str] | None:
    """(turn, name) for a `turn_key` name, else None."""
    m = _TURN_KEY.match(key)
    return (int(m.group(1)), m.group(2)) if m else None


class Session(Protocol):
    """One conversation: `turns` requests sent in order, each carrying the history so far."""

    @property
    def turns(self) -> int:
        """How many turns the conversation has (>= 1)."""

    def think_ns(self, turn: int) -> int:
        """The pause before turn `turn` (1 .. turns - 1), counted from the previous reply's
        end."""

    async def request(self, turn: int) -> Outcome:
        """Send turn `turn` (0, 1, ... in order) and keep its reply in the history. Like
        `Workload.request`, a failed request returns an Outcome with `ok=False`."""


@runtime_checkable
class SessionWorkload(Workload, Protocol):
    """A workload that can run conversations; the engine uses them when `multi_turn` is set."""

    @property
    def multi_turn(self) -> bool:
        """False: the run sends single requests through `request(seq)`."""

    def session(self, number: int) -> Session:
        """Conversation `number` (0, 1, ... in the order sessions start)."""


class _Unopened:
    """A session the workload failed to open: its one turn fails with the error's kind."""

    turns = 1

    def __init__(self, error: str) -> None:
        self.error = error

    def think_ns(self, turn: int) -> int:
        return 0

    async def request(self, turn: int) -> Outcome:
        return Outcome(ok=False, error=self.error)


SESSIONS_NOT_CANCELLED = ("cancellation picks single requests; a multi-turn session's turns are "
                          "not cancelled (set cancel_fraction 0, or turns 1)")


class SessionRunner:
    """Runs the sessions of one load run (see the module)."""

    def __init__(self, workload: SessionWorkload, rec: Recorder, spec: LoadSpec, *,
                 next_seq: Callable[[], int | None], stopping: Callable[[], bool],
                 check_budget: Callable[[Recorder], None]) -> None:
        self._workload, self._rec, self._spec = workload, rec, spec
        self._open = spec.mode is Mode.OPEN
        self._end_ns = rec.start_ns + int(spec.total_s * 1e9)
        self._next_seq, self._stopping, self._check_budget = next_seq, stopping, check_budget
        self.started = 0  # sessions begun in the whole run: the number the next one gets
        # Resolved by stop(): every session thinking wakes at once (no polling per session).
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for name in SESSION_COUNTERS:
            rec.result.counters.setdefault(name, 0)

    def stop(self) -> None:
        """The run is stopping: sessions waiting out a think time end now (cut)."""
        if not self._stopped.done():
            self._stopped.set_result(None)

    async def run(self, intended_ns: int, keep: Callable[[], bool] | None = None) -> None:
        """One session, its first turn intended at `intended_ns` (closed loop: now). The caller
        took the first turn's request number and counted the session in `rec.in_flight`, which
        is released here; each later turn takes its own number (`max_requests` counts turns).
        `keep` (a closed-loop user's) is asked between turns: False cuts the session."""
        rec = self._rec
        number, self.started = self.started, self.started + 1
        counted = rec.window_start_ns <= intended_ns < rec.window_end_ns
        counters = rec.result.counters
        if counted:
            counters["sessions_started"] += 1
        ending = "sessions_cut"
        try:
            try:
                session: Session = self._workload.session(number)
            except Exception as exc:
                log.warning("session %d could not be opened: %s", number, exc)
                session = _Unopened(f"exception:{type(exc).__name__}")
            turns = max(min(session.turns, MAX_TURNS), 1)
            turn = 0
            while True:
                ok, end_ns = await self._turn(session, turn, intended_ns)
                if not ok:
                    ending = "sessions_failed"
                    break
                turn += 1
                if turn >= turns:
                    ending = "sessions_completed"
                    break
                due_ns = end_ns + max(session.think_ns(turn), 0)
                if not await self._think(due_ns, keep) or self._next_seq() is None:
                    break
                intended_ns = due_ns if self._open else perf_counter_ns()
        finally:
            rec.in_flight -= 1
            if counted:
                counters[ending] += 1
        if ending == "sessions_failed":
            await asyncio.sleep(0)  # a failure may come back without any I/O wait

    async def _turn(self, session: Session, turn: int, intended_ns: int) -> tuple[bool, int]:
        """Send and record one turn: (ok, when its reply ended)."""
        rec = self._rec
        if self._open:
            rec.sent(intended_ns, perf_counter_ns())
        else:
            rec.sent_unscheduled(intended_ns)
        try:
            out = await session.request(turn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            out = Outcome(ok=False, error=f"exception:{type(exc).__name__}")
        end_ns = out.end_ns or perf_counter_ns()
        rec.done(intended_ns, out, end_ns)
        if rec.window_start_ns <= intended_ns < rec.window_end_ns:
            self._record_turn(turn + 1, intended_ns, out, end_ns)
        if not out.ok and self._spec.budget.count_spent(rec.all_errors):
            self._check_budget(rec)
        return out.ok, end_ns

    def _record_turn(self, k: int, intended_ns: int, out: Outcome, end_ns: int) -> None:
        values = self._rec.result.values

        def add(name: str, amount: float) -> None:
            key = turn_key(k, name)
            values[key] = values.get(key, 0.0) + amount

        if not out.ok:
            add("errors", 1.0)
            return
        add("requests", 1.0)
        self._histogram(turn_key(k, "latency")).record_us((end_ns - intended_ns) // 1000)
        if out.first_chunk_ns:
            self._histogram(turn_key(k, "ttft")).record_us(
                (out.first_chunk_ns - intended_ns) // 1000)
        for name in ("input_tokens", "output_tokens"):
            if out.values and name in out.values:
                add(name, out.values[name])

    def _histogram(self, key: str) -> LatencyHistogram:
        # The result's own dict: the recorder flushes every histogram in it at each tick.
        hists = self._rec.result.histograms
        hist = hists.get(key)
        if hist is None:
            hist = hists[key] = LatencyHistogram()
        return hist

    async def _think(self, due_ns: int, keep: Callable[[], bool] | None) -> bool:
        """Wait until `due_ns`; False when the session ends instead: the next turn would fall
        after the run's end, the run stops, or `keep` says so."""
        if due_ns >= self._end_ns or self._stopping():
            return False
        left = due_ns - perf_counter_ns()
        if left > 0:
            await asyncio.wait((self._stopped,), timeout=left / 1e9)
        return not self._stopping() and (keep is None or keep())

"""The load engine: runs a LoadSpec against a Workload, with live progress, cancel and a result.

    run = LoadRun(spec, workload)          # validates nothing more: LoadSpec already did
    run.start()                            # in a running event loop; returns at once
    async for sample in run.progress():    # per-interval Progress, replayed then live
        ...
    run.cancel("user asked")               # ends CANCELLED; stats of what completed are kept
    result = await run.wait()              # LoadResult: SUCCEEDED, FAILED (reason) or CANCELLED

Open loop sends each request at its scheduled time and measures latency from that intended time.
A Pacer (a timerfd on Linux: the loop sleeps in the kernel until the instant) calls back when the
next arrival is due; the callback sends everything due. A CallbackWorkload writes from there and
reports the write time (schedule lag = write - intended, so the wait for a connection counts);
other workloads get a task per request and the lag runs to when that task starts. A request over
`max_in_flight` is counted as dropped; none is skipped silently. Explicit arrival times (a trace
replay, `LoadSpec.offsets_ns`) replace the rate: request n goes out at offset n. A request chosen
for cancellation (`aifb.client.engine.cancellation`) runs as a task under a deadline whatever
the workload; when the deadline passes first the task is cancelled, which closes its connection
(`HttpPool.release` closes one whose reply is still coming), and it is counted as cancelled.
During the run the collector's
young generations are collected less often and what existed before is frozen (`gc.freeze`), so
no collection walks the whole heap between two sends.
Closed loop runs `users` coroutines back to back (a profile can ramp or step the number).
With a multi-turn workload (`aifb.client.engine.sessions`) a closed-loop user or an open-loop
arrival runs one whole session instead of one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from time import perf_counter_ns

from aifb.client.engine.cancellation import Cancellation
from aifb.client.engine.pacer import Pacer
from aifb.client.engine.progress import Progress
from aifb.client.engine.recorder import Recorder
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.samples import RequestLog
from aifb.client.engine.schedule import arrival_offsets_ns
from aifb.client.engine.sessions import SESSIONS_NOT_CANCELLED, SessionRunner, SessionWorkload
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import CallbackWorkload, Outcome, WarmWorkload, Workload
from aifb.mesh.errors import InvalidArgument

__all__ = ["LoadRun", "ProgressCallback", "StartHook", "run_load"]

log = logging.getLogger(__name__)
ProgressCallback = Callable[[Progress], None]
# Called once after prepare(); returns the perf_counter_ns instant the run starts at (waited
# for), so several engines (Spark partitions) share one start. Raising fails the run.
StartHook = Callable[[], Awaitable[int]]
_TICK_PREPARE_NS = 20_000_000  # the ticker's steps start this long before each tick
_STOP_CHECK_NS = 50_000_000  # a long gap in the schedule is slept in steps this long
_GC_GEN0 = 50_000  # gen-0 threshold during a run (CPython's default: 700)


class LoadRun:
    def __init__(self, spec: LoadSpec, workload: Workload, *,
                 on_progress: ProgressCallback | None = None,
                 start_at: StartHook | None = None, record_samples: int = 0) -> None:
        self.spec = spec
        self._sample_limit = record_samples  # > 0: keep up to this many per-request rows
        self._start_at = start_at
        self.workload = workload
        self.state = RunState.PENDING
        self.reason = ""
        self.samples: list[Progress] = []
        self._callbacks: list[ProgressCallback] = [on_progress] if on_progress else []
        self._changed = asyncio.Condition()
        self._stopping = False
        self._final_state = RunState.SUCCEEDED
        self._task: asyncio.Task[LoadResult] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._rec: Recorder | None = None
        self._sink: _Sink | None = None
        self._pacer: Pacer | None = None
        self._session_runner: SessionRunner | None = None
        self._seq = 0
        self._cancel = Cancellation(spec.cancel_fraction, spec.cancel_after_s, spec.seed)
        if self._cancel.active and isinstance(workload, SessionWorkload) and workload.multi_turn:
            raise InvalidArgument(SESSIONS_NOT_CANCELLED, field="cancel_fraction")

    # -- control
    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("a LoadRun starts once")
        self._task = asyncio.get_running_loop().create_task(self._main())

    def cancel(self, reason: str = "cancelled") -> None:
        self._stop(RunState.CANCELLED, reason)

    async def wait(self) -> LoadResult:
        if self._task is None:
            raise RuntimeError("start() the run first")
        return await asyncio.shield(self._task)

    async def progress(self) -> AsyncIterator[Progress]:
        """Every sample so far, then each new one; ends when the run is terminal."""
        index = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(partial(self._has_news, index))
                batch = self.samples[index:]
                done = self.state.terminal
            for sample in batch:
                yield sample
            index += len(batch)
            if done and index >= len(self.samples):
                return

    def _has_news(self, index: int) -> bool:
        return index < len(self.samples) or self.state.terminal

    def _stop(self, state: RunState, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._final_state = state
        self.reason = reason
        if self._pacer is not None:
            self._pacer.arm(0)  # the open loop notices at once, not at its next send
        if self._session_runner is not None:
            self._session_runner.stop()  # sessions thinking end now
        if state is not RunState.SUCCEEDED:
            log.info("load run stopping: %s (%s)", state.value, reason)

    # -- the run
    async def _main(self) -> LoadResult:
        spec = self.spec
        await self._set_state(RunState.RUNNING)
        try:
            await self.workload.prepare()
        except Exception as exc:
            log.warning("workload %s failed to prepare: %s", self.workload.name, exc)
            self._stop(RunState.FAILED, f"workload prepare failed: {exc}")
            with contextlib.suppress(Exception):  # a half-prepared workload may hold sockets
                await self.workload.close()
            result = LoadResult(mode=spec.mode.value, workload=self.workload.name)
            return await self._finish(result, None)
        if spec.mode is Mode.OPEN and isinstance(self.workload, WarmWorkload):
            try:
                await self.workload.warm()
            except Exception as exc:  # connections then open on demand, as without warm()
                log.warning("workload %s failed to warm up: %s", self.workload.name, exc)
        try:
            start = await self._start_instant()
        except Exception as exc:
            self._stop(RunState.FAILED, f"start alignment failed: {exc}")
            with contextlib.suppress(Exception):
                await self.workload.close()
            result = LoadResult(mode=spec.mode.value, workload=self.workload.name)
            return await self._finish(result, None)
        rec = self._rec = Recorder(start, start + int(spec.warmup_s * 1e9),
                                   start + int((spec.total_s - spec.cooldown_s) * 1e9))
        if self._sample_limit > 0:
            rec.samples = RequestLog(self._sample_limit, rec.start_ns, rec.window_start_ns,
                                     rec.window_end_ns)
        ticker = asyncio.create_task(self._ticker(rec))
        _gc_quiet_enter()
        try:
            if spec.mode is Mode.OPEN:
                await self._open_loop(rec)
            else:
                await self._closed_loop(rec)
            await self._drain()
        except asyncio.CancelledError:
            self._stop(RunState.CANCELLED, "the engine task was cancelled")
            await self._drain(0.0)
            raise
        finally:
            _gc_quiet_exit()
            ticker.cancel()
            self._emit(rec.tick(perf_counter_ns(), self._target_rate(rec)))
            try:
                await self.workload.close()
            except Exception as exc:
                log.warning("workload %s failed to close: %s", self.workload.name, exc)
        end = min(perf_counter_ns(), rec.window_end_ns)
        rec.result.measured_s = max(end - rec.window_start_ns, 0) / 1e9
        return await self._finish(rec.result, rec)

    async def _start_instant(self) -> int:
        if self._start_at is None:
            return perf_counter_ns()
        start = await self._start_at()
        while (delay := start - perf_counter_ns()) > 0:
            await asyncio.sleep(delay / 1e9)
        return start

    async def _finish(self, result: LoadResult, rec: Recorder | None) -> LoadResult:
        spec = self.spec
        result.mode, result.workload = spec.mode.value, self.workload.name
        if spec.mode is Mode.OPEN:
            result.target_rate = spec.mean_rate(spec.warmup_s, spec.total_s - spec.cooldown_s)
        else:
            result.users = round(spec.level_profile().peak)
        if rec is not None:
            rec.flush()
            result.errors_by_kind = dict(rec.errors_by_kind)
            result.samples = rec.samples
        try:
            result.extra = dict(self.workload.extra_metrics())
        except Exception as exc:
            log.warning("workload %s extra_metrics failed: %s", self.workload.name, exc)
        self._stop(RunState.SUCCEEDED, "")
        result.state, result.reason = self._final_state, self.reason
        await self._set_state(self._final_state)
        return result

    async def _set_state(self, state: RunState) -> None:
        async with self._changed:
            self.state = state
            self._changed.notify_all()

    def _emit(self, sample: Progress) -> None:
        self.samples.append(sample)
        for cb in self._callbacks:
            try:
                cb(sample)
            except Exception as exc:
                log.warning("progress callback failed: %s", exc)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _target_rate(self, rec: Recorder) -> float:
        if self.spec.mode is not Mode.OPEN:
            return 0.0
        # Requests the schedule asked for over the interval now closing, per second of it (so
        # it compares with achieved_rate; a last interval running past the end asks for less).
        t0 = (rec.interval_start_ns - rec.start_ns) / 1e9
        t1 = (perf_counter_ns() - rec.start_ns) / 1e9
        return round(self.spec.mean_rate(max(t0, 0.0), t1), 3)

    async def _ticker(self, rec: Recorder) -> None:
        spec, k = self.spec, 1
        while True:
            due = rec.start_ns + int(k * spec.interval_s * 1e9)
            # Most of the work of closing a second is done just before it, a step per loop
            # iteration, so that an open loop's sends due meanwhile are not held up behind it;
            # the tick itself then folds only the last few milliseconds.
            await asyncio.sleep(max(due - _TICK_PREPARE_NS - perf_counter_ns(), 0) / 1e9)
            for _ in rec.prepare_tick():
                await asyncio.sleep(0)
            await asyncio.sleep(max(due - perf_counter_ns(), 0) / 1e9)
            self._emit(rec.tick(perf_counter_ns(), self._target_rate(rec)))
            self._check_budget(rec)
            k += 1

    def _check_budget(self, rec: Recorder) -> None:
        reason = self.spec.budget.exceeded(rec.all_errors, rec.all_completed, rec.errors_by_kind)
        if reason is not None:
            self._stop(RunState.FAILED, reason)

    def _next_seq(self) -> int | None:
        seq = self._seq
        if self.spec.max_requests and seq >= self.spec.max_requests:
            self._stop(RunState.SUCCEEDED, "")
            return None
        self._seq = seq + 1
        return seq

    def _sessions(self, rec: Recorder) -> SessionRunner | None:
        """The session runner when the workload runs conversations, else None."""
        wl = self.workload
        if not (isinstance(wl, SessionWorkload) and wl.multi_turn):
            return None
        runner = self._session_runner = SessionRunner(
            wl, rec, self.spec, next_seq=self._next_seq, stopping=lambda: self._stopping,
            check_budget=self._check_budget)
        return runner

    async def _call(self, seq: int) -> Outcome:
        try:
            return await self.workload.request(seq)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Outcome(ok=False, error=f"exception:{type(exc).__name__}")

    async def _call_or_cancel(self, seq: int) -> Outcome | None:
        """The request under its cancellation deadline when it was chosen for one; None when
        the deadline came first (the request's task was cancelled: its connection closed)."""
        cancel = self._cancel
        if not (cancel.active and cancel.chosen(seq)):
            return await self._call(seq)
        try:
            async with asyncio.timeout(cancel.after_s) as scope:
                return await self._call(seq)
        except TimeoutError:
            if scope.expired():
                return None
            raise

    async def _one(self, rec: Recorder, seq: int, intended: int) -> None:
        rec.sent(intended, perf_counter_ns())
        out = await self._call_or_cancel(seq)
        rec.in_flight -= 1
        if out is None:
            rec.cancelled(intended)
            return
        rec.done(intended, out, out.end_ns or perf_counter_ns())
        if not out.ok and self.spec.budget.count_spent(rec.all_errors):
            self._check_budget(rec)

    async def _open_loop(self, rec: Recorder) -> None:
        spec, start, workload = self.spec, rec.start_ns, self.workload
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        explicit = spec.offsets_ns is not None
        offsets = iter(spec.offsets_ns if spec.offsets_ns is not None else arrival_offsets_ns(
            spec.level_profile(), spec.arrival, burstiness=spec.burstiness, seed=spec.seed))
        sessions = self._sessions(rec)
        fast = (workload if isinstance(workload, CallbackWorkload) and sessions is None
                else None)
        cancel = self._cancel if self._cancel.active else None
        sink = self._sink = _Sink(self, rec) if fast is not None else None
        tasks = self._requests
        discard = tasks.discard
        max_in_flight = spec.max_in_flight
        nxt = start + next(offsets, -start - 1)

        def due() -> None:
            nonlocal nxt
            now = perf_counter_ns()
            while nxt <= now:
                if self._stopping or nxt < start:
                    break
                intended = nxt
                offset = next(offsets, None)
                nxt = start - 1 if offset is None else start + offset
                if rec.in_flight >= max_in_flight:
                    rec.dropped(intended)
                    if explicit:  # request n stays arrival n (a trace's entry n)
                        self._seq += 1
                    continue
                seq = self._next_seq()
                if seq is None:
                    break
                rec.in_flight += 1
                if fast is not None and sink is not None and (
                        cancel is None or not cancel.chosen(seq)):
                    try:
                        fast.start_request(seq, intended, sink)
                    except Exception as exc:
                        sink.failed(intended, exc)
                else:
                    task = loop.create_task(self._one(rec, seq, intended) if sessions is None
                                            else sessions.run(intended))
                    tasks.add(task)
                    task.add_done_callback(discard)
                now = perf_counter_ns()
            if self._stopping or nxt < start:
                pacer.close()
                if not finished.done():
                    finished.set_result(None)
                return
            pacer.arm(min(nxt, now + _STOP_CHECK_NS))

        pacer = self._pacer = Pacer(loop, due)
        try:
            due()
            await finished
        finally:
            self._pacer = None
            pacer.close()

    async def _closed_loop(self, rec: Recorder) -> None:
        spec, start = self.spec, rec.start_ns
        end = start + int(spec.total_s * 1e9)
        prof = spec.level_profile()
        users: dict[int, asyncio.Task[None]] = {}
        target = [0]
        sessions = self._sessions(rec)

        async def user(uid: int) -> None:
            while not self._stopping and uid < target[0]:
                now = perf_counter_ns()
                if now >= end:
                    return
                seq = self._next_seq()
                if seq is None:
                    return
                rec.in_flight += 1
                if sessions is not None:
                    await sessions.run(now, keep=lambda: uid < target[0])
                    continue
                rec.sent_unscheduled(now)
                out = await self._call_or_cancel(seq)
                rec.in_flight -= 1
                if out is None:
                    rec.cancelled(now)
                    continue
                rec.done(now, out, out.end_ns or perf_counter_ns())
                if not out.ok:
                    if spec.budget.count_spent(rec.all_errors):
                        self._check_budget(rec)
                    await asyncio.sleep(0)  # a failure may come back without any I/O wait

        while not self._stopping and perf_counter_ns() < end:
            target[0] = round(prof.level_at((perf_counter_ns() - start) / 1e9))
            for uid in range(target[0]):
                if uid not in users or users[uid].done():
                    users[uid] = asyncio.create_task(user(uid))
            if all(t.done() for t in users.values()) and self._stopping:
                break
            await asyncio.sleep(min(0.05, max(end - perf_counter_ns(), 0) / 1e9))
        self._requests.update(t for t in users.values() if not t.done())

    async def _drain(self, timeout_s: float | None = None) -> None:
        wait_s = self.spec.drain_s if timeout_s is None else timeout_s
        sink, rec = self._sink, self._rec
        if sink is not None and rec is not None and sink.live:
            if rec.in_flight > 0 and wait_s:
                sink.idle = asyncio.get_running_loop().create_future()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sink.idle, wait_s)
            if rec.in_flight > 0:  # what is still out is abandoned: counted, never recorded
                sink.live = False
                rec.result.counters["unfinished"] += rec.in_flight
                rec.in_flight = 0
        pending = {t for t in self._requests if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=wait_s or None) if wait_s else (
                set(), pending)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
                if self._rec is not None:
                    self._rec.result.counters["unfinished"] += len(still)
                    self._rec.in_flight = 0


class _Sink:
    """The engine's RequestSink for a CallbackWorkload: records sends and outcomes."""

    __slots__ = ("idle", "live", "rec", "run")

    def __init__(self, run: LoadRun, rec: Recorder) -> None:
        self.run, self.rec = run, rec
        self.live = True  # False once the drain gave up: late reports are ignored
        self.idle: asyncio.Future[None] | None = None  # set while the drain waits

    def sent(self, intended_ns: int, sent_ns: int) -> None:
        if self.live:
            self.rec.sent(intended_ns, sent_ns)

    def done(self, intended_ns: int, outcome: Outcome) -> None:
        if not self.live:
            return
        rec = self.rec
        rec.in_flight -= 1
        rec.done(intended_ns, outcome, outcome.end_ns or perf_counter_ns())
        if not outcome.ok and self.run.spec.budget.count_spent(rec.all_errors):
            self.run._check_budget(rec)
        if rec.in_flight == 0 and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def failed(self, intended_ns: int, exc: Exception) -> None:
        now = perf_counter_ns()
        self.sent(intended_ns, now)
        self.done(intended_ns, Outcome(ok=False, error=f"exception:{type(exc).__name__}",
                                       end_ns=now))


_gc_depth = 0
_gc_saved: tuple[int, int, int] = (700, 10, 10)


def _gc_quiet_enter() -> None:
    """Freeze the heap as it is and collect the young generation rarely (nested runs share)."""
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(_gc_saved[0], _GC_GEN0), *_gc_saved[1:])
    _gc_depth += 1


def _gc_quiet_exit() -> None:
    global _gc_depth
    _gc_depth -= 1
    if _gc_depth == 0:
        gc.set_threshold(*_gc_saved)
        gc.unfreeze()


async def run_load(spec: LoadSpec, workload: Workload, *,
                   on_progress: ProgressCallback | None = None,
                   start_at: StartHook | None = None, record_samples: int = 0) -> LoadResult:
    """Start a run and wait for its result (cancelling the caller cancels the run);
    `record_samples` > 0 keeps up to that many per-request rows in `result.samples`."""
    run = LoadRun(spec, workload, on_progress=on_progress, start_at=start_at,
                  record_samples=record_samples)
    run.start()
    try:
        return await run.wait()
    except asyncio.CancelledError:
        run.cancel("the caller was cancelled")
        raise

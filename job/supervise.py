"""The program's lifecycle inside the job: start, wait ready, watch, restart by the policy.

One `Supervisor.run()` per job. Each start of the program is a *run*: it is probed with the
readiness check until it passes (READY is reported) or `ready_timeout` ends; while READY the
liveness check, when there is one, runs every `interval` and `failure_threshold` failures in a
row end the run (the program gets SIGTERM, then SIGKILL after `stop_timeout`). When a run ends
the restart policy decides: start again after the backoff (reported as RESTARTING, with the
reason and the count), or end the job (EXITED with the last reason; past `max_restarts` the
message says so). The backoff starts over once a run has been READY for `max_backoff`
seconds: a program that crashes once a day is not made to wait an hour. SIGTERM/SIGINT to this
process stop everything at once, during a backoff too.

The program's stdout/stderr are copied straight to this process' own (the SLURM output files)
across all runs; the last 64 KiB are kept for the EXITED report's log tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aifb.job.leftovers import become_subreaper, end_group, signal_group
from aifb.job.probes import LivenessOptions, Probe, RestartOptions
from aifb.job.workers import Launch

if TYPE_CHECKING:
    from aifb.job.sidecars import Sidecars

__all__ = ["Ended", "LoggingReporter", "Reporter", "Supervisor", "Tail", "exit_code_of"]

log = logging.getLogger("aifb.jobrun")

TAIL_LINES = 50
_TAIL_BYTES = 64 * 1024


class Reporter(Protocol):
    """Where the job's lifecycle goes (the server, through aifb.job.report)."""

    def starting(self) -> None: ...
    def ready(self, host: str, port: int, startup_seconds: float,
              workers: Sequence[str] = ()) -> None: ...
    def restarting(self, restarts: int, reason: str) -> None: ...
    def exited(self, exit_code: int, log_tail: str, message: str) -> None: ...


class LoggingReporter:
    """The fallback when no server is reachable or configured: the job runs, its events are
    only logged."""

    def starting(self) -> None:
        log.info("starting")

    def ready(self, host: str, port: int, startup_seconds: float,
              workers: Sequence[str] = ()) -> None:
        log.info("ready at %s:%d after %.2fs%s", host, port, startup_seconds,
                 f" (workers on {', '.join(workers)})" if workers else "")

    def restarting(self, restarts: int, reason: str) -> None:
        log.info("restart %d: %s", restarts, reason)

    def exited(self, exit_code: int, log_tail: str, message: str) -> None:
        log.info("exited with %d: %s", exit_code, message)


class Tail:
    """The last bytes of the program's output (stdout and stderr, in arrival order)."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size - len(self.chunks[0]) >= _TAIL_BYTES:
            self.size -= len(self.chunks.popleft())

    def text(self, lines: int = TAIL_LINES) -> str:
        data = b"".join(self.chunks)[-_TAIL_BYTES:].decode("utf-8", errors="replace")
        return "\n".join(data.splitlines()[-lines:])


async def _pump(stream: asyncio.StreamReader | None, fd: int, tail: Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        tail.add(chunk)
        view = memoryview(chunk)
        with contextlib.suppress(OSError):  # our own output closed: keep draining the pipe
            while view:
                view = view[os.write(fd, view):]


def exit_code_of(returncode: int) -> int:
    """The shell's convention: 128+N when signal N ended the program."""
    return 128 - returncode if returncode < 0 else returncode


def _exit_text(returncode: int) -> str:
    code = exit_code_of(returncode)
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"exited with code {code} ({signal.Signals(-returncode).name})"
    return f"exited with code {code}"


async def _exit_of(proc: asyncio.subprocess.Process) -> int:
    """The program's exit status as soon as it has ended. `proc.wait()` also waits until its
    pipes close, which helpers it left (nginx workers) may hold open for as long as they live;
    the status itself is known at once: a pidfd (Linux) says when the process ended, and
    asyncio's child watcher sets `returncode` a moment later (polled every 50 ms without one)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
    ended: asyncio.Future[Any] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    fd = -1
    with contextlib.suppress(OSError, AttributeError):
        fd = os.pidfd_open(proc.pid)
        loop.add_reader(fd, readable)
    try:
        while not waiter.done() and proc.returncode is None:
            await asyncio.wait({waiter, ended}, timeout=0.002 if ended.done() else 0.05)
        return proc.returncode if proc.returncode is not None else waiter.result()
    finally:
        waiter.cancel()
        if fd >= 0:
            loop.remove_reader(fd)
            os.close(fd)


async def _first_exit(workers: list[asyncio.subprocess.Process]) -> tuple[int, int]:
    """(index, exit status) of the first worker to end."""
    waits = {asyncio.ensure_future(_exit_of(w)): i for i, w in enumerate(workers)}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        first = min(done, key=lambda t: waits[t])
        return waits[first], first.result()
    finally:
        for task in waits:
            task.cancel()


async def _stop(proc: asyncio.subprocess.Process, signum: int, grace: float) -> None:
    """Signal the program's whole group (it leads one of its own), SIGKILL after `grace`."""
    if proc.returncode is None:
        signal_group(proc.pid, signum)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("program ignored signal %d for %.0fs; killing it", signum, grace)
            signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@dataclass(frozen=True)
class Ended:
    """How one run of the program ended. `failed`: what `on-failure` restarts. `stopped`: this
    process was asked to stop (nothing restarts). `ready_seconds`: how long it was READY."""

    code: int
    message: str
    failed: bool
    stopped: bool = False
    ready_seconds: float = 0.0


@dataclass
class Supervisor:
    argv: Sequence[str]
    env: Mapping[str, str]
    workdir: Path
    readiness: Probe
    ready_timeout: float
    ready_interval: float
    reporter: Reporter
    send: Callable[..., None]  # queue one report (never waits)
    sidecars: Sidecars
    stop: asyncio.Event
    stop_signal: list[int]
    advertise_host: Callable[[], str]
    liveness: tuple[Probe, LivenessOptions] | None = None
    restart: RestartOptions = field(default_factory=RestartOptions)
    stop_timeout: float = 20.0
    # A multi-node service's workers: how to start them (see aifb.job.workers).
    workers: list[Launch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tail = Tail()
        self.restarts = 0
        self._announced_ready = False
        become_subreaper()  # the program's orphaned helpers come back to us (see leftovers)

    async def run(self) -> tuple[int, str]:
        """Run the program until the policy ends the job: (exit code of this process, the
        last reason). Reports EXITED itself only through the caller (see aifb.job.run)."""
        attempt = 0  # for the backoff; starts over after a long healthy run
        while True:
            ended = await self._run_once()
            log.info("%s", ended.message)
            if ended.stopped or not self.restart.restarts_after(ended.failed):
                return ended.code, ended.message
            if self.restarts >= self.restart.max_restarts:
                if self.restarts:
                    return ended.code, (f"{ended.message}; not restarted again: "
                                        f"{self.restarts} restarts, the most allowed")
                return ended.code, ended.message
            self.restarts += 1
            attempt = 1 if ended.ready_seconds >= self.restart.max_backoff else attempt + 1
            delay = self.restart.delay(attempt)
            reason = f"{ended.message}; restart {self.restarts} of {self.restart.max_restarts}"
            log.info("restarting in %.3gs: %s", delay, reason)
            self.send(self.reporter.restarting, self.restarts, reason)
            if await self._interrupted(delay):
                name = signal.Signals(self.stop_signal[0]).name
                return 128 + self.stop_signal[0], f"stopped by {name} while waiting to restart"

    async def _interrupted(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _run_once(self) -> Ended:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=dict(self.env), cwd=self.workdir,
                process_group=0)
        except OSError as exc:
            return Ended(127, f"cannot start {self.argv[0]!r}: {exc}", failed=True)
        pumps = [asyncio.create_task(_pump(proc.stdout, 1, self.tail)),
                 asyncio.create_task(_pump(proc.stderr, 2, self.tail))]
        try:
            workers: list[asyncio.subprocess.Process] = []
            for launch in self.workers:
                try:  # in the program's group: a stop or restart ends them with it
                    worker = await asyncio.create_subprocess_exec(
                        *launch.argv, stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                        env=dict(self.env), cwd=self.workdir, process_group=proc.pid)
                except OSError as exc:
                    await _stop(proc, signal.SIGTERM, self.stop_timeout)
                    return Ended(127, f"cannot start the workers ({launch.argv[0]!r}): {exc}",
                                 failed=True)
                workers.append(worker)
                pumps += [asyncio.create_task(_pump(worker.stdout, 1, self.tail)),
                          asyncio.create_task(_pump(worker.stderr, 2, self.tail))]
            return await self._watch(proc, started, workers)
        finally:
            # Helpers the program left (nginx workers after a kill -9 of the master) would
            # hold its port and pipes: end them before a restart or the job's end.
            await end_group(proc.pid, grace=min(self.stop_timeout, 5.0))
            await asyncio.wait(pumps, timeout=5.0)  # a grandchild may still hold the pipes
            for task in pumps:
                task.cancel()

    async def _watch(self, proc: asyncio.subprocess.Process, started: float,
                     workers: list[asyncio.subprocess.Process]) -> Ended:
        exited: asyncio.Task[Any] = asyncio.create_task(_exit_of(proc))
        # One task for all workers: done when the first of them exits (its index, status).
        crew: asyncio.Task[Any] | None = (asyncio.create_task(_first_exit(workers))
                                          if workers else None)
        stopped: asyncio.Task[Any] = asyncio.create_task(self.stop.wait())
        ready: asyncio.Task[Any] = asyncio.create_task(self._wait_ready())
        checks: asyncio.Task[Any] | None = None
        became_ready = 0.0
        try:
            first = {exited, stopped, ready} | ({crew} if crew else set())
            done, _ = await asyncio.wait(first, timeout=self.ready_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if ready in done and exited not in done and (crew is None or crew not in done):
                became_ready = time.monotonic()
                hosts = [h for launch in self.workers for h in launch.hosts]
                if hosts:
                    self.send(self.reporter.ready, self.advertise_host(), self.readiness.port,
                              became_ready - started, hosts)
                else:
                    self.send(self.reporter.ready, self.advertise_host(), self.readiness.port,
                              became_ready - started)
                if not self._announced_ready:
                    self._announced_ready = True
                    self.sidecars.ready(self.readiness.port, http=self.readiness.kind == "http")
                waiting: set[asyncio.Task[Any]] = {exited, stopped}
                if crew is not None:
                    waiting.add(crew)
                if self.liveness is not None:
                    checks = asyncio.create_task(self._live(*self.liveness))
                    waiting.add(checks)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            ready_for = time.monotonic() - became_ready if became_ready else 0.0
            if stopped in done:
                await _stop(proc, self.stop_signal[0], self.stop_timeout)
                name = signal.Signals(self.stop_signal[0]).name
                return Ended(128 + self.stop_signal[0],
                             f"stopped by {name} (program exit code "
                             f"{exit_code_of(proc.returncode or 0)})",
                             failed=False, stopped=True, ready_seconds=ready_for)
            if exited in done:
                rc = exited.result()
                code = exit_code_of(rc)
                if became_ready:
                    return Ended(code, _exit_text(rc), failed=rc != 0, ready_seconds=ready_for)
                return Ended(code or 1, f"{_exit_text(rc)} before it was ready", failed=True)
            if crew is not None and crew in done:
                index, rc = crew.result()
                await _stop(proc, signal.SIGTERM, self.stop_timeout)
                return Ended(exit_code_of(rc) or 1, f"worker {index} {_exit_text(rc)}"
                             + ("" if became_ready else " before the program was ready")
                             + "; program stopped", failed=True, ready_seconds=ready_for)
            if checks is not None and checks in done:
                await _stop(proc, signal.SIGTERM, self.stop_timeout)
                return Ended(1, f"{checks.result()}; program stopped", failed=True,
                             ready_seconds=ready_for)
            await _stop(proc, signal.SIGTERM, self.stop_timeout)
            return Ended(124, f"not ready within {self.ready_timeout:g}s "
                              f"({self.readiness.describe()}); program stopped", failed=True)
        finally:
            tasks = [t for t in (exited, stopped, ready, checks, crew) if t is not None]
            for task in tasks:
                task.cancel()
            # Wait for the cancelled probes: an exec probe's process is ended by its own task.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_ready(self) -> None:
        """Probe until the check passes: quickly at first, then once per `ready_interval`."""
        delay = 0.05
        client = await _client_for(self.readiness)
        try:
            while (why := await self.readiness.check(client)) is not None:
                log.debug("not ready: %s", why)
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, self.ready_interval)
        finally:
            if client is not None:
                await client.aclose()

    async def _live(self, probe: Probe, opts: LivenessOptions) -> str:
        """Returns the reason once `failure_threshold` probes in a row have failed."""
        await asyncio.sleep(opts.initial_delay)
        client = await _client_for(probe)
        failures = 0
        try:
            while True:
                why = await probe.check(client)
                if why is None:
                    failures = 0
                else:
                    failures += 1
                    log.warning("liveness check failed (%d of %d): %s", failures,
                                opts.failure_threshold, why)
                    if failures >= opts.failure_threshold:
                        return f"liveness check failed {failures} times in a row: {why}"
                await asyncio.sleep(opts.interval)
        finally:
            if client is not None:
                await client.aclose()


async def _client_for(probe: Probe) -> Any:
    if probe.kind != "http":
        return None
    import httpx

    return httpx.AsyncClient(trust_env=False, timeout=probe.timeout)

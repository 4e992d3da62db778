"""The in-job entry point: start the service program, wait until it is ready, report, supervise.

    python -m aifb.job.run --service ID --workdir DIR --readiness tcp|http
        --ready-port N|'{{ name }}' --ready-path /P --timeout SECONDS
        [--auto-port NAME]... [--log-file PATH]... [--file REL=TEXT]... -- PROGRAM ARGS...

Auto ports: for each `--auto-port NAME` a free TCP port is chosen (bind 0.0.0.0:0, read it,
close) and the exact token ``{{ NAME }}`` the renderer left in place is replaced by it in the
program's argv, in every environment value, in `--ready-port` and in each `--file` text. Files
are written under the workdir (mode 0600) before the program starts. The program runs without a
shell, in the workdir, with its stdout and stderr piped through this process, which copies
every chunk straight to its own stdout/stderr (the SLURM output files) and keeps the last 64 KiB
for the log tail of the EXITED report.

Reporting goes through a `Reporter` (synchronous methods), called in order from one worker
thread that the job never waits for until it ends: the program starts while STARTING is still on
its way, and a server that is slow, restarting or down stalls neither the output copying nor the
service (each report may wait up to its own deadline for the server to come back). At the end
the job waits at most 20 s for the reports still queued, EXITED last; failures to report are
logged, never fatal (the server learns a job's end from the scheduler anyway). Exit codes:
the program's own (128+N when a signal N ended it); 124 when it was not ready in time; 143/130
when this process was stopped by SIGTERM/SIGINT (forwarded to the program, which gets
`--stop-timeout` seconds before SIGKILL); 127 when it could not be started. The EXITED report
carries the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx  # imported when an HTTP readiness check runs: every job pays the import
from aifb.job.sidecars import start_job_sidecars

__all__ = ["LoggingReporter", "Options", "Reporter", "choose_free_ports", "fill_ports", "main",
           "parse_args", "run"]

log = logging.getLogger("aifb.jobrun")


def placeholder(name: str) -> str:
    """How the server's batch script leaves a value for the job to fill in: ``{{ name }}``
    (the renderer's canonical token, `aifb.server.recipes.values.token`; a test keeps the two
    equal)."""
    return "{{ " + name + " }}"

TAIL_LINES = 50
_TAIL_BYTES = 64 * 1024
_REPORT_TIMEOUT = 20.0


class Reporter(Protocol):
    """Where the job's lifecycle goes (the server, through aifb.job.report)."""

    def starting(self) -> None: ...
    def ready(self, host: str, port: int, startup_seconds: float) -> None: ...
    def exited(self, exit_code: int, log_tail: str, message: str) -> None: ...


class LoggingReporter:
    """The fallback when no server is configured: the job runs, events are only logged."""

    def starting(self) -> None:
        log.info("starting")

    def ready(self, host: str, port: int, startup_seconds: float) -> None:
        log.info("ready at %s:%d after %.2fs", host, port, startup_seconds)

    def exited(self, exit_code: int, log_tail: str, message: str) -> None:
        log.info("exited with %d: %s", exit_code, message)


@dataclass(frozen=True)
class Options:
    service: str
    workdir: Path
    readiness: str
    ready_port: str
    argv: list[str]
    ready_path: str = "/"
    timeout: float = 300.0
    auto_ports: list[str] = field(default_factory=list)
    log_files: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 20.0
    ready_host: str = "127.0.0.1"


def _file_arg(text: str) -> tuple[str, str]:
    rel, sep, content = text.partition("=")
    if not sep or not rel:
        raise argparse.ArgumentTypeError("expected REL=TEXT")
    return rel, content


def parse_args(argv: Sequence[str]) -> Options:
    """Options before the first `--`, the program's argv after it."""
    args = list(argv)
    if "--" not in args:
        raise SystemExit("aifb.job.run: missing '--' before the program's argv")
    cut = args.index("--")
    p = argparse.ArgumentParser(prog="python -m aifb.job.run")
    p.add_argument("--service", required=True)
    p.add_argument("--workdir", type=Path, default=Path.cwd())
    p.add_argument("--readiness", choices=["tcp", "http"], required=True)
    p.add_argument("--ready-port", required=True)
    p.add_argument("--ready-path", default="/")
    p.add_argument("--ready-host", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--stop-timeout", type=float, default=20.0)
    p.add_argument("--auto-port", action="append", default=[])
    p.add_argument("--log-file", action="append", default=[])
    p.add_argument("--file", action="append", default=[], type=_file_arg)
    ns = p.parse_args(args[:cut])
    if not args[cut + 1:]:
        p.error("no program given after '--'")
    return Options(service=ns.service, workdir=ns.workdir, readiness=ns.readiness,
                   ready_port=ns.ready_port, argv=args[cut + 1:], ready_path=ns.ready_path,
                   timeout=ns.timeout, auto_ports=ns.auto_port, log_files=ns.log_file,
                   files=dict(ns.file), stop_timeout=ns.stop_timeout, ready_host=ns.ready_host)


def choose_free_ports(names: Sequence[str]) -> dict[str, int]:
    """One distinct free port per name: all sockets stay bound until every port is chosen."""
    socks: list[socket.socket] = []
    try:
        ports: dict[str, int] = {}
        for name in names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("0.0.0.0", 0))  # the service listens on all interfaces
            ports[name] = s.getsockname()[1]
        return ports
    finally:
        for s in socks:
            s.close()


def fill_ports(text: str, ports: Mapping[str, int]) -> str:
    """Replace each auto-port token ``{{ name }}`` with its chosen port."""
    for name, port in ports.items():
        text = text.replace(placeholder(name), str(port))
    return text


class _Tail:
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


async def _pump(stream: asyncio.StreamReader | None, fd: int, tail: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        tail.add(chunk)
        view = memoryview(chunk)
        with contextlib.suppress(OSError):  # our own output closed: keep draining the pipe
            while view:
                view = view[os.write(fd, view):]


async def _probe(opts: Options, port: int, client: httpx.AsyncClient | None) -> bool:
    if opts.readiness == "http" and client is not None:
        import httpx  # already loaded by _wait_ready: a dictionary lookup

        try:
            resp = await client.get(f"http://{opts.ready_host}:{port}{opts.ready_path}")
        except (OSError, TimeoutError, httpx.HTTPError):
            return False
        return 200 <= resp.status_code < 300
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(opts.ready_host, port), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _wait_ready(opts: Options, port: int) -> None:
    delay = 0.05
    if opts.readiness != "http":
        while not await _probe(opts, port, None):
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        return
    import httpx

    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while not await _probe(opts, port, client):
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)


class _Reports:
    """The job's reports, sent in order by one worker thread; `send` never waits."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name="aifb-jobrun-reports",
                                        daemon=True)
        self._thread.start()

    def send(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.put((fn, args))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # reporting must never break the job
                log.warning("could not report %s: %s", getattr(fn, "__name__", fn), exc)

    async def drain(self, timeout: float = _REPORT_TIMEOUT) -> None:
        """Wait up to `timeout` for what is queued; later sends are not delivered."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            log.warning("reports not delivered within %gs; the server learns the job's end "
                        "from the scheduler", timeout)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _advertise_host() -> str:
    return os.environ.get("AIFB_ADVERTISE_HOST") or socket.getfqdn() or socket.gethostname()


def _write_files(workdir: Path, files: Mapping[str, str]) -> None:
    root = workdir.resolve()
    for rel, content in files.items():
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ValueError(f"--file {rel!r} is outside the workdir")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)


def _file_tail(paths: Sequence[str]) -> str:
    for p in paths:
        with contextlib.suppress(OSError), open(p, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - _TAIL_BYTES))
            text = fh.read().decode("utf-8", errors="replace")
            return "\n".join(text.splitlines()[-TAIL_LINES:])
    return ""


async def _stop(proc: asyncio.subprocess.Process, signum: int, grace: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("program ignored signal %d for %.0fs; killing it", signum, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run(opts: Options, reporter: Reporter,
              environ: Mapping[str, str] | None = None) -> int:
    """Run the program under supervision; returns the exit code for this process."""
    started = time.monotonic()
    ports = choose_free_ports(opts.auto_ports)
    env = {k: fill_ports(v, ports) for k, v in (os.environ if environ is None else environ).items()}
    argv = [fill_ports(a, ports) for a in opts.argv]
    port_text = fill_ports(opts.ready_port, ports)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        log.error("--ready-port %r is neither a port nor an --auto-port token", opts.ready_port)
        return 2
    port = int(port_text)
    _write_files(opts.workdir, {k: fill_ports(v, ports) for k, v in opts.files.items()})
    log_files = [fill_ports(p, ports) for p in opts.log_files]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_signal: list[int] = []


    def on_signal(signum: int) -> None:
        stop_signal.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reports = _Reports()
    reports.send(reporter.starting)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=opts.workdir)
    except OSError as exc:
        reports.send(reporter.exited, 127, "", f"cannot start {argv[0]!r}: {exc}")
        await reports.drain()
        return 127
    # Telemetry agents for this job when the server asked for them (AIFB_SIDECARS).
    sidecars = await start_job_sidecars(opts.service, env, opts.workdir, log_files)
    tail = _Tail()
    pumps = [asyncio.create_task(_pump(proc.stdout, 1, tail)),
             asyncio.create_task(_pump(proc.stderr, 2, tail))]
    exited = asyncio.create_task(proc.wait())
    stopped = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(_wait_ready(opts, port))
    waiting = {exited, stopped, ready}
    done, _ = await asyncio.wait(waiting, timeout=opts.timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    phase = "before it was ready"
    if ready in done and exited not in done:
        seconds = time.monotonic() - started
        reports.send(reporter.ready, _advertise_host(), port, seconds)
        sidecars.ready(port, http=opts.readiness == "http")
        phase = ""
        done, _ = await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if stopped in done:
        await _stop(proc, stop_signal[0], opts.stop_timeout)
        name = signal.Signals(stop_signal[0]).name
        job_code = 128 + stop_signal[0]
        message = f"stopped by {name} (program exit code {_exit_code(proc.returncode or 0)})"
    elif exited in done:
        code = _exit_code(exited.result())
        message = f"exited with code {code}" + (f" {phase}" if phase else "")
        job_code = code if not phase else (code or 1)
    else:
        await _stop(proc, signal.SIGTERM, opts.stop_timeout)
        job_code = 124
        message = (f"not ready within {opts.timeout:g}s ({opts.readiness} check on port {port}"
                   f"{opts.ready_path if opts.readiness == 'http' else ''}); program stopped")
    stopped.cancel()
    await asyncio.wait(pumps, timeout=5.0)  # a grandchild may still hold the pipes
    for task in pumps:
        task.cancel()
    reports.send(reporter.exited, job_code, tail.text() or _file_tail(log_files), message)
    log.info("%s", message)
    await asyncio.gather(reports.drain(), sidecars.stop())
    return job_code


def _reporter_from_env() -> Reporter:
    if not os.environ.get("AIFB_SERVER"):
        return LoggingReporter()
    try:
        from aifb.job.report import reporter_from_env
    except ImportError as exc:
        log.warning("no report client (%s); only logging", exc)
        return LoggingReporter()
    try:
        return reporter_from_env()
    except Exception as exc:  # a broken server config must not stop the service
        log.warning("cannot report to the server (%s); only logging", exc)
        return LoggingReporter()


def main(argv: Sequence[str] | None = None, reporter: Reporter | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="aifb-jobrun %(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness probe
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    rep = reporter if reporter is not None else _reporter_from_env()
    try:
        return asyncio.run(run(opts, rep))
    finally:
        close = getattr(rep, "close", None)
        if callable(close):
            close()


if __name__ == "__main__":
    sys.exit(main())

"""The in-job entry point: start the service program, wait until it is ready, report, supervise.

    python -m aifb.job.run --service ID --workdir DIR --readiness tcp|http|exec
        --ready-port N|'{{ name }}' --ready-path /P --timeout SECONDS [--ready-status N]
        [--ready-exec JSON] [--ready-interval S] [--ready-probe-timeout S]
        [--liveness JSON] [--restart JSON]
        [--auto-port NAME]... [--log-file PATH]... [--file REL=TEXT]... -- PROGRAM ARGS...

Auto ports: for each `--auto-port NAME` a free TCP port is chosen (bind 0.0.0.0:0, read it,
close) and the exact token ``{{ NAME }}`` the renderer left in place is replaced by it in the
program's argv, in every environment value, in `--ready-port`, in the probes' ports and commands
and in each `--file` text. Files
are written under the workdir (mode 0600) before the program starts. The program runs without a
shell, in the workdir, with its stdout and stderr piped through this process, which copies
every chunk straight to its own stdout/stderr (the SLURM output files) and keeps the last 64 KiB
for the log tail of the EXITED report. Health checks, restarts and their backoff are
`aifb.job.supervise`'s; the probes are `aifb.job.probes`'.

Reporting goes through a `Reporter` (synchronous methods), called in order from one worker
thread that the job never waits for until it ends: the program starts while STARTING is still on
its way, and a server that is slow, restarting or down stalls neither the output copying nor the
service (each report may wait up to its own deadline for the server to come back). At the end
the job waits at most 20 s for the reports still queued, EXITED last; failures to report are
logged, never fatal (the server learns a job's end from the scheduler anyway). Exit codes:
the program's own (128+N when a signal N ended it); 124 when it was not ready in time; 143/130
when this process was stopped by SIGTERM/SIGINT (forwarded to the program, which gets
`--stop-timeout` seconds before SIGKILL); 127 when it could not be started; 1 when the liveness
check failed. With a restart policy these are the last run's. The EXITED report carries the
same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifb.job.probes import LivenessOptions, Probe, RestartOptions, parse_liveness, parse_restart
from aifb.job.sidecars import start_job_sidecars
from aifb.job.supervise import TAIL_LINES, LoggingReporter, Reporter, Supervisor
from aifb.job.workers import HEAD_HOST_TOKEN, WorkerOptions, launch_plan, parse_workers

__all__ = ["LoggingReporter", "Options", "Reporter", "choose_free_ports", "fill_ports", "main",
           "parse_args", "run"]

log = logging.getLogger("aifb.jobrun")


def placeholder(name: str) -> str:
    """How the server's batch script leaves a value for the job to fill in: ``{{ name }}``
    (the renderer's canonical token, `aifb.server.recipes.values.token`; a test keeps the two
    equal)."""
    return "{{ " + name + " }}"

_TAIL_BYTES = 64 * 1024
_REPORT_TIMEOUT = 20.0


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
    ready_status: int = 0
    ready_exec: tuple[str, ...] = ()
    ready_interval: float = 1.0
    ready_probe_timeout: float = 2.0
    liveness: LivenessOptions | None = None
    restart: RestartOptions = field(default_factory=RestartOptions)
    workers: WorkerOptions | None = None


def _file_arg(text: str) -> tuple[str, str]:
    rel, sep, content = text.partition("=")
    if not sep or not rel:
        raise argparse.ArgumentTypeError("expected REL=TEXT")
    return rel, content


def _json_argv(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not (isinstance(value, list) and value and all(isinstance(a, str) and a for a in value)):
        raise argparse.ArgumentTypeError("expected a JSON list of non-empty strings")
    return tuple(value)


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def parse_args(argv: Sequence[str]) -> Options:
    """Options before the first `--`, the program's argv after it."""
    args = list(argv)
    if "--" not in args:
        raise SystemExit("aifb.job.run: missing '--' before the program's argv")
    cut = args.index("--")
    p = argparse.ArgumentParser(prog="python -m aifb.job.run")
    p.add_argument("--service", required=True)
    p.add_argument("--workdir", type=Path, default=Path.cwd())
    p.add_argument("--readiness", choices=["tcp", "http", "exec"], required=True)
    p.add_argument("--ready-port", required=True)
    p.add_argument("--ready-path", default="/")
    p.add_argument("--ready-host", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--ready-status", type=int, default=0)
    p.add_argument("--ready-exec", type=_json_argv, default=())
    p.add_argument("--ready-interval", type=float, default=1.0)
    p.add_argument("--ready-probe-timeout", type=float, default=2.0)
    p.add_argument("--liveness", type=_checked(parse_liveness), default=None)
    p.add_argument("--restart", type=_checked(parse_restart), default=RestartOptions())
    p.add_argument("--workers", type=_checked(parse_workers), default=None)
    p.add_argument("--stop-timeout", type=float, default=20.0)
    p.add_argument("--auto-port", action="append", default=[])
    p.add_argument("--log-file", action="append", default=[])
    p.add_argument("--file", action="append", default=[], type=_file_arg)
    ns = p.parse_args(args[:cut])
    if not args[cut + 1:]:
        p.error("no program given after '--'")
    if ns.readiness == "exec" and not ns.ready_exec:
        p.error("--readiness exec needs --ready-exec")
    if not (0.05 <= ns.ready_interval <= 3600 and 0 < ns.ready_probe_timeout <= 86400):
        p.error("--ready-interval must be 0.05..3600 and --ready-probe-timeout positive")
    return Options(service=ns.service, workdir=ns.workdir, readiness=ns.readiness,
                   ready_port=ns.ready_port, argv=args[cut + 1:], ready_path=ns.ready_path,
                   timeout=ns.timeout, auto_ports=ns.auto_port, log_files=ns.log_file,
                   files=dict(ns.file), stop_timeout=ns.stop_timeout, ready_host=ns.ready_host,
                   ready_status=ns.ready_status, ready_exec=ns.ready_exec,
                   ready_interval=ns.ready_interval, ready_probe_timeout=ns.ready_probe_timeout,
                   liveness=ns.liveness, restart=ns.restart, workers=ns.workers)


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


def _probe_port(field: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{field} {text!r} is neither a port nor an --auto-port token")
    return int(text)


def _probes(opts: Options, ports: Mapping[str, int], env: Mapping[str, str]
            ) -> tuple[Probe, tuple[Probe, LivenessOptions] | None]:
    """The readiness and liveness probes with the chosen ports filled in (ValueError)."""
    ready = Probe(kind=opts.readiness, host=opts.ready_host,
                  port=_probe_port("--ready-port", fill_ports(opts.ready_port, ports)),
                  path=opts.ready_path, status=opts.ready_status,
                  command=tuple(fill_ports(a, ports) for a in opts.ready_exec),
                  timeout=opts.ready_probe_timeout, cwd=opts.workdir, env=env)
    lv = opts.liveness
    if lv is None:
        return ready, None
    port = fill_ports(lv.port, ports)
    live = Probe(kind=lv.kind, host=opts.ready_host,
                 port=_probe_port("--liveness port", port) if port else 0, path=lv.path,
                 status=lv.status, command=tuple(fill_ports(a, ports) for a in lv.command),
                 timeout=lv.timeout, cwd=opts.workdir, env=env)
    return ready, (live, lv)


async def run(opts: Options, reporter: Reporter,
              environ: Mapping[str, str] | None = None) -> int:
    """Run the program under supervision; returns the exit code for this process."""
    ports = choose_free_ports(opts.auto_ports)
    env = {k: fill_ports(v, ports) for k, v in (os.environ if environ is None else environ).items()}
    argv = [fill_ports(a, ports) for a in opts.argv]
    try:
        ready, live = _probes(opts, ports, env)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
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
    # Telemetry agents for this job when the server asked for them (AIFB_SIDECARS).
    sidecars = await start_job_sidecars(opts.service, env, opts.workdir, log_files)
    head = _advertise_host()
    workers = [] if opts.workers is None else launch_plan(
        opts.workers, [fill_ports(a, ports).replace(HEAD_HOST_TOKEN, head)
                       for a in opts.workers.argv], env, head)
    supervisor = Supervisor(
        argv=argv, env=env, workdir=opts.workdir, readiness=ready, ready_timeout=opts.timeout,
        ready_interval=opts.ready_interval, reporter=reporter, send=reports.send,
        sidecars=sidecars, stop=stop, stop_signal=stop_signal, advertise_host=_advertise_host,
        liveness=live, restart=opts.restart, stop_timeout=opts.stop_timeout, workers=workers)
    job_code, message = await supervisor.run()
    reports.send(reporter.exited, job_code, supervisor.tail.text() or _file_tail(log_files),
                 message)
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

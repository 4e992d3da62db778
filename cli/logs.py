"""`aifb logs <service-id> [--follow]`: a job's stdout/stderr as the collector received them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import typer
from google.protobuf import timestamp_pb2

from aifb.cli.collector import collector_stub
from aifb.cli.context import CliState, Output, handle_errors, state_of, to_dict
from aifb.mesh.channel import raise_for_rpc_error
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2, collector_pb2_grpc, server_pb2

__all__ = ["follow_entries", "logs", "service_name"]

_TERMINAL = {server_pb2.SERVICE_STATE_STOPPED, server_pb2.SERVICE_STATE_FAILED}
_MAX = 10_000
_STREAMS = ("stdout", "stderr", "file")


def service_name(text: str) -> str:
    """'abc123' or 'services/abc123' -> 'services/abc123' (the label the agents put on lines)."""
    sid = text.removeprefix("services/")
    if not sid or "/" in sid or not sid.replace("-", "").replace("_", "").isalnum():
        raise InvalidArgument(f"not a service id: {text!r} (expected e.g. 3f2a9c1b7d4e or "
                              "services/3f2a9c1b7d4e)", field="service")
    return f"services/{sid}"


def _key(entry: collector_pb2.LogEntry) -> tuple[int, str, str]:
    return (entry.time.ToNanoseconds(), entry.labels.get("stream", ""), entry.line)


def follow_entries(stub: collector_pb2_grpc.CollectorServiceStub, labels: dict[str, str], *,
                   first: int, follow: bool, poll: float, timeout: float,
                   is_over: Callable[[], bool] | None = None) -> Iterator[collector_pb2.LogEntry]:
    """The newest `first` entries, then (with `follow`) each new one as the collector gets it.

    New entries are found by asking for everything at or after the newest time seen, and
    skipping those already printed at exactly that time. `is_over()` (when given) says the
    source has ended: the follow stops after one more quiet poll, so the last lines a
    flushing agent delivers still come through.
    """
    cursor = 0
    seen: set[tuple[int, str, str]] = set()
    request = collector_pb2.QueryLogsRequest(labels=labels, limit=max(1, min(first, _MAX)))
    quiet_after_end = 0
    while True:
        resp = stub.QueryLogs(request, timeout=timeout)
        new = [e for e in resp.entries if _key(e) not in seen]
        yield from new
        if resp.entries:
            newest = max(e.time.ToNanoseconds() for e in resp.entries)
            if newest > cursor:
                cursor, seen = newest, set()
            seen.update(_key(e) for e in resp.entries if e.time.ToNanoseconds() == cursor)
        if not follow:
            return
        if new:
            quiet_after_end = 0
        elif is_over is not None and is_over():
            quiet_after_end += 1
            if quiet_after_end >= 3:
                return
        request = collector_pb2.QueryLogsRequest(
            labels=labels, limit=_MAX, start_time=timestamp_pb2.Timestamp(
                seconds=cursor // 1_000_000_000, nanos=cursor % 1_000_000_000))
        time.sleep(poll)


def _print(state: CliState, entry: collector_pb2.LogEntry, show_stream: bool) -> None:
    if state.output is Output.json:
        sys.stdout.write(json.dumps(to_dict(entry), sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    stream = entry.labels.get("stream", "")
    line = entry.line if not show_stream else f"[{stream}] {entry.line}"
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(line + ("" if line.endswith("\n") else "\n"))
    out.flush()


def logs(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="Service id (as `aifb services list` shows it)."),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Keep printing new lines live; ends when the service has "
                                "stopped and its last lines are in (or at Ctrl-C)."),
    lines: int = typer.Option(1000, "--lines", "-n", help="How many recent lines to print "
                              "first (1..10000)."),
    stream: str | None = typer.Option(None, help="Only this stream: stdout, stderr or file."),
    collector: str | None = typer.Option(None, "--collector", metavar="HOST:PORT",
                                         help="CollectorService to ask (default: the "
                                         "server's address, where `aifb up` mounts it)."),
    poll: float = typer.Option(0.5, help="Seconds between checks for new lines with --follow."),
) -> None:
    """Print a job's stdout and stderr as its agents shipped them to the collector.

    stdout lines go to stdout and stderr lines to stderr (with --stream unset and text
    output); `--output json` prints one JSON object per line (labels, time, line). The lines
    come from the collector's local store, which every collector keeps (Loki or not).
    """
    state = state_of(ctx)
    with handle_errors(state):
        name = service_name(service)
        if not 1 <= lines <= _MAX:
            raise InvalidArgument(f"--lines must be 1..{_MAX}, got {lines}", field="lines")
        if stream is not None and stream not in _STREAMS:
            raise InvalidArgument(f"--stream must be one of {', '.join(_STREAMS)}, got "
                                  f"{stream!r}", field="stream")
        # The service must exist (a clear NOT_FOUND rather than an empty, endless follow).
        server = state.server_stub()
        state.call(server.GetService, server_pb2.GetServiceRequest(name=name))
        labels = {"service": name, **({"stream": stream} if stream else {})}
        last_check = [0.0, False]

        def is_over() -> bool:
            now = time.monotonic()
            if not last_check[1] and now - last_check[0] >= 1.0:
                last_check[0] = now
                svc = state.call(server.GetService,
                                 server_pb2.GetServiceRequest(name=name)).service
                last_check[1] = svc.state in _TERMINAL
            return bool(last_check[1])

        stub = collector_stub(state, collector)
        try:
            for entry in follow_entries(stub, labels, first=lines, follow=follow,
                                        poll=max(poll, 0.05), timeout=state.timeout,
                                        is_over=is_over):
                _print(state, entry, show_stream=False)
        except KeyboardInterrupt:
            pass
        except grpc.RpcError as exc:
            raise_for_rpc_error(exc)

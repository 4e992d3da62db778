"""`aifb services ...`: create, get, list, watch, delete, logs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import typer

from aifb.cli.context import CliState, handle_errors, state_of, to_dict
from aifb.cli.format import (
    endpoint_text,
    replica_table,
    service_table,
    state_name,
    styled_state,
    when,
)
from aifb.cli.params import parse_params, resources_from_options, restart_from_options
from aifb.mesh.channel import raise_for_rpc_error
from aifb.mesh.errors import Unavailable
from aifb.v1 import server_pb2

app = typer.Typer(help="Deploy services from recipes and follow them.", no_args_is_help=True)

TERMINAL = {server_pb2.SERVICE_STATE_STOPPED, server_pb2.SERVICE_STATE_FAILED}


def watch_stream(state: CliState, name: str, reconnect_for: float = 60.0,
                 until: float | None = None) -> Iterator[server_pb2.Service]:
    """Follow one service to a terminal state; reconnects (the first message is a snapshot)
    when the server restarts, for up to `reconnect_for` seconds without contact. With `until`
    (a time.monotonic() deadline) it ends there too, even while no change arrives."""
    stub = state.server_stub()
    last_revision = 0
    lost_since: float | None = None
    while True:
        remaining = None if until is None else until - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        try:
            for msg in stub.WatchService(server_pb2.WatchServiceRequest(name=name),
                                         wait_for_ready=lost_since is not None,
                                         timeout=remaining):
                lost_since = None
                if msg.service.revision > last_revision:
                    last_revision = msg.service.revision
                    yield msg.service
            return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and until is not None:
                return
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise_for_rpc_error(exc)
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > reconnect_for:
                raise Unavailable(f"lost the server for {reconnect_for:.0f}s: {exc.details()}"
                                  ) from exc
            time.sleep(0.5)


def _print_change(state: CliState, s: server_pb2.Service) -> None:
    if state.output.value == "json":
        import json
        import sys
        sys.stdout.write(json.dumps(to_dict(s), sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    extra = f"  {endpoint_text(s)}" if s.state == server_pb2.SERVICE_STATE_READY else ""
    msg = s.state_message.splitlines()[0] if s.state_message else ""
    state.console.print(f"{when(s)}  {styled_state(s.state):<20} {msg}{extra}")
    if s.state == server_pb2.SERVICE_STATE_FAILED and "\n" in s.state_message:
        state.console.print(s.state_message.split("\n", 1)[1], markup=False)


@app.command()
def create(
    ctx: typer.Context,
    recipe: str = typer.Argument(..., help="Recipe name (see `aifb recipes list`)."),
    param: list[str] = typer.Option([], "--param", "-p", help="Recipe parameter KEY=VALUE."),
    label: list[str] = typer.Option([], "--label", "-l", help="Label KEY=VALUE."),
    cpus: int = typer.Option(0, help="CPUs per task (0: the recipe's default)."),
    memory: str = typer.Option("", help="Memory per node, e.g. 512M or 4G."),
    gpus: int = typer.Option(0, help="GPUs (0: the recipe's default)."),
    time_limit: str = typer.Option("", "--time", help="Time limit: minutes or HH:MM:SS."),
    partition: str = typer.Option("", help="SLURM partition."),
    account: str = typer.Option("", help="SLURM account."),
    request_id: str = typer.Option("", help="Idempotency key (default: a new random one)."),
    restart: str = typer.Option(
        "", "--restart", metavar="POLICY",
        help="never | on-failure | always: start the program again inside the job when it "
             "exits or fails its liveness check (default: the recipe's)."),
    max_restarts: int | None = typer.Option(
        None, min=0, max=10000,
        help="Restarts allowed before the service is FAILED (default: the recipe's)."),
    restart_backoff: float | None = typer.Option(
        None, min=0, max=3600,
        help="Seconds before the first restart, doubling each time (default: the recipe's)."),
    replicas: int = typer.Option(
        0, min=0, max=1000,
        help="Run N replicas, each its own job, behind one service (0: the recipe's; "
             "a replicated service can be scaled)."),
    min_ready: int = typer.Option(
        0, min=0, max=1000,
        help="Replicas that must be READY for the service to be READY, DEGRADED below "
             "(0: all of them)."),
    renew_before: float = typer.Option(
        0.0, min=0, max=7 * 86400,
        help="Seconds before a replica's time limit (--time) to start its successor; the old "
             "one is drained once the successor is READY (0: the recipe's; implies replicas)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until READY (or failed)."),
    wait_timeout: float = typer.Option(600.0, min=0.1, max=7 * 24 * 3600.0,
                                       help="Seconds --wait waits at most."),
) -> None:
    """Deploy a service from a recipe; with --wait, show progress until it is READY."""
    state = state_of(ctx)
    with handle_errors(state):
        req = server_pb2.CreateServiceRequest(
            recipe=recipe, parameters=parse_params(param, "--param"),
            labels=parse_params(label, "--label"),
            resources=resources_from_options(cpus, memory, gpus, time_limit, partition, account),
            request_id=request_id or uuid.uuid4().hex,
            restart_policy=restart_from_options(restart, max_restarts, restart_backoff),
            replicas=replicas, min_ready=min_ready)
        if renew_before:
            req.renew_before.FromNanoseconds(round(renew_before * 1e9))
        service = state.call(state.server_stub().CreateService, req).service
        if not wait:
            state.emit(service, lambda: state.console.print(
                f"created {service.name} ({state_name(service.state)}); "
                f"follow with: aifb services watch {service.name.removeprefix('services/')}"))
            return
        final = service
        deadline = time.monotonic() + wait_timeout
        with state.err.status(f"deploying {recipe} as {service.name} ...") as status:
            for s in watch_stream(state, service.name, until=deadline):
                final = s
                status.update(f"{service.name}: {state_name(s.state)} "
                              f"{s.state_message.splitlines()[0] if s.state_message else ''}")
                if s.state == server_pb2.SERVICE_STATE_READY or s.state in TERMINAL:
                    break
        state.emit(final, lambda: _print_change(state, final))
        if final.state != server_pb2.SERVICE_STATE_READY:
            if final.state not in TERMINAL:
                state.err.print(
                    f"not READY after --wait-timeout {wait_timeout:g}s: {service.name} is "
                    f"{state_name(final.state)} and keeps deploying (aifb services watch "
                    f"{service.name.removeprefix('services/')}; delete it to stop)",
                    markup=False)
            raise typer.Exit(1)


@app.command()
def get(ctx: typer.Context, service: str = typer.Argument(..., help="Service id.")) -> None:
    """Show one service."""
    state = state_of(ctx)
    with handle_errors(state):
        s = state.call(state.server_stub().GetService,
                       server_pb2.GetServiceRequest(name=service)).service

        def text() -> None:
            state.console.print(service_table([s]))
            if s.replica_status:
                state.console.print(f"\nreplicas: {s.replicas} (READY needs {s.min_ready})")
                state.console.print(replica_table(list(s.replica_status)))
            if s.workers:
                state.console.print(f"\nworkers on: {', '.join(s.workers)}", markup=False)
            if s.restarts:
                state.console.print(f"\nrestarts: {s.restarts} of at most "
                                    f"{s.restart_policy.max_restarts}; last: "
                                    f"{s.last_restart_reason}", markup=False)
            if s.state_message:
                state.console.print(f"\n{s.state_message}", markup=False)

        state.emit(s, text)


@app.command()
def scale(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="A replicated service's id."),
    replicas: int = typer.Option(..., "--replicas", min=1, max=1000,
                                 help="The replicas wanted from now on."),
    min_ready: int = typer.Option(0, min=0, max=1000,
                                  help="Replicas READY for READY (0: keep the current value, "
                                       "at most --replicas)."),
) -> None:
    """Change a replicated service's replica count while it runs: new replicas get new jobs,
    the newest ones go first when it shrinks."""
    state = state_of(ctx)
    with handle_errors(state):
        s = state.call(state.server_stub().ScaleService, server_pb2.ScaleServiceRequest(
            name=service, replicas=replicas, min_ready=min_ready)).service
        state.emit(s, lambda: state.console.print(
            f"{s.name}: {s.replicas} replicas ({state_name(s.state)}); "
            f"follow with: aifb services watch {s.name.removeprefix('services/')}"))


@app.command("list")
def list_(
    ctx: typer.Context,
    filter_: str = typer.Option("", "--filter", help="e.g. 'state=READY recipe=redis label.k=v'"),
    page_size: int = typer.Option(0, help="Services per request (0: the server's default)."),
) -> None:
    """List your services (all pages)."""
    state = state_of(ctx)
    with handle_errors(state):
        services: list[server_pb2.Service] = state.all_pages(
            state.server_stub().ListServices,
            server_pb2.ListServicesRequest(filter=filter_, page_size=page_size), "services")
        state.emit(list(services), lambda: state.console.print(service_table(services)))


@app.command()
def watch(ctx: typer.Context, service: str = typer.Argument(..., help="Service id.")) -> None:
    """Stream state changes until the service is terminal (reconnects if the server restarts)."""
    state = state_of(ctx)
    with handle_errors(state):
        last = None
        for s in watch_stream(state, service):
            last = s
            _print_change(state, s)
        if last is not None and last.state == server_pb2.SERVICE_STATE_FAILED:
            raise typer.Exit(1)


@app.command()
def delete(ctx: typer.Context, service: str = typer.Argument(..., help="Service id."),
           wait: bool = typer.Option(False, "--wait", help="Wait until STOPPED.")) -> None:
    """Cancel the service's job (STOPPING, then STOPPED)."""
    state = state_of(ctx)
    with handle_errors(state):
        s = state.call(state.server_stub().DeleteService,
                       server_pb2.DeleteServiceRequest(name=service)).service
        if wait:
            for latest in watch_stream(state, s.name):
                s = latest
        state.emit(s, lambda: state.console.print(f"{s.name}: {styled_state(s.state)}"))


@app.command()
def logs(ctx: typer.Context, service: str = typer.Argument(..., help="Service id."),
         tail: int = typer.Option(65536, help="Bytes from the end of each stream."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Follow the lines live "
                                     "through the collector (the same as `aifb logs ID -f`)."),
         ) -> None:
    """Print the job's stdout and stderr so far, read from its output files by the server.

    `aifb logs ID` reads the lines the telemetry agents shipped to the collector instead, and
    can follow them live; `--follow` here hands over to it."""
    state = state_of(ctx)
    if follow:
        from aifb.cli.logs import logs as follow_logs

        follow_logs(ctx, service, follow=True, lines=1000, stream=None, collector=None,
                    poll=0.5)
        return
    with handle_errors(state):
        resp = state.call(state.server_stub().GetServiceLogs,
                          server_pb2.GetServiceLogsRequest(name=service, tail_bytes=tail))

        def text() -> None:
            if resp.truncated:
                state.err.print(f"(showing the last {tail} bytes)")
            state.console.print(resp.stdout, end="", markup=False)
            if resp.stderr:
                state.err.print(resp.stderr, end="", markup=False)

        state.emit(resp, text)

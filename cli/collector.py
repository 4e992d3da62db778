"""`aifb collector serve|stats`: the central collector on its own (cluster mode)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from aifb.cli.context import CliState, handle_errors, state_of
from aifb.cli.remote import channel_to
from aifb.cli.serve_options import INSECURE
from aifb.mesh.auth import TokenStore
from aifb.mesh.private import private_dir
from aifb.v1 import collector_pb2, collector_pb2_grpc

app = typer.Typer(help="The collector: agents push metrics and logs to it; it forwards them to "
                  "Prometheus (remote write, /metrics) and Loki, and keeps logs and traces "
                  "for `aifb logs` and `aifb trace`.", no_args_is_help=True)

DEFAULT_LISTEN = "127.0.0.1:50052"


def collector_stub(state: CliState, address: str | None
                   ) -> collector_pb2_grpc.CollectorServiceStub:
    """--collector, else the server's address (`aifb up` mounts the collector there)."""
    return collector_pb2_grpc.CollectorServiceStub(channel_to(state, address))


@app.command()
def serve(
    ctx: typer.Context,
    listen: str = typer.Option(DEFAULT_LISTEN, metavar="HOST:PORT",
                               help="gRPC address for CollectorService and OTLP TraceService "
                               "(non-loopback needs TLS or --insecure)."),
    prometheus_remote_write: str = typer.Option(
        None, "--prometheus-remote-write", metavar="URL",
        help="Prometheus remote-write URL, e.g. http://prom:9090/api/v1/write."),
    loki_url: str = typer.Option(None, "--loki-url", metavar="URL",
                                 help="Loki base URL, e.g. http://loki:3100."),
    loki_format: str = typer.Option(None, help="protobuf (snappy) or json."),
    metrics_listen: str = typer.Option(None, "--metrics-listen", metavar="HOST:PORT",
                                       help="Serve /metrics here (default 127.0.0.1:9100; "
                                       "'' for none)."),
    insecure: bool = INSECURE,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run a standalone collector until Ctrl-C or SIGTERM.

    Agents (`aifb monitor serve`, `aifb logger serve`, job sidecars) push to --listen; agents
    and clients authenticate with the bearer token in ~/.aifb/token (made at the first start,
    as `aifb up` does; a shared home gives it to every node), or one from `aifb tokens create`.
    A batch is acknowledged once Prometheus or Loki has taken it; SIGTERM stops taking new
    batches, forwards the accepted ones (collector.drain_seconds at most) and leaves the rest
    with their agents. Settings not given as flags come from the `collector:` config section
    (AIFB_COLLECTOR__KEY variables).
    """
    state = state_of(ctx)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        from aifb.collector.config import CollectorConfig
        from aifb.collector.targets import check_targets
        from aifb.mesh.config import load_config, section_config

        config = load_config(file=state.config_file,
                             overrides={"mesh": {"home": state.home, "insecure": insecure}})
        collector = check_targets(section_config(CollectorConfig, config, "collector", {
            "remote_write_url": prometheus_remote_write, "loki_url": loki_url,
            "loki_format": loki_format, "metrics_listen": metrics_listen}))
        from aifb.mesh.heap import keep_freed_memory

        keep_freed_memory()  # batch-sized buffers are reused, not faulted in again each time
        asyncio.run(_serve(config.mesh, collector, listen))


async def _serve(mesh: object, collector: object, listen: str) -> None:
    from aifb.collector.app import start_collector
    from aifb.collector.config import CollectorConfig
    from aifb.mesh.agent_host import run_daemon
    from aifb.mesh.config import MeshConfig

    assert isinstance(mesh, MeshConfig) and isinstance(collector, CollectorConfig)
    private_dir(mesh.home_path)
    # The operator's token, as `aifb up` makes it: with a shared home, node daemons and job
    # sidecars read it from there and are accepted at once.
    token_path = TokenStore(mesh.home_path).ensure_owner_token() if mesh.auth else None
    app = await start_collector(collector)

    def listening(port: int) -> None:
        metrics = collector.metrics_listen or "off"
        typer.echo(auth_hint(token_path, mesh.home_path), err=True)
        typer.echo(f"collector is up on {listen.rsplit(':', 1)[0]}:{port} "
                   f"(/metrics: {metrics}). Ctrl-C stops it.", err=True)

    await run_daemon(mesh, app.bindings, listen=listen, stop=app.stop,
                     on_listening=listening)


def auth_hint(token_path: Path | None, home: Path) -> str:
    """How agents authenticate to this collector (printed at start)."""
    if token_path is None:
        return "auth is off (mesh.auth: false): agents need no token."
    return (f"agents authenticate with the token in {token_path}: node daemons and job "
            f"sidecars sharing this home ({home}) use it as it is; elsewhere copy it to "
            "~/.aifb/token (mode 0600) or set AIFB_COLLECTOR_TOKEN for sidecars; `aifb tokens "
            "create --user NAME` on this host gives another user their own.")


@app.command()
def stats(
    ctx: typer.Context,
    collector: str = typer.Option(None, "--collector", metavar="HOST:PORT",
                                  help="CollectorService address (default: the server's)."),
) -> None:
    """Counters since the collector started: received, forwarded, rejected, duplicates."""
    state = state_of(ctx)
    with handle_errors(state):
        resp = state.call(collector_stub(state, collector).GetCollectorStats,
                          collector_pb2.GetCollectorStatsRequest())

        def text() -> None:
            from aifb.cli.context import to_dict

            for key, value in sorted(to_dict(resp.stats).items()):
                if isinstance(value, dict):  # agents_last_sequence: one line per agent
                    for agent, seq in sorted(value.items()):
                        state.console.print(f"{key:<28} {agent} {seq}", markup=False)
                else:
                    state.console.print(f"{key:<28} {value}", markup=False)

        state.emit(resp.stats, text)

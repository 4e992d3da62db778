"""`aifb up`: run the embedded mesh (every service, one process, one port)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import typer

from aifb.cli.context import handle_errors, state_of
from aifb.cli.serve_options import (
    INSECURE,
    NO_AUTH,
    TLS_CA,
    TLS_CERT,
    TLS_CLIENT_CA,
    TLS_KEY,
    TLS_MESH_CERT,
    TLS_MESH_KEY,
)
from aifb.mesh.config import Config
from aifb.mesh.server import serve_until_signal
from aifb.server.app import start_server_app


def up(
    ctx: typer.Context,
    listen: str = typer.Option(None, help="host:port to listen on (default 127.0.0.1:50051)."),
    scheduler: str = typer.Option(None, help="auto, local, slurm or slurmrest."),
    slurmrest_url: str = typer.Option(None, help="unix:/path/slurmrestd.sock or http://host:port"
                                      " (JWT from $SLURM_JWT)."),
    insecure: bool = INSECURE,
    tls_cert: str = TLS_CERT,
    tls_key: str = TLS_KEY,
    tls_client_ca: str = TLS_CLIENT_CA,
    tls_ca: str = TLS_CA,
    tls_mesh_cert: str = TLS_MESH_CERT,
    tls_mesh_key: str = TLS_MESH_KEY,
    no_auth: bool = NO_AUTH,
    prometheus_remote_write: str = typer.Option(
        None, "--prometheus-remote-write", metavar="URL",
        help="Forward metrics by remote write, e.g. http://127.0.0.1:9090/api/v1/write "
        "(Prometheus needs --web.enable-remote-write-receiver)."),
    loki_url: str = typer.Option(None, "--loki-url", metavar="URL",
                                 help="Forward logs to Loki's push API, e.g. "
                                 "http://127.0.0.1:3100."),
    metrics_listen: str = typer.Option(
        None, "--metrics-listen", metavar="HOST:PORT",
        help="Serve the collector's /metrics here (default 127.0.0.1:9100; '' for none)."),
    otlp_endpoint: str = typer.Option(
        None, "--otlp-endpoint", metavar="URL",
        help="Also export spans to this OTLP/gRPC backend (they are always kept locally for "
        "`aifb trace`)."),
    sidecars: str = typer.Option(None, help="Telemetry agents inside each job: auto (on for "
                                 "SLURM), on or off."),
    no_telemetry: bool = typer.Option(False, "--no-telemetry",
                                      help="Run the server alone: no collector, no agents."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run the aifb services in this process until Ctrl-C or SIGTERM.

    Embedded mode: ServerService, the collector (CollectorService and OTLP TraceService), and
    this host's monitor and logger agents (MonitorService, LoggerService) share one gRPC port.
    Metrics are served on /metrics (127.0.0.1:9100) and, with --prometheus-remote-write,
    forwarded to Prometheus; logs and spans are kept for `aifb logs` and `aifb trace` and, with
    --loki-url, forwarded to Loki.
    """
    state = state_of(ctx)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        state._config = None
        overrides = {
            "mesh": {"home": state.home, "listen": listen, "insecure": insecure,
                     "tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca,
                     "tls_ca": tls_ca, "tls_mesh_cert": tls_mesh_cert,
                     "tls_mesh_key": tls_mesh_key,
                     "auth": False if no_auth else None, "otlp_endpoint": otlp_endpoint},
            "server": {"scheduler": scheduler, "slurmrest_url": slurmrest_url,
                       "sidecars": sidecars},
        }
        collector = {"remote_write_url": prometheus_remote_write, "loki_url": loki_url,
                     "metrics_listen": metrics_listen}
        from aifb.mesh.config import load_config

        config = load_config(file=state.config_file, overrides=overrides)
        asyncio.run(_run(config, collector, telemetry=not no_telemetry))


async def _run(config: Config, collector: dict[str, Any], *, telemetry: bool) -> None:
    from aifb.cli.host.bench import embedded_bench
    from aifb.cli.host.experiment import embedded_experiment
    from aifb.cli.host.loopback import loopback
    from aifb.mesh.heap import return_freed_memory, trim_when_grown
    from aifb.mesh.tracing import make_tracer_provider
    from aifb.server.app import build_scheduler
    from aifb.server.sidecars import sidecars_enabled

    return_freed_memory()
    sched = build_scheduler(config)
    embedded = None
    if telemetry:
        from aifb.cli.host.telemetry import start_embedded_telemetry

        embedded = await start_embedded_telemetry(
            config, collector_overrides=collector, all_nodes=sched.name == "local",
            follow_jobs=not sidecars_enabled(config.server.sidecars, sched.name))
    provider = make_tracer_provider("aifb", otlp_endpoint=config.mesh.otlp_endpoint)
    if embedded is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        # Synchronous: the store append is cheap and stays on the event loop's thread.
        provider.add_span_processor(SimpleSpanProcessor(embedded.span_exporter()))
    # The BenchmarkService beside ServerService: it resolves services through ServerService
    # on this port, and its live metrics go to the collector here.
    bench = embedded_bench(config.mesh.home_path, tracer_provider=provider)
    # The ExperimentService: it deploys and benchmarks through the two services above, on
    # this port, as any client would.
    experiments = embedded_experiment(config.mesh.home_path, tracer_provider=provider)
    try:
        app = await start_server_app(
            config, scheduler=sched, tracer_provider=provider,
            extra_bindings=(*(embedded.bindings if embedded else ()), *bench.bindings,
                            *experiments.bindings))
    except BaseException:
        await experiments.stop()
        await bench.stop()
        if embedded is not None:
            await embedded.stop()
        await sched.close()
        raise
    host = config.mesh.listen.rsplit(":", 1)[0]
    address = f"{host}:{app.port}"
    here = loopback(config.mesh, app.port, app.token_path)
    bench.started(here, collector_here=embedded is not None)
    experiments.started(here)
    if embedded is not None:
        await embedded.start_agents(here.address, here.token, here.tls)
    metrics = ""
    if embedded is not None and embedded.collector.http is not None:
        metrics = f"; /metrics on {embedded.collector.config.metrics_listen}"
    typer.echo(f"aifb is up on {address} (scheduler: {app.scheduler.name}; token: "
               f"{app.token_path}{metrics}). Ctrl-C stops it.", err=True)

    async def on_stop() -> None:
        # The agents first: they flush to the collector and close their own streams, so the
        # server's grace period is not spent waiting on them.
        if embedded is not None:
            await embedded.stop_agents()
        # The experiments next (they stop without recording anything: the next start resumes
        # them), then the BenchmarkService (its metrics stream, its runs).
        await experiments.stop()
        await bench.stop()
        app.manager.hub.close()

    # Large requests (up to the 16 MiB limit) must not leave the heap large once they are
    # gone: a burst of 10 MB calls kept 1-2 GB before (docs/server.md, "Memory").
    trimmer = asyncio.create_task(trim_when_grown())
    try:
        await serve_until_signal(app.mesh, config.mesh.shutdown_grace_seconds, on_stop=on_stop)
    finally:
        trimmer.cancel()
        await experiments.stop()
        await bench.stop()
        await app.stop(0)
        if embedded is not None:
            await embedded.stop()
        provider.shutdown()

"""`aifb up`: run the embedded mesh (every service, one process, one port)."""

from __future__ import annotations

import asyncio
import logging

import typer

from aifb.cli.context import handle_errors, state_of
from aifb.mesh.server import serve_until_signal
from aifb.server.app import start_server_app


def up(
    ctx: typer.Context,
    listen: str = typer.Option(None, help="host:port to listen on (default 127.0.0.1:50051)."),
    scheduler: str = typer.Option(None, help="auto, local, slurm or slurmrest."),
    slurmrest_url: str = typer.Option(None, help="unix:/path/slurmrestd.sock or http://host:port"
                                      " (JWT from $SLURM_JWT)."),
    insecure: bool = typer.Option(None, "--insecure", help="Allow a non-loopback listen "
                                  "address without TLS (trusted networks only)."),
    tls_cert: str = typer.Option(None, help="Server certificate (PEM)."),
    tls_key: str = typer.Option(None, help="Server key (PEM)."),
    tls_client_ca: str = typer.Option(None, help="CA for client certificates (enables mTLS)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Disable bearer-token auth "
                                 "(single-user machines only)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run the aifb services in this process until Ctrl-C or SIGTERM."""
    state = state_of(ctx)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        state._config = None
        overrides = {
            "mesh": {"home": state.home, "listen": listen, "insecure": insecure,
                     "tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca,
                     "auth": False if no_auth else None},
            "server": {"scheduler": scheduler, "slurmrest_url": slurmrest_url},
        }
        from aifb.mesh.config import load_config

        config = load_config(file=state.config_file, overrides=overrides)
        asyncio.run(_run(config))


async def _run(config: object) -> None:
    from aifb.mesh.config import Config
    from aifb.mesh.tracing import make_tracer_provider

    assert isinstance(config, Config)
    provider = make_tracer_provider("aifb", otlp_endpoint=config.mesh.otlp_endpoint)
    app = await start_server_app(config, tracer_provider=provider)
    typer.echo(f"aifb is up on {config.mesh.listen.rsplit(':', 1)[0]}:{app.port} "
               f"(scheduler: {app.scheduler.name}; token: {app.token_path}). Ctrl-C stops it.",
               err=True)
    await serve_until_signal(app.mesh, config.mesh.shutdown_grace_seconds,
                             on_stop=app.manager.hub.close)
    await app.stop(0)
    provider.shutdown()

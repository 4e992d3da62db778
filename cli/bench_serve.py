"""`aifb bench serve`: the BenchmarkService on its own, anywhere (cluster mode)."""

from __future__ import annotations

import asyncio
import logging

import typer

from aifb.cli.context import handle_errors, state_of
from aifb.cli.serve_options import INSECURE, NO_AUTH, TLS_CERT, TLS_CLIENT_CA, TLS_KEY
from aifb.mesh.errors import InvalidArgument

__all__ = ["serve"]


def _address(value: str, flag: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{flag} {value!r}: expected HOST:PORT", field=flag)
    return value


# The BenchmarkService's own port (aifb.client.service.standalone's default too).
DEFAULT_LISTEN = "127.0.0.1:50052"


def serve(
    ctx: typer.Context,
    listen: str = typer.Option(DEFAULT_LISTEN, metavar="HOST:PORT",
                               help="gRPC address for BenchmarkService (non-loopback needs TLS "
                               "or --insecure)."),
    server: str = typer.Option("", "--server", metavar="HOST:PORT",
                               help="The ServerService (`aifb up` or the server on the login "
                               "node) that --service targets resolve through. Without it only "
                               "--url targets run."),
    collector: str = typer.Option("", "--collector", metavar="HOST:PORT",
                                  help="Send live run metrics to this CollectorService (with "
                                  "`aifb up`: its address)."),
    runs_dir: str = typer.Option("", "--runs-dir", metavar="DIR",
                                 help="Where runs and reports live (default <home>/bench-serve; "
                                 "one benchmark service per directory)."),
    server_timeout: float = typer.Option(10.0, "--server-timeout", min=0.1, metavar="SECONDS",
                                         help="Deadline of each call to --server."),
    insecure: bool = INSECURE,
    tls_cert: str = TLS_CERT,
    tls_key: str = TLS_KEY,
    tls_client_ca: str = TLS_CLIENT_CA,
    no_auth: bool = NO_AUTH,
    otlp_endpoint: str = typer.Option(None, "--otlp-endpoint", metavar="URL",
                                      help="Export the runs' spans to this OTLP/gRPC backend."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at debug level."),
) -> None:
    """Run a standalone BenchmarkService until Ctrl-C or SIGTERM.

    Load runs from this machine (a compute node, a Spark driver) against services the server
    deployed: `aifb --server HOST:PORT bench run --service ID ...` (HOST:PORT being this
    service's --listen) asks the server at --server for the service's endpoint, recipe and
    batch script, on the caller's behalf: the caller's bearer token goes with the question, so
    a user sees only their own services. Callers authenticate against <home>/tokens.json, so
    share the home (or the token store) with the server. Calls to --server and --collector use
    TLS with --ca-file (the global option). Running runs are cancelled on SIGTERM; what they
    measured is kept.
    """
    state = state_of(ctx)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        from aifb.client.service.standalone import StandaloneSettings, serve_standalone
        from aifb.mesh.config import load_config

        config = load_config(file=state.config_file, overrides={"mesh": {
            "home": state.home, "insecure": insecure, "tls_cert": tls_cert, "tls_key": tls_key,
            "tls_client_ca": tls_client_ca, "auth": False if no_auth else None,
            "otlp_endpoint": otlp_endpoint}})
        mesh = config.mesh
        settings = StandaloneSettings(
            listen=listen, server=_address(server, "--server") if server else "",
            collector=_address(collector, "--collector") if collector else "",
            runs_dir=runs_dir, server_timeout_seconds=server_timeout,
            ca_file=state.ca_file or (mesh.tls_client_ca if mesh.tls else ""),
            cert_file=state.cert_file, key_file=state.key_file)

        def listening(port: int) -> None:
            where = (f"services resolve through {settings.server}" if settings.server
                     else "no --server: --url targets only")
            metrics = f"; live metrics to {settings.collector}" if settings.collector else ""
            typer.echo(f"benchmark service is up on {listen.rsplit(':', 1)[0]}:{port} "
                       f"({where}{metrics}; runs in {settings.runs_path(mesh.home_path)}). "
                       "Ctrl-C stops it.", err=True)

        asyncio.run(serve_standalone(mesh, settings, on_listening=listening))

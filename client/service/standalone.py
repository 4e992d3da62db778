"""The BenchmarkService alone on its own port (`aifb bench serve`), until SIGTERM or SIGINT.

    await serve_standalone(config.mesh, StandaloneSettings(listen="127.0.0.1:50052",
                                                           server="login1:50051"))

Service targets resolve through the ServerService at `server` (a `GrpcResolver`); without
one, only URL targets run. Live run metrics go to `collector` when given. Callers
authenticate with the tokens in `<home>/tokens.json`, as on every aifb server; calls to the
server carry the caller's token, or this process's own (AIFB_TOKEN, AIFB_TOKEN_FILE,
`<home>/token`) for callers without one. Runs live in `runs_dir` (default
`<home>/bench-serve`, apart from `aifb up`'s `<home>/benchmarks`), which one process holds at a
time: a second is refused rather than failing the first one's runs as "left in flight".
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aifb.client.service.app import BenchmarkApp, start_benchmark_service
from aifb.client.service.remote_targets import GrpcResolver, NoServerResolver
from aifb.mesh.auth import Authenticator, TokenStore
from aifb.mesh.channel import load_token
from aifb.mesh.config import MeshConfig
from aifb.mesh.errors import FailedPrecondition
from aifb.mesh.private import private_dir
from aifb.mesh.server import MeshServer, create_server, serve_until_signal
from aifb.mesh.tracing import make_tracer_provider

__all__ = ["DEFAULT_LISTEN", "StandaloneSettings", "lock_runs_dir", "serve_standalone"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50052"
RUNS_DIR_NAME = "bench-serve"


@dataclass(frozen=True)
class StandaloneSettings:
    listen: str = DEFAULT_LISTEN
    server: str = ""  # the ServerService's host:port; "" for none (URL targets only)
    collector: str = ""  # the CollectorService's host:port for live metrics; "" for none
    runs_dir: str = ""  # "" for <home>/bench-serve
    server_timeout_seconds: float = 10.0  # the deadline of each call to the server
    # TLS towards the server and the collector (the CA that signed their certificates).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def runs_path(self, home: Path) -> Path:
        return Path(self.runs_dir).expanduser() if self.runs_dir else home / RUNS_DIR_NAME


def lock_runs_dir(path: Path) -> int:
    """Hold `path` for this process (an exclusive lock on `path/.lock`); the descriptor to
    close at exit. FailedPrecondition when another process holds it."""
    private_dir(path)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FailedPrecondition(f"{path} is in use by another benchmark service: give this "
                                 "one its own --runs-dir") from None
    return fd


async def serve_standalone(mesh: MeshConfig, settings: StandaloneSettings, *,
                           on_listening: Callable[[int], None] | None = None) -> None:
    """Serve the BenchmarkService (with health and reflection) on `settings.listen` until a
    signal; running runs are cancelled, keeping what they measured, before the port closes."""
    home = mesh.home_path
    private_dir(home)
    token = load_token(home)
    lock = lock_runs_dir(settings.runs_path(home))
    provider = make_tracer_provider("aifb-bench", otlp_endpoint=mesh.otlp_endpoint)
    resolver: GrpcResolver | NoServerResolver = NoServerResolver()
    if settings.server:
        resolver = GrpcResolver(settings.server, token=token, ca_file=settings.ca_file,
                                cert_file=settings.cert_file, key_file=settings.key_file,
                                timeout=settings.server_timeout_seconds,
                                tracer_provider=provider)
    app: BenchmarkApp | None = None
    server: MeshServer | None = None

    async def stop_app() -> None:
        nonlocal app
        if app is not None:
            current, app = app, None
            await current.stop()
        if isinstance(resolver, GrpcResolver):
            await resolver.close()

    try:
        app = start_benchmark_service(home, resolver=resolver, tracer_provider=provider,
                                      runs_dir=settings.runs_path(home))
        if settings.collector:
            app.attach_collector(settings.collector, token, ca_file=settings.ca_file,
                                 cert_file=settings.cert_file, key_file=settings.key_file)
        auth = Authenticator(TokenStore(home), enabled=mesh.auth)
        server = await create_server(mesh, [app.binding], authenticator=auth,
                                     tracer_provider=provider, listen=settings.listen)
        log.info("BenchmarkService on port %d: %s; runs in %s", server.port,
                 f"services resolve through {settings.server}" if settings.server
                 else "no server, URL targets only", settings.runs_path(home))
        if on_listening is not None:
            on_listening(server.port)
        await serve_until_signal(server, mesh.shutdown_grace_seconds, on_stop=stop_app)
        server = None
    finally:
        if server is not None:  # failed while serving: close the port at once
            await server.stop(0)
        await stop_app()
        provider.shutdown()
        os.close(lock)

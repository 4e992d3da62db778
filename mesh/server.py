"""Server bootstrap: create_server() (health, reflection, auth, tracing, TLS) and serve()."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.trace import TracerProvider

from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig, is_loopback
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.interceptors import InTaskStreams, MeshInterceptor
from aifb.mesh.tls import check_tls

__all__ = ["MeshServer", "ServiceBinding", "create_server", "serve_until_signal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to mount: its full name (for health and reflection) and how to add it."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]


@dataclass
class MeshServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    service_names: tuple[str, ...]

    async def stop(self, grace: float) -> None:
        for name in (*self.service_names, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _credentials(config: MeshConfig) -> grpc.ServerCredentials | None:
    check_tls(config)
    if not config.tls:
        if not is_loopback(config.listen) and not config.insecure:
            raise InvalidArgument(
                f"refusing to listen on non-loopback address {config.listen} without TLS: "
                "set mesh.tls_cert and mesh.tls_key, or pass --insecure if the network is trusted",
                field="mesh.listen",
            )
        return None
    key = Path(config.tls_key).expanduser().read_bytes()
    cert = Path(config.tls_cert).expanduser().read_bytes()
    ca = Path(config.tls_client_ca).expanduser().read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


async def create_server(
    config: MeshConfig,
    services: Sequence[ServiceBinding],
    *,
    authenticator: Authenticator,
    tracer_provider: TracerProvider | None = None,
    listen: str | None = None,
) -> MeshServer:
    """Build and start a server with every binding, health and reflection; returns the bound port.

    `listen` overrides config.listen (tests pass "127.0.0.1:0").
    """
    address = listen or config.listen
    creds = _credentials(config.model_copy(update={"listen": address}))
    server = grpc.aio.server(
        # Health is not traced: the OTel interceptor expects handlers that yield, and the health
        # servicer's Watch writes with context.write (every Watch failed with UNKNOWN). Probes
        # every few seconds would only bury the traces that matter anyway.
        interceptors=[InTaskStreams(),
                      aio_server_interceptor(tracer_provider=tracer_provider,
                                             filter_=filters.negate(filters.health_check())),
                      MeshInterceptor(authenticator)],
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024),
                 ("grpc.so_reuseport", 0)],
    )
    for binding in services:
        binding.add_to_server(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(b.full_name for b in services)
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise InvalidArgument(f"cannot listen on {address}: address in use or invalid",
                              field="mesh.listen")
    await server.start()
    for name in (*names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s (port %d)", address, port)
    return MeshServer(server=server, port=port, health=health_servicer, service_names=names)


async def serve_until_signal(mesh: MeshServer, grace: float,
                             on_stop: Callable[[], object] | None = None) -> None:
    """Run until SIGTERM or SIGINT (SLURM sends SIGTERM before SIGKILL), then stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(mesh.server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping (grace %.1fs)", grace)
    # Health answers NOT_SERVING from now on: balancers and probes move away while the
    # component drains (on_stop), before the port closes.
    await mesh.health.enter_graceful_shutdown()
    if on_stop is not None:
        result = on_stop()
        if asyncio.iscoroutine(result):
            await result
    await mesh.stop(grace)
    for task in (waiter, stopper):
        task.cancel()

"""The BenchmarkService in the server's process: it resolves services through ServerService over
loopback gRPC (a `GrpcResolver`, as `aifb bench serve` does across the network), and its live
metrics go to the collector on the same port when one is mounted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from aifb.cli.host.loopback import Loopback
from aifb.client.service.app import BenchmarkApp, start_benchmark_service
from aifb.client.service.remote_targets import GrpcResolver
from aifb.mesh.server import ServiceBinding

__all__ = ["EmbeddedBench", "embedded_bench"]


@dataclass
class EmbeddedBench:
    app: BenchmarkApp
    resolver: GrpcResolver
    stopped: bool = False

    @property
    def bindings(self) -> tuple[ServiceBinding, ...]:
        """Mount these beside ServerService (`start_server_app(extra_bindings=...)`)."""
        return (self.app.binding,)

    def started(self, here: Loopback, *, collector_here: bool) -> None:
        """Once the port is bound: resolve through it; with `collector_here`, send live run
        metrics to the collector mounted on it."""
        tls = here.tls
        self.resolver.connect_to(here.address, ca_file=tls.ca_file, cert_file=tls.cert_file,
                                 key_file=tls.key_file)
        if collector_here:
            self.app.attach_collector(here.address, here.token, ca_file=tls.ca_file,
                                      cert_file=tls.cert_file, key_file=tls.key_file)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.app.stop()
            await self.resolver.close()


def embedded_bench(home: Path, *, tracer_provider: TracerProvider | None = None
                   ) -> EmbeddedBench:
    """Build it (on the event loop that will serve it) before the server starts; call
    `started` once the server listens."""
    resolver = GrpcResolver("", tracer_provider=tracer_provider)
    app = start_benchmark_service(home, resolver=resolver, tracer_provider=tracer_provider)
    return EmbeddedBench(app, resolver)

"""Assemble the BenchmarkService: run store, manager, telemetry sink, servicer and its binding.

    app = start_benchmark_service(home, resolver=..., tracer_provider=...)
    mesh = await create_server(config.mesh, (*others, app.binding), ...)
    app.attach_collector(f"127.0.0.1:{mesh.port}", token)   # optional: live metrics
    ...
    await app.stop()

Service targets resolve through a `ServiceResolver`: a `GrpcResolver` asking ServerService over
gRPC, the process's own port in `aifb up` (`aifb.cli.host.bench`) or a remote server for `aifb
bench serve` (`aifb.client.service.standalone`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from aifb.client.service.facts import node_facts
from aifb.client.service.manager import BenchmarkManager
from aifb.client.service.servicer import BenchmarkServicer
from aifb.client.service.store import RunStore
from aifb.client.service.targets import ServiceResolver
from aifb.client.service.telemetry import TelemetrySink
from aifb.mesh.channel import open_channel
from aifb.mesh.server import ServiceBinding
from aifb.v1 import client_pb2, client_pb2_grpc

__all__ = ["BenchmarkApp", "start_benchmark_service"]

log = logging.getLogger(__name__)


@dataclass
class BenchmarkApp:
    manager: BenchmarkManager
    store: RunStore
    binding: ServiceBinding

    def attach_collector(self, address: str, token: str | None, *, ca_file: str = "",
                         cert_file: str = "", key_file: str = "") -> None:
        """Send live run metrics to the collector at `address` (host:port); TLS with
        `ca_file`."""
        sink = TelemetrySink(lambda: open_channel(address, token=token, ca_file=ca_file,
                                                  cert_file=cert_file, key_file=key_file))
        sink.start()
        self.manager.telemetry = sink
        log.info("benchmark metrics go to the collector at %s", address)

    async def stop(self) -> None:
        await self.manager.close()
        self.store.close()


def start_benchmark_service(home: Path, *, resolver: ServiceResolver | None = None,
                            tracer_provider: TracerProvider | None = None,
                            runs_dir: Path | None = None) -> BenchmarkApp:
    """Open the run store (`runs_dir`, default `<home>/benchmarks`), fail runs a previous
    process left in flight, and build the servicer's binding (call on the event loop that
    will serve it)."""
    store = RunStore(runs_dir or home / "benchmarks")
    tracer = tracer_provider.get_tracer("aifb.client") if tracer_provider else None
    manager = BenchmarkManager(store, resolver, tracer=tracer, facts=node_facts())
    manager.recover()
    servicer = BenchmarkServicer(manager)
    binding = ServiceBinding(
        full_name=client_pb2.DESCRIPTOR.services_by_name["BenchmarkService"].full_name,
        add_to_server=lambda s: client_pb2_grpc.add_BenchmarkServiceServicer_to_server(
            servicer, s))
    return BenchmarkApp(manager=manager, store=store, binding=binding)

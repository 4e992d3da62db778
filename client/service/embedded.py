"""The embedded mesh with the BenchmarkService, on a background loop (`aifb demo`, tests).

`ThreadedMesh` is the server's `ThreadedServer` with the BenchmarkService mounted as an
extension (service targets resolve through the same process's ServerService domain) and,
optionally, the collector and its forwarders on the same port, so live run metrics flow.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aifb.client.service.app import benchmark_extension
from aifb.server.app import start_server_app
from aifb.server.embedded import ThreadedServer
from aifb.v1 import client_pb2_grpc

__all__ = ["ThreadedMesh"]


@dataclass
class ThreadedMesh(ThreadedServer):
    # A started aifb.collector CollectorApp config (remote write etc.); None: no collector.
    collector_config: Any = None
    collector: Any = field(default=None, init=False)

    def start(self) -> ThreadedMesh:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="aifb-mesh")
        self._thread.start()
        sched = self.make_scheduler() if self.make_scheduler else None
        bindings: tuple[Any, ...] = ()
        if self.collector_config is not None:
            from aifb.collector import start_collector

            self.collector = self.run(start_collector(self.collector_config, serve_http=False))
            bindings = self.collector.bindings
        ext = benchmark_extension(self.config.mesh.home_path,
                                  tracer_provider=self.tracer_provider,
                                  collector_here=self.collector is not None)
        self.app = self.run(start_server_app(self.config, listen=self.config.mesh.listen,
                                             scheduler=sched,
                                             tracer_provider=self.tracer_provider,
                                             extra_bindings=bindings, extensions=(ext,)))
        return self

    def __enter__(self) -> ThreadedMesh:
        return self.start()

    def bench_stub(self, token: str | None = None) -> client_pb2_grpc.BenchmarkServiceStub:
        return client_pb2_grpc.BenchmarkServiceStub(self.channel(token))

    def stop(self, grace: float = 0.5) -> None:
        if self.app is not None:
            self.run(self.app.stop(grace))
            self.app = None
        if self.collector is not None:
            self.run(self.collector.stop())
            self.collector = None
        super().stop(grace)

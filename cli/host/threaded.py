"""The embedded mesh on a background event loop (`aifb demo`, tests, benchmarks).

`ThreadedMesh` is the server's `ThreadedServer` with the BenchmarkService mounted on the same
port (it resolves services through ServerService over loopback gRPC) and, optionally, the
collector and its forwarders, so live run metrics flow.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aifb.cli.host.bench import EmbeddedBench, embedded_bench
from aifb.cli.host.experiment import EmbeddedExperiment, embedded_experiment
from aifb.cli.host.loopback import loopback
from aifb.collector import CollectorConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.server.app import start_server_app
from aifb.server.embedded import ThreadedServer
from aifb.v1 import client_pb2_grpc

__all__ = ["ThreadedMesh"]


@dataclass
class ThreadedMesh(ThreadedServer):
    # The collector's settings (remote write etc.); None: no collector.
    collector_config: CollectorConfig | None = None
    collector: CollectorApp | None = field(default=None, init=False)
    bench: EmbeddedBench | None = field(default=None, init=False)
    experiments: EmbeddedExperiment | None = field(default=None, init=False)

    def start(self) -> ThreadedMesh:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="aifb-mesh")
        self._thread.start()
        sched = self.make_scheduler() if self.make_scheduler else None
        bindings: tuple[Any, ...] = ()
        if self.collector_config is not None:
            self.collector = self.run(start_collector(self.collector_config, serve_http=False))
            bindings = self.collector.bindings
        home = self.config.mesh.home_path

        async def build() -> tuple[EmbeddedBench, EmbeddedExperiment]:  # on the serving loop
            return (embedded_bench(home, tracer_provider=self.tracer_provider),
                    embedded_experiment(home, tracer_provider=self.tracer_provider))

        self.bench, self.experiments = self.run(build())
        self.app = self.run(start_server_app(self.config, listen=self.config.mesh.listen,
                                             scheduler=sched,
                                             tracer_provider=self.tracer_provider,
                                             extra_bindings=(*bindings, *self.bench.bindings,
                                                             *self.experiments.bindings)))
        here = loopback(self.config.mesh, self.app.port, self.app.token_path)
        bench, experiments = self.bench, self.experiments

        async def attach() -> None:  # its metrics sender runs on the serving loop
            bench.started(here, collector_here=self.collector is not None)
            experiments.started(here)

        self.run(attach())
        return self

    def __enter__(self) -> ThreadedMesh:
        return self.start()

    def bench_stub(self, token: str | None = None) -> client_pb2_grpc.BenchmarkServiceStub:
        return client_pb2_grpc.BenchmarkServiceStub(self.channel(token))

    def stop(self, grace: float = 0.5) -> None:
        if self.experiments is not None:
            self.run(self.experiments.stop())
            self.experiments = None
        if self.bench is not None:
            self.run(self.bench.stop())
            self.bench = None
        if self.app is not None:
            self.run(self.app.stop(grace))
            self.app = None
        if self.collector is not None:
            self.run(self.collector.stop())
            self.collector = None
        super().stop(grace)

"""The ExperimentService in the server's process: it calls ServerService and BenchmarkService
on the process's own port over loopback gRPC, exactly as it would across the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from aifb.cli.host.loopback import Loopback
from aifb.experiment.app import ExperimentApp, start_experiment_service
from aifb.experiment.remote import Remote
from aifb.mesh.server import ServiceBinding

__all__ = ["EmbeddedExperiment", "embedded_experiment"]


@dataclass
class EmbeddedExperiment:
    app: ExperimentApp
    stopped: bool = False

    @property
    def bindings(self) -> tuple[ServiceBinding, ...]:
        return (self.app.binding,)

    def started(self, here: Loopback) -> None:
        """Once the port is bound: call the services through it, and resume what a previous
        process left unfinished."""
        tls = here.tls
        self.app.remote.token = here.token  # for experiments created with auth off
        self.app.remote.connect_to(here.address, ca_file=tls.ca_file, cert_file=tls.cert_file,
                                   key_file=tls.key_file)
        self.app.resume()

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.app.stop()


def embedded_experiment(home: Path, *, tracer_provider: TracerProvider | None = None
                        ) -> EmbeddedExperiment:
    """Build it (on the serving loop) before the server starts; call `started` once it
    listens."""
    return EmbeddedExperiment(start_experiment_service(
        home, remote=Remote(tracer_provider=tracer_provider)))

"""Assemble the ExperimentService: its store, the mesh clients it calls, manager, servicer.

    app = start_experiment_service(home, remote=Remote(...))
    mesh = await create_server(config.mesh, (*others, app.binding), ...)
    app.remote.connect_to(own_address)       # in `aifb up`: the process's own port
    ...
    await app.stop()

Unfinished experiments of a previous process resume as soon as it starts (`recover`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aifb.experiment.manager import ExperimentManager
from aifb.experiment.remote import Remote
from aifb.experiment.servicer import ExperimentServicer
from aifb.experiment.store import ExperimentStore
from aifb.mesh.server import ServiceBinding
from aifb.v1 import experiment_pb2, experiment_pb2_grpc

__all__ = ["ExperimentApp", "start_experiment_service"]


@dataclass
class ExperimentApp:
    manager: ExperimentManager
    store: ExperimentStore
    remote: Remote
    binding: ServiceBinding

    def resume(self) -> int:
        """Resume what a previous process left unfinished (once the mesh it calls listens)."""
        return self.manager.recover()

    async def stop(self) -> None:
        await self.manager.close()
        await self.remote.close()
        self.store.close()


def start_experiment_service(home: Path, *, remote: Remote) -> ExperimentApp:
    """Open `<home>/experiments` and build the servicer's binding (on the serving loop)."""
    store = ExperimentStore(home / "experiments")
    manager = ExperimentManager(store, remote)
    servicer = ExperimentServicer(manager)
    binding = ServiceBinding(
        full_name=experiment_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name,
        add_to_server=lambda s: experiment_pb2_grpc.add_ExperimentServiceServicer_to_server(
            servicer, s))
    return ExperimentApp(manager=manager, store=store, remote=remote, binding=binding)

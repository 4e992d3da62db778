"""Assemble the server: registry, scheduler, poller, manager and the gRPC ServerService."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from aifb.mesh.auth import Authenticator, TokenStore
from aifb.mesh.config import Config
from aifb.mesh.errors import SchedulerUnavailable
from aifb.mesh.private import private_dir
from aifb.mesh.server import MeshServer, ServiceBinding, create_server
from aifb.mesh.tls import check_tls, mesh_client_tls
from aifb.server.deploy import Deployer, job_search_path
from aifb.server.jobs import Scheduler
from aifb.server.manager import ServiceManager
from aifb.server.poller import Poller, PollInterval
from aifb.server.registry import Registry
from aifb.server.servicer import ServerServicer
from aifb.server.sidecars import COLLECTOR_SERVICE, sidecar_environment
from aifb.v1 import server_pb2, server_pb2_grpc

__all__ = ["ServerApp", "build_scheduler", "start_server_app"]

log = logging.getLogger(__name__)


def build_scheduler(config: Config) -> Scheduler:
    """The scheduler backend the config names ('auto': slurm when SLURM answers, else local)."""
    from aifb.server.schedulers import detect_default_kind, make_scheduler

    kind: str = config.server.scheduler
    if kind == "auto":
        kind = detect_default_kind()
    home = config.mesh.home_path
    if kind == "local":
        return make_scheduler("local", state_dir=home / "local-jobs",
                              kill_wait_seconds=config.server.local_kill_wait_seconds)
    if kind == "slurmrest":
        return make_scheduler("slurmrest", url=config.server.slurmrest_url,
                              user=config.server.slurmrest_user)
    return make_scheduler(kind)


@dataclass
class ServerApp:
    """A running server: its gRPC endpoint and the pieces tests reach into."""

    mesh: MeshServer
    manager: ServiceManager
    poller: Poller
    registry: Registry
    scheduler: Scheduler
    token_path: Path
    extra: dict[str, object] = field(default_factory=dict)
    reconciling: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.mesh.port

    async def stop(self, grace: float = 1.0) -> None:
        if self.reconciling is not None:
            self.reconciling.cancel()
        self.manager.hub.close()
        await self.poller.stop()
        await self.mesh.stop(grace)
        await self.scheduler.close()
        self.registry.close()


async def start_server_app(
    config: Config,
    *,
    listen: str | None = None,
    scheduler: Scheduler | None = None,
    tracer_provider: TracerProvider | None = None,
    extra_bindings: tuple[ServiceBinding, ...] = (),
) -> ServerApp:
    """Start ServerService (plus `extra_bindings`: the other components `aifb up` mounts on
    the same port, which reach ServerService over loopback gRPC like any client)."""
    # Jobs and agents must reach the server the way it listens: refuse settings they cannot
    # follow before anything is submitted.
    check_tls(config.mesh, hosts_jobs=True)
    home = config.mesh.home_path
    private_dir(home)
    store = TokenStore(home)
    token_path = store.ensure_owner_token()
    authenticator = Authenticator(store, enabled=config.mesh.auth)
    registry = Registry(home / "server.db")
    sched = scheduler or build_scheduler(config)
    deployer = Deployer.from_config(config, python=sys.executable)
    deployer.environment["PATH"] = job_search_path(sys.executable)
    deployer.environment.update(mesh_client_tls(config.mesh).environment())
    deployer.environment.update(sidecar_environment(
        config, sched.name, collector_here=any(b.full_name == COLLECTOR_SERVICE
                                               for b in extra_bindings)))
    tracer = (tracer_provider.get_tracer("aifb.server") if tracer_provider else None)
    # The address is known only after binding; the manager reads it at create time.
    manager = ServiceManager(registry, sched, deployer, home=home, advertise_address="",
                             otlp_endpoint=config.mesh.otlp_endpoint, tracer=tracer)
    authenticator.add_resolver(manager.resolve_report_token)
    # Taken before serving: creates of this process have no job id while sbatch runs either.
    leftover = manager.unsubmitted()
    servicer = ServerServicer(manager, deployer)
    binding = ServiceBinding(
        full_name=server_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name,
        add_to_server=lambda s: server_pb2_grpc.add_ServerServiceServicer_to_server(servicer, s),
    )
    mesh = await create_server(config.mesh, (binding, *extra_bindings),
                               authenticator=authenticator, tracer_provider=tracer_provider,
                               listen=listen)
    host = (listen or config.mesh.listen).rsplit(":", 1)[0]
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    manager.advertise_address = config.server.advertise_address or f"{host}:{mesh.port}"
    poller = Poller(sched, manager.active_job_ids, manager.apply_job_statuses,
                    PollInterval(config.server.poll_interval_seconds,
                            config.server.poll_max_interval_seconds))
    manager.wake_poller = poller.wake
    poller.start()
    reconciling = None
    # Replicated services a stopped server left mid-create or mid-scale get their count back.
    await manager.converge_sets()
    if leftover:
        log.warning("%d services were being submitted when the server stopped: looking for "
                    "their jobs", len(leftover))
        reconciling = asyncio.create_task(_reconcile(manager, leftover,
                                                     config.server.poll_interval_seconds))
    log.info("ServerService on port %d, scheduler %s, %d services to re-attach", mesh.port,
             sched.name, len(registry.polled()))
    return ServerApp(mesh=mesh, manager=manager, poller=poller, registry=registry,
                     reconciling=reconciling,
                     scheduler=sched, token_path=token_path)


async def _reconcile(manager: ServiceManager, sids: list[str], interval: float) -> None:
    """Reconcile what a stopped server left mid-submission; while the batch system does not
    answer, try again (the services stay PENDING, saying why)."""
    while True:
        try:
            await manager.reconcile(sids)
            return
        except SchedulerUnavailable as exc:
            log.warning("cannot look for the jobs of %d services yet: %s", len(sids), exc)
            await asyncio.sleep(max(interval, 1.0))

"""The ServiceManager's commands for replicated services: create, scale, delete, converge.

A mixin of `aifb.server.manager.ServiceManager` (it uses the manager's registry, lock and
commit); the rules themselves are `aifb.server.replica_sets`'. Crash safety: the set's record
(with the wanted count) is committed first, each replica's record next with a job due, then the
jobs are submitted by the same path that replaces an ended job (named, recorded before sbatch,
adopted by name after a crash). `converge_sets()` at start-up makes each set match its wanted
count again, so a server killed in the middle of a create or a scale neither loses nor doubles
a replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aifb.mesh.auth import Principal
from aifb.mesh.errors import AifbError, FailedPrecondition, InvalidArgument
from aifb.server.model import ServiceRecord
from aifb.server.replica_sets import MAX_REPLICAS, replica_id, summary, wanted_changes
from aifb.server.states import ServiceState

if TYPE_CHECKING:
    import asyncio

    from aifb.server.registry import Registry

__all__ = ["ReplicaSetCommands"]

log = logging.getLogger(__name__)


def check_counts(replicas: int, min_ready: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas: got {replicas}, expected 1..{MAX_REPLICAS}",
                              field="replicas")
    if not 0 <= min_ready <= replicas:
        raise InvalidArgument(f"min_ready: got {min_ready}, expected 0..{replicas} (0: all)",
                              field="min_ready")


class ReplicaSetCommands:
    if TYPE_CHECKING:
        registry: Registry
        _lock: asyncio.Lock
        _commit: Callable[[ServiceRecord], ServiceRecord]
        _submit_replacements: Callable[[], Awaitable[bool]]
        _wake: Callable[[], None]
        get: Callable[[Principal, str], ServiceRecord]
        delete: Callable[[Principal, str], Awaitable[ServiceRecord]]

    def replicas_of(self, record: ServiceRecord) -> list[ServiceRecord]:
        """A set's active replicas, by index (none for a single-job service)."""
        if not record.is_set:
            return []
        return sorted((r for r in self.registry.replicas_of(record.id) if not r.retired),
                      key=lambda r: r.replica)

    def _add_replicas(self, group: ServiceRecord, indexes: list[int], now: float) -> None:
        for index in indexes:
            self.registry.insert(ServiceRecord(
                id=replica_id(group.id, index), owner=group.owner, recipe=group.recipe,
                state=ServiceState.PENDING, parameters=dict(group.parameters),
                labels=dict(group.labels), resources=group.resources,
                state_message="waiting for its job to be submitted", scheduler=group.scheduler,
                workdir=f"{group.workdir}-{index}", create_time=now, update_time=now,
                trace_id=group.trace_id, restart=group.restart, job_due=True,
                metrics_path=group.metrics_path, metrics_port=group.metrics_port,
                metrics_on_endpoint_port=group.metrics_on_endpoint_port, parent=group.id,
                replica=index))

    async def _start_set(self, group: ServiceRecord) -> ServiceRecord:
        """Insert the set's replicas (a job due for each) and submit their jobs."""
        async with self._lock:
            indexes, _ = wanted_changes(group, self.registry.replicas_of(group.id))
            self._add_replicas(group, indexes, time.time())
            self._refresh_set(group.id)
        await self._submit_replacements()
        self._wake()
        return self.registry.get(group.id) or group

    async def scale(self, principal: Principal, name: str, replicas: int,
                    min_ready: int = 0) -> ServiceRecord:
        if principal.is_job:
            raise InvalidArgument("a job's report token cannot scale services")
        record = self.get(principal, name)
        if not record.is_set:
            raise FailedPrecondition(
                f"service {record.id} runs as a single job; create it with --replicas to scale "
                "it", field="name")
        check_counts(replicas, min_ready or min(record.min_ready, replicas))
        if record.terminal or record.delete_requested:
            raise FailedPrecondition(f"service {record.id} is {record.state.name}",
                                     field="name")
        async with self._lock:
            current = self.registry.get(record.id) or record
            current = self._commit(current.evolve(
                time.time(), replicas=replicas,
                min_ready=min_ready or min(current.min_ready, replicas)))
        return await self.converge(current.id)

    async def converge(self, set_id: str) -> ServiceRecord:
        """Add or retire replicas until the set has its wanted count (idempotent)."""
        retire: list[ServiceRecord] = []
        async with self._lock:
            group = self.registry.get(set_id)
            if group is None:
                raise InvalidArgument(f"no service {set_id}", field="name")
            add, retire = wanted_changes(group, self.registry.replicas_of(set_id))
            now = time.time()
            self._add_replicas(group, add, now)
            for replica in retire:
                self._commit(replica.evolve(now, retired=True))
            if add or retire:
                log.info("service %s: %d replicas added, %d retired", set_id, len(add),
                         len(retire))
                self._refresh_set(set_id)
        owner = Principal(user=group.owner)
        for replica in retire:
            await self.delete(owner, replica.id)
        await self._submit_replacements()
        self._wake()
        return self.registry.get(set_id) or group

    async def converge_sets(self) -> None:
        """At start-up: every live set to its wanted count (a create or scale the server was
        killed in the middle of)."""
        for record in self.registry.active():
            if record.is_set and not record.delete_requested:
                try:
                    await self.converge(record.id)
                except AifbError as exc:  # the batch system is down: the poller goes on
                    log.warning("service %s: cannot restore its replicas yet: %s", record.id,
                                exc)

    async def _delete_set(self, principal: Principal, group: ServiceRecord) -> ServiceRecord:
        async with self._lock:
            group = self.registry.get(group.id) or group
            if group.terminal:
                return group
            group = self._commit(group.evolve(time.time(), state=ServiceState.STOPPING,
                                              delete_requested=True,
                                              state_message="deletion requested"))
        for replica in self.registry.replicas_of(group.id):
            if not replica.terminal:
                await self.delete(principal, replica.id)
        async with self._lock:
            self._refresh_set(group.id)
        return self.registry.get(group.id) or group

    def _refresh_set(self, set_id: str) -> None:
        """Recompute the set's summary from its replicas (call under the lock). The set gets a
        new revision on every replica change, so its watchers see each one."""
        group = self.registry.get(set_id)
        if group is None:
            return
        self._commit(group.evolve(time.time(), **summary(group, self.registry.replicas_of(set_id))))

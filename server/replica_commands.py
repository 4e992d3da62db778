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

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aifb.mesh.auth import Principal
from aifb.mesh.errors import AifbError, FailedPrecondition, InvalidArgument
from aifb.server.model import ServiceRecord
from aifb.server.replica_sets import (
    MAX_REPLICAS,
    renewal_due,
    replica_id,
    summary,
    wanted_changes,
)
from aifb.server.states import ServiceState

if TYPE_CHECKING:
    from aifb.server.jobs import Scheduler
    from aifb.server.registry import Registry

__all__ = ["ReplicaSetCommands"]

log = logging.getLogger(__name__)

# After a renewal hands over, the old replica leaves READY at once (benchmarks stop sending to
# it) and its job is cancelled this much later, so the requests it still serves can finish.
DRAIN_SECONDS = 5.0


def check_counts(replicas: int, min_ready: int) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas: got {replicas}, expected 1..{MAX_REPLICAS}",
                              field="replicas")
    if not 0 <= min_ready <= replicas:
        raise InvalidArgument(f"min_ready: got {min_ready}, expected 0..{replicas} (0: all)",
                              field="min_ready")


def check_renew_before(seconds: float, limit_minutes: int | None) -> None:
    """`renew_before` must leave the job time to serve: within its time limit, which it needs."""
    if not seconds:
        return
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"renew_before: got {seconds!r}, expected seconds",
                              field="renew_before")
    if not limit_minutes:
        raise InvalidArgument("renew_before needs a time limit (resources.time, --time)",
                              field="renew_before")
    if seconds >= limit_minutes * 60:
        raise InvalidArgument(f"renew_before: {seconds:g}s is not below the time limit of "
                              f"{limit_minutes} minutes", field="renew_before")


class ReplicaSetCommands:
    _handing_over = False

    if TYPE_CHECKING:
        registry: Registry
        scheduler: Scheduler
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

    def _add_replicas(self, group: ServiceRecord, indexes: list[int], now: float,
                      successor_of: str = "") -> None:
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
                replica=index, successor_of=successor_of))

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

    def renew_due(self, now: float) -> bool:
        """Start a successor for every replica near its time limit (call under the lock; the
        poller submits the jobs). True when one was started."""
        started = False
        for group in self.registry.active():
            if not group.is_set or group.renew_before <= 0 or group.delete_requested:
                continue
            replicas = self.registry.replicas_of(group.id)
            for replica in replicas:
                if not renewal_due(group, replica, now):
                    continue
                index = max(r.replica for r in replicas) + 1
                self._add_replicas(group, [index], now, successor_of=replica.id)
                self._commit(replica.evolve(now, renewing=replica_id(group.id, index)))
                replicas = self.registry.replicas_of(group.id)
                log.info("service %s: renewing replica %d before its time limit", group.id,
                         replica.replica)
                started = True
        return started

    def _hand_over(self, set_id: str) -> None:
        """Retire each renewed replica whose successor is READY: out of READY now, its job
        cancelled after DRAIN_SECONDS (call under the lock)."""
        replicas = {r.id: r for r in self.registry.replicas_of(set_id)}
        for old in replicas.values():
            successor = replicas.get(old.renewing)
            if old.retired or successor is None or successor.state != ServiceState.READY:
                continue
            self._commit(old.evolve(
                time.time(), retired=True, delete_requested=True, state=ServiceState.STOPPING,
                state_message=f"renewed by replica {successor.replica}; draining for "
                f"{DRAIN_SECONDS:g}s"))
            if old.job_id:
                asyncio.get_running_loop().call_later(DRAIN_SECONDS, self._cancel_drained,
                                                      old.id)

    def _cancel_drained(self, rid: str) -> None:
        record = self.registry.get(rid)
        if record is not None and record.job_id and not record.terminal:
            task = asyncio.ensure_future(self.scheduler.cancel(record.job_id))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._wake()

    async def converge_sets(self) -> None:
        """At start-up: every live set to its wanted count (a create or scale the server was
        killed in the middle of), and the job of a replica it was draining cancelled."""
        for record in self.registry.active():
            if record.is_set:
                for replica in self.registry.replicas_of(record.id):
                    if replica.delete_requested and replica.job_id and not replica.terminal:
                        try:
                            await self.scheduler.cancel(replica.job_id)
                        except AifbError as exc:
                            log.warning("replica %s: cannot cancel its job yet: %s",
                                        replica.id, exc)
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
        if group.renew_before > 0 and not self._handing_over:
            self._handing_over = True
            try:
                self._hand_over(set_id)
            finally:
                self._handing_over = False
        group = self.registry.get(set_id) or group
        self._commit(group.evolve(time.time(), **summary(group, self.registry.replicas_of(set_id))))

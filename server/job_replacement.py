"""What the ServiceManager does when a service's job ends or comes back in the queue.

A mixin of `aifb.server.manager.ServiceManager`: the poller's results for one job
(`_apply_one`), a job the scheduler lost (`_lost`), and the jobs that are due: a replacement for
an ended job, or a new replica's first job (`_submit_replacements`). The rules are
`aifb.server.replacement`'s; here they meet the registry and the scheduler. A due job is marked
in the registry before it is submitted, so a server killed in between submits it after its
restart, and one killed while sbatch ran adopts it by its name.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aifb.mesh.auth import hash_token
from aifb.mesh.errors import AifbError, SchedulerUnavailable
from aifb.server.deploy import ResourceRequest
from aifb.server.jobs import JobStatus, ResourceSpec, RestartSpec
from aifb.server.model import ServiceRecord
from aifb.server.recipes.params import RestartOverride
from aifb.server.replacement import replacement_reason, requeue_reason, restart_for_new_job
from aifb.server.states import ServiceState, service_state_for_job

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable

    from aifb.server.deploy import Deployer
    from aifb.server.jobs import Scheduler
    from aifb.server.registry import Registry

__all__ = ["JobReplacement"]

log = logging.getLogger("aifb.server.manager")

LOST_RAW_STATE = "LOST"


class JobReplacement:
    if TYPE_CHECKING:
        registry: Registry
        scheduler: Scheduler
        deployer: Deployer
        _lock: asyncio.Lock
        _submitting: set[str]
        _commit: Callable[[ServiceRecord], ServiceRecord]
        _job_environment: Callable[[str, str], dict[str, str]]
        _submitted: Callable[[str, ServiceRecord, str], Awaitable[ServiceRecord]]

    def _lost(self, record: ServiceRecord, now: float) -> None:
        why = "the scheduler no longer knows the job"
        if record.terminal:
            lost, why = record.state, record.state_message
        elif record.delete_requested:
            lost = ServiceState.STOPPED
        else:
            lost = ServiceState.FAILED
            if replacement_reason(record, lost, why):
                self._replace_later(record, now, f"{why} (job {record.job_id})",
                                    JobStatus(record.job_id, LOST_RAW_STATE))
                return
        self._commit(record.evolve(now, state=lost, raw_state=LOST_RAW_STATE,
                                   state_message=why))

    def _apply_one(self, record: ServiceRecord, status: JobStatus, now: float) -> bool:
        if requeued := requeue_reason(record, status):
            # Back in the queue under the same id: the entry point starts afresh (its restart
            # counts begin again); the endpoint is gone until it reports READY.
            self._commit(record.evolve(
                now, state=ServiceState.PENDING, restarts=record.restarts + 1, job_restarts=0,
                last_restart_reason=requeued, state_message=requeued,
                raw_state=status.raw_state, reason=status.reason, nodes=status.nodes,
                endpoint_host="", endpoint_port=0, endpoint_url="", exit_code=None,
                exit_report="", job_started=0.0))
            return True
        state, why = service_state_for_job(status, current=record.state,
                                           delete_requested=record.delete_requested)
        if state == ServiceState.FAILED and record.exit_report:
            why = f"{why}: {record.exit_report}"  # the job's own report says more
        if state.terminal and (again := replacement_reason(record, state, why)):
            self._replace_later(record, now, f"{again.splitlines()[0]} (job {record.job_id})",
                                status)
            return True
        # A job still COMPLETING has no exit code yet while the record already holds the one
        # the job reported: keep it, and compare what would be written, so an unchanged job
        # publishes nothing (not one message per poll tick).
        exit_code = status.exit_code if status.exit_code is not None else record.exit_code
        changed_job = (status.raw_state, status.reason, exit_code, status.signal,
                       status.nodes) != (record.raw_state, record.reason, record.exit_code,
                                         record.signal, record.nodes)
        busy = False
        if state != record.state or changed_job:
            started = record.job_started or (now if status.raw_state.startswith("RUNNING")
                                             else 0.0)
            self._commit(record.evolve(
                now, state=state, state_message=why or record.state_message,
                raw_state=status.raw_state, reason=status.reason, exit_code=exit_code,
                signal=status.signal, nodes=status.nodes, job_started=started))
            busy = True
        return busy or state in (ServiceState.PENDING, ServiceState.STARTING,
                                 ServiceState.STOPPING)

    def _replace_later(self, record: ServiceRecord, now: float, reason: str,
                       status: JobStatus) -> None:
        """The job ended and the policy allows another: count it as a restart and mark the
        service for a new job (submitted right after this poll, or after a server restart)."""
        log.info("service %s: replacing its job: %s", record.id, reason)
        self._commit(record.evolve(
            now, state=ServiceState.PENDING, job_id="", job_due=True,
            job_attempt=record.job_attempt + 1, restarts=record.restarts + 1, job_restarts=0,
            last_restart_reason=reason, state_message=f"replacing the ended job: {reason}",
            raw_state=status.raw_state, reason=status.reason, exit_code=status.exit_code,
            signal=status.signal, nodes=status.nodes, endpoint_host="", endpoint_port=0,
            endpoint_url="", exit_report="", job_started=0.0))

    async def _submit_replacements(self) -> bool:
        """Submit a job for every service marked for one (not already being submitted).
        True while one is left for the next tick (the batch system did not answer)."""
        due = [r.id for r in self.registry.polled()
               if r.job_due and not r.job_id and r.id not in self._submitting]
        left = False
        for sid in due:
            left = not await self._submit_replacement(sid) or left
        return left or bool(due)

    async def _submit_replacement(self, sid: str) -> bool:
        """False when the batch system did not answer (tried again on the next tick)."""
        async with self._lock:
            record = self.registry.get(sid)
            if (record is None or not record.job_due or record.job_id or record.terminal
                    or sid in self._submitting):
                return True
            now = time.time()
            if record.delete_requested:
                self._commit(record.evolve(now, state=ServiceState.STOPPED, job_due=False,
                                           state_message="stopped before the replacement job "
                                           "was submitted"))
                return True
            token = secrets.token_urlsafe(24)
            try:
                prepared = self.deployer.prepare(
                    record.recipe, record.parameters, _request_of(record.resources),
                    service_id=sid, workdir=Path(record.workdir),
                    environment=self._job_environment(sid, token),
                    restart=_override_of(restart_for_new_job(record)),
                    attempt=record.job_attempt)
            except AifbError as exc:
                self._commit(record.evolve(now, state=ServiceState.FAILED, job_due=False,
                                           state_message="the replacement job cannot be "
                                           f"prepared: {exc}"))
                return True
            # The new job gets a new report token: the ended job's stops working.
            record = self._commit(record.evolve(
                now, report_token_hash=hash_token(token), stdout_path=prepared.spec.stdout_path,
                stderr_path=prepared.spec.stderr_path))
            self._submitting.add(sid)
        try:
            job_id = await self.scheduler.submit(prepared.spec, prepared.script)
        except SchedulerUnavailable as exc:
            self._submitting.discard(sid)
            log.warning("service %s: the replacement job was not submitted yet: %s", sid, exc)
            return False
        except AifbError as exc:
            async with self._lock:
                self._submitting.discard(sid)
                current = self.registry.get(sid) or record
                self._commit(current.evolve(
                    time.time(), job_due=False,
                    state=ServiceState.STOPPED if current.delete_requested
                    else ServiceState.FAILED,
                    state_message=f"the replacement job was refused: {exc}"))
            return True
        await self._submitted(sid, record, job_id)
        return True


def _request_of(spec: ResourceSpec) -> ResourceRequest:
    """The resources a service got, asked for again (for the job that replaces its job)."""
    return ResourceRequest(nodes=spec.nodes, cpus=spec.cpus, memory_mib=spec.memory_mib,
                           gpus=spec.gpus, time_limit_minutes=spec.time_limit_minutes or 0,
                           partition=spec.partition, account=spec.account)


def _override_of(spec: RestartSpec) -> RestartOverride:
    return RestartOverride(policy=spec.policy, max_restarts=spec.max_restarts,
                           backoff_seconds=spec.backoff_seconds,
                           max_backoff_seconds=spec.max_backoff_seconds)

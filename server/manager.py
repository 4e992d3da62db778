"""The service lifecycle: create, delete, events from jobs, scheduler states; no gRPC here."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

from aifb.mesh.auth import Principal, hash_token
from aifb.mesh.bounds import check_text
from aifb.mesh.errors import (
    AifbError,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from aifb.mesh.labels import check_labels
from aifb.mesh.names import parse_service_id
from aifb.mesh.tracing import current_trace_id, traceparent_env
from aifb.server.deploy import Deployer, Prepared, ResourceRequest, job_name_for
from aifb.server.hub import Hub
from aifb.server.job_replacement import JobReplacement
from aifb.server.jobs import JobStatus, Scheduler
from aifb.server.listing import Page, page, parse_filter
from aifb.server.logs import ServiceLogs, read_logs
from aifb.server.model import ServiceRecord
from aifb.server.recipes.params import RestartOverride
from aifb.server.registry import Registry
from aifb.server.replica_commands import ReplicaSetCommands, check_counts, check_renew_before
from aifb.server.states import ServiceState, check_transition

__all__ = ["EventKind", "ServiceManager"]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A job the scheduler no longer knows is declared lost after this many seconds unseen.
LOST_AFTER_SECONDS = 30.0


@dataclass(frozen=True)
class EventKind:
    STARTING = "starting"
    READY = "ready"
    EXITED = "exited"
    RESTARTING = "restarting"


class ServiceManager(JobReplacement, ReplicaSetCommands):
    """Owns the registry, talks to the scheduler, publishes every change to the hub.
    Replicated services' commands are `ReplicaSetCommands`' (aifb.server.replica_commands),
    what happens when a job ends or is due is `JobReplacement`'s (aifb.server.job_replacement)."""

    def __init__(self, registry: Registry, scheduler: Scheduler, deployer: Deployer,
                 *, home: Path, advertise_address: str, otlp_endpoint: str = "",
                 tracer: trace.Tracer | None = None) -> None:
        self.otlp_endpoint = otlp_endpoint
        self.registry = registry
        self.scheduler = scheduler
        self.deployer = deployer
        self.home = home
        self.advertise_address = advertise_address
        self.hub = Hub()
        self.tracer = tracer or trace.NoOpTracer()
        self._unseen_since: dict[str, float] = {}
        self._lock = asyncio.Lock()
        # Services whose sbatch runs in this process now (a record without a job id that is
        # not here was left by a server that stopped while submitting: see reconcile).
        self._submitting: set[str] = set()
        # Set by the app to Poller.wake: a create or delete polls at once.
        self.wake_poller: Callable[[], None] | None = None

    # ---- queries -------------------------------------------------------------------------
    def get(self, principal: Principal, name: str) -> ServiceRecord:
        sid = parse_service_id(name)
        record = self.registry.get(sid)
        if record is None or record.owner != principal.user:
            # Another user's service is reported as absent: its existence is not revealed.
            raise NotFound(f"service {sid} not found")
        return record

    def owned(self, principal: Principal) -> list[ServiceRecord]:
        return list(self.registry.owned_by(principal.user))

    def page(self, principal: Principal, *, page_size: int, token: str,
             filter_text: str) -> Page:
        """One page of the caller's services (ListServices)."""
        return page([r for r in self.owned(principal) if not r.parent], page_size=page_size,
                    token=token, filter_text=filter_text)  # replicas show in their service

    def logs(self, principal: Principal, name: str, tail_bytes: int) -> ServiceLogs:
        """The end of the caller's service's stdout and stderr (GetServiceLogs)."""
        record = self.get(principal, name)
        if record.is_set:
            raise InvalidArgument(f"service {record.id} has {record.replicas} replicas, each "
                                  f"with its own logs: ask for services/{record.id}-<index>",
                                  field="name")
        return read_logs(record, tail_bytes)

    def render(self, recipe: str, params: Mapping[str, str], resources: ResourceRequest,
               restart: RestartOverride | None = None) -> Prepared:
        """The batch script a create would submit (RenderService); nothing is submitted."""
        return self.deployer.render(recipe, params, resources, jobs_dir=self.home / "jobs",
                                    restart=restart)

    async def watch(self, principal: Principal, name: str) -> AsyncIterator[ServiceRecord]:
        """The caller's service now, then each new revision until it is terminal."""
        sid = parse_service_id(name)
        sub = self.hub.subscribe(lambda r: r.id == sid)
        try:
            current = self.get(principal, sid)
            yield current
            last = current.revision
            if current.terminal:
                return
            async for record in self.hub.iterate(sub):
                if record.revision <= last:
                    continue  # already sent (published between subscribe and snapshot)
                last = record.revision
                yield record
                if record.terminal:
                    return
        finally:
            self.hub.unsubscribe(sub)

    async def watch_all(self, principal: Principal, filter_text: str, *,
                        snapshot: bool) -> AsyncIterator[ServiceRecord]:
        """Every new revision of the caller's services that pass `filter_text`; with
        `snapshot`, first each such service as it is now."""
        accept = parse_filter(filter_text)

        def mine(record: ServiceRecord) -> bool:
            return record.owner == principal.user and accept(record)

        sub = self.hub.subscribe(mine)
        try:
            seen: dict[str, int] = {}
            if snapshot:
                for record in self.owned(principal):
                    if accept(record):
                        seen[record.id] = record.revision
                        yield record
            async for record in self.hub.iterate(sub):
                if record.revision <= seen.get(record.id, 0):
                    continue
                seen[record.id] = record.revision
                yield record
        finally:
            self.hub.unsubscribe(sub)

    def active_job_ids(self) -> list[str]:
        return [r.job_id for r in self.registry.polled() if r.job_id]

    def resolve_report_token(self, token: str) -> Principal | None:
        digest = hash_token(token)
        for record in self.registry.active():
            if record.report_token_hash and secrets.compare_digest(record.report_token_hash,
                                                                  digest):
                return Principal(user=record.owner, service=record.id)
        return None

    # ---- commands ------------------------------------------------------------------------
    async def create(self, principal: Principal, recipe: str, params: Mapping[str, str],
                     resources: ResourceRequest, labels: Mapping[str, str],
                     request_id: str, restart: RestartOverride | None = None,
                     replicas: int = 0, min_ready: int = 0,
                     renew_before: float = 0.0) -> ServiceRecord:
        if principal.is_job:
            raise PermissionDenied("a job's report token cannot create services")
        if request_id:
            if not _REQUEST_ID.match(request_id):
                raise InvalidArgument("request_id must be 1-64 of [A-Za-z0-9_-]",
                                      field="request_id")
            existing = self.registry.by_request_id(principal.user, request_id)
            if existing is not None:
                return existing
        check_labels(labels)
        wanted = replicas or self.deployer.default_replicas(recipe)
        renew = renew_before or self.deployer.default_renew_before(recipe)
        if wanted > 1 or replicas or renew:  # renewal works on replicas: a set of one
            check_counts(wanted, min_ready)
            return await self._create_set(principal, recipe, params, resources, labels,
                                          request_id, restart, wanted, min_ready, renew)
        if min_ready:
            raise InvalidArgument("min_ready needs replicas", field="min_ready")
        with self.tracer.start_as_current_span("aifb.server.create_service") as span:
            sid = secrets.token_hex(6)
            token = secrets.token_urlsafe(24)
            workdir = self.home / "jobs" / sid
            env = self._job_environment(sid, token)  # TRACEPARENT: the create span's child
            with self.tracer.start_as_current_span("aifb.server.render"):
                prepared = self.deployer.prepare(recipe, params, resources, service_id=sid,
                                                 workdir=workdir, environment=env,
                                                 restart=restart)
            span.set_attribute("aifb.service", sid)
            span.set_attribute("aifb.recipe", recipe)
            now = time.time()
            record = ServiceRecord(
                id=sid, owner=principal.user, recipe=recipe, state=ServiceState.PENDING,
                parameters=dict(prepared.parameters), labels=dict(labels),
                resources=prepared.spec.resources, state_message="submitting",
                scheduler=self.scheduler.name, stdout_path=prepared.spec.stdout_path,
                stderr_path=prepared.spec.stderr_path, workdir=str(workdir),
                create_time=now, update_time=now, trace_id=current_trace_id(),
                request_id=request_id, report_token_hash=hash_token(token),
                restart=prepared.spec.restart, **_metrics_fields(prepared),
            )
            self._submitting.add(sid)
            self.registry.insert(record)
            self.hub.publish(record)
            try:
                with self.tracer.start_as_current_span("aifb.server.submit") as submit_span:
                    job_id = await self.scheduler.submit(prepared.spec, prepared.script)
                    submit_span.set_attribute("aifb.job_id", job_id)
            except AifbError as exc:
                async with self._lock:
                    self._submitting.discard(sid)
                    current = self.registry.get(sid) or record
                    self._commit(current.evolve(
                        time.time(), state=ServiceState.STOPPED if current.delete_requested
                        else ServiceState.FAILED, state_message=f"submission refused: {exc}"))
                raise
            span.set_attribute("aifb.job_id", job_id)
            record = await self._submitted(sid, record, job_id)
        self._wake()
        return record

    async def _submitted(self, sid: str, record: ServiceRecord, job_id: str) -> ServiceRecord:
        """Record the job id; a delete that came while sbatch ran cancels the job now (the
        poller then sees it end)."""
        async with self._lock:
            self._submitting.discard(sid)
            current = self.registry.get(sid) or record
            if not current.delete_requested:
                return self._commit(current.evolve(time.time(), job_id=job_id, job_due=False,
                                                   state_message="submitted; waiting for the job"))
            current = self._commit(current.evolve(time.time(), job_id=job_id, job_due=False))
        await self.scheduler.cancel(job_id)
        return current

    async def _create_set(self, principal: Principal, recipe: str, params: Mapping[str, str],
                          resources: ResourceRequest, labels: Mapping[str, str],
                          request_id: str, restart: RestartOverride | None, replicas: int,
                          min_ready: int, renew_before: float = 0.0) -> ServiceRecord:
        """A replicated service: checked like a single one, then the set and its replicas."""
        with self.tracer.start_as_current_span("aifb.server.create_service") as span:
            sid = secrets.token_hex(6)
            workdir = self.home / "jobs" / sid
            prepared = self.deployer.prepare(recipe, params, resources, service_id=sid,
                                             workdir=workdir,
                                             environment=self._job_environment(sid, ""),
                                             restart=restart)
            span.set_attribute("aifb.service", sid)
            span.set_attribute("aifb.replicas", replicas)
            check_renew_before(renew_before, prepared.spec.resources.time_limit_minutes)
            now = time.time()
            group = ServiceRecord(
                id=sid, owner=principal.user, recipe=recipe, state=ServiceState.PENDING,
                parameters=dict(prepared.parameters), labels=dict(labels),
                resources=prepared.spec.resources, state_message="starting its replicas",
                scheduler=self.scheduler.name, workdir=str(workdir), create_time=now,
                update_time=now, trace_id=current_trace_id(), request_id=request_id,
                restart=prepared.spec.restart, replicas=replicas, min_ready=min_ready,
                renew_before=renew_before,
                **_metrics_fields(prepared))
            self.registry.insert(group)
            self.hub.publish(group)
            return await self._start_set(group)

    def _job_environment(self, sid: str, token: str) -> dict[str, str]:
        """What every job of service `sid` is told: who it is, where to report, its token."""
        return {
            "AIFB_SERVICE": f"services/{sid}",
            "AIFB_SERVER": self.advertise_address,
            "AIFB_REPORT_TOKEN": token,
            **traceparent_env(),
            **({"AIFB_OTLP_ENDPOINT": self.otlp_endpoint} if self.otlp_endpoint else {}),
        }

    # ---- reconciling what a stopped server left ------------------------------------------
    def unsubmitted(self) -> list[str]:
        """Services left without a job id by a server that stopped while submitting them
        (call before serving: in-flight creates of this process have no job id either)."""
        return [r.id for r in self.registry.polled()
                if not r.job_id and not r.is_set and r.id not in self._submitting]

    async def reconcile(self, sids: Sequence[str]) -> None:
        """Find each service's job by its name (one scheduler call): adopt it, or cancel it if
        a delete came meanwhile; with none, the submission never reached the batch system and
        the service fails saying so. Extra jobs of one service (never expected) are cancelled.
        SchedulerUnavailable propagates: the caller retries, nothing is marked."""
        records = [r for r in (self.registry.get(s) for s in sids)
                   if r is not None and not r.job_id and not r.terminal]
        if not records:
            return
        found = await self.scheduler.find([job_name_for(r.recipe, r.id, r.job_attempt)
                                           for r in records])
        for record in records:
            ids = found.get(job_name_for(record.recipe, record.id, record.job_attempt), [])
            for extra in ids[1:]:
                await self.scheduler.cancel(extra)
            async with self._lock:
                current = self.registry.get(record.id) or record
                if current.job_id or current.terminal:
                    continue
                if not ids and current.job_due and not current.delete_requested:
                    continue  # the replacement job was never submitted: the poller submits it
                if not ids and current.delete_requested:
                    self._commit(current.evolve(time.time(), state=ServiceState.STOPPED,
                                                state_message="stopped before submission"))
                    continue
                if not ids:
                    self._commit(current.evolve(
                        time.time(), state=ServiceState.FAILED,
                        state_message="the server stopped while submitting this service and "
                        "no job of it was found: nothing runs; create it again"))
                    continue
                message = ("deletion requested" if current.delete_requested else
                           "re-attached to the job submitted before the server stopped")
                self._commit(current.evolve(time.time(), job_id=ids[0], job_due=False,
                                            state_message=message))
            if current.delete_requested:
                await self.scheduler.cancel(ids[0])
            log.info("service %s: %s job %s after a restart", record.id,
                     "cancelled" if current.delete_requested else "adopted", ids[0])
        self._wake()

    async def delete(self, principal: Principal, name: str) -> ServiceRecord:
        record = self.get(principal, name)
        if record.terminal:
            return record
        if record.is_set:
            return await self._delete_set(principal, record)
        async with self._lock:
            record = self.registry.get(record.id) or record
            if record.terminal:
                return record
            # A replica deleted on its own is retired, and its service gets a fresh one.
            renew = bool(record.parent) and not record.retired
            record = self._commit(record.evolve(time.time(), state=ServiceState.STOPPING,
                                                delete_requested=True, retired=record.retired
                                                or renew, state_message="deletion requested"))
        if record.job_id:
            await self.scheduler.cancel(record.job_id)
        elif record.id not in self._submitting:
            # Left by a server that stopped while submitting: its job may exist all the same.
            await self.reconcile([record.id])
            record = self.registry.get(record.id) or record
        # (Still submitting here: create() cancels the job as soon as sbatch returns its id.)
        if renew:
            await self.converge(record.parent)
        self._wake()
        return record

    async def report_event(self, principal: Principal, name: str, kind: str, *, host: str = "",
                           port: int = 0, url: str = "", exit_code: int | None = None,
                           log_tail: str = "", message: str = "",
                           restarts: int = 0, workers: Sequence[str] = ()) -> ServiceRecord:
        sid = parse_service_id(name)
        if principal.service and principal.service != sid:
            raise PermissionDenied("this report token belongs to another service")
        # A report becomes the state message every Get/List/Watch carries: a 10 MB one pushed
        # the owner's GetService and ListServices past the client's 4 MB limit.
        for field, text in (("message", message), ("endpoint.host", host),
                            ("endpoint.url", url), ("log_tail", log_tail)):
            check_text(field, text, REPORT_TEXT_LIMITS[field])
        if len(workers) > MAX_WORKERS_REPORTED:
            raise InvalidArgument(f"workers: {len(workers)} hosts, at most "
                                  f"{MAX_WORKERS_REPORTED}", field="workers")
        for i, worker in enumerate(workers):
            check_text(f"workers[{i}]", worker, REPORT_TEXT_LIMITS["endpoint.host"])
        record = self.get(principal, name)
        if record.is_set:
            raise InvalidArgument(f"service {sid} is replicated: its replicas report",
                                  field="name")
        async with self._lock:
            record = self.registry.get(sid) or record
            now = time.time()
            if kind == EventKind.STARTING:
                if record.state != ServiceState.PENDING:
                    return record  # only the job's first report moves it (a late one cannot
                    # take a READY service back: restarts say RESTARTING)
                target, msg = ServiceState.STARTING, message or "the program started"
                changes: dict[str, object] = {"job_started": record.job_started or now}
            elif kind == EventKind.READY:
                if not host or not 0 < port < 65536:
                    raise InvalidArgument("READY needs endpoint.host and endpoint.port 1..65535",
                                          field="endpoint")
                target, msg = ServiceState.READY, message or f"ready at {host}:{port}"
                changes = {"endpoint_host": host, "endpoint_port": port, "endpoint_url": url,
                           "workers": tuple(workers)}
            elif kind == EventKind.EXITED:
                # The state turns terminal when the scheduler says the job ended, so the
                # final record carries the scheduler's own state, reason and exit code too.
                detail = message or f"the program exited with code {exit_code}"
                if log_tail and exit_code != 0:
                    detail += "\n--- last output ---\n" + log_tail[-4000:]
                return self._commit(record.evolve(now, exit_code=exit_code, exit_report=detail,
                                                  state_message=detail))
            elif kind == EventKind.RESTARTING:
                return self._restarting(record, now, restarts, message)
            else:
                raise InvalidArgument(f"unknown event kind {kind!r}", field="kind")
            if record.terminal or (record.state == target and kind != EventKind.EXITED):
                return record
            if record.delete_requested and target in (ServiceState.STARTING, ServiceState.READY):
                return record
            if not check_transition(record.state, target):
                raise IllegalTransition(
                    f"service {sid} cannot go from {record.state.name} to {target.name}")
            return self._commit(record.evolve(now, state=target, state_message=msg, **changes))

    def _restarting(self, record: ServiceRecord, now: float, count: int,
                    reason: str) -> ServiceRecord:
        """The job starts its program again: count it once (reports may repeat), back to
        STARTING until the job reports READY again."""
        if not 1 <= count <= MAX_RESTARTS_REPORTED:
            raise InvalidArgument(f"restarts: got {count}, expected 1..{MAX_RESTARTS_REPORTED} "
                                  "on RESTARTING", field="restarts")
        if record.terminal or count <= record.job_restarts:
            return record
        reason = reason or "the program ended"
        total = record.restarts + count - record.job_restarts
        changes: dict[str, object] = {"restarts": total, "job_restarts": count,
                                      "last_restart_reason": reason,
                                      "state_message": f"restart {total}: {reason}"}
        if not record.delete_requested and record.state == ServiceState.READY:
            changes["state"] = ServiceState.STARTING
        log.info("service %s: restart %d: %s", record.id, total, reason)
        return self._commit(record.evolve(now, **changes))

    # ---- scheduler updates (from the poller) ---------------------------------------------
    async def apply_job_statuses(self, statuses: Mapping[str, JobStatus],
                                 asked: Sequence[str]) -> bool:
        """Fold one poll's results into the registry, then submit the jobs that replace ended
        ones. True while something is in motion."""
        busy = False
        now = time.time()
        async with self._lock:
            for record in self.registry.polled():
                if not record.job_id or record.job_id not in asked:
                    continue
                status = statuses.get(record.job_id)
                if status is None:
                    first = self._unseen_since.setdefault(record.job_id, now)
                    if now - first > LOST_AFTER_SECONDS:
                        self._lost(record, now)
                    busy = True
                    continue
                self._unseen_since.pop(record.job_id, None)
                busy = self._apply_one(record, status, now) or busy
            busy = self.renew_due(now) or busy
        return await self._submit_replacements() or busy

    # ---- internals -----------------------------------------------------------------------
    def _commit(self, record: ServiceRecord) -> ServiceRecord:
        old = self.registry.get(record.id)
        # The history keeps every state change and every restart (with its reason).
        self.registry.update(record, history=old is None or old.state != record.state
                             or old.restarts != record.restarts)
        self.hub.publish(record)
        if record.parent:
            self._refresh_set(record.parent)  # the set's summary follows its replicas
        return record

    def _wake(self) -> None:
        if self.wake_poller is not None:
            self.wake_poller()


def _metrics_fields(prepared: Prepared) -> dict[str, Any]:
    """The record's metrics_* fields from the recipe's `metrics:` endpoint (none: defaults)."""
    metrics = prepared.metrics
    if metrics is None:
        return {}
    return {"metrics_path": metrics.path, "metrics_port": metrics.port,
            "metrics_on_endpoint_port": metrics.on_endpoint_port}


# Bounds of what a job reports (characters): a host name (DNS: 253), a URL, one status line,
# the output tail (the server keeps its last 4000 characters).
MAX_RESTARTS_REPORTED = 10000  # the most a restart policy allows
MAX_WORKERS_REPORTED = 4096
REPORT_TEXT_LIMITS = {"message": 4096, "endpoint.host": 253, "endpoint.url": 2048,
                      "log_tail": 65536}

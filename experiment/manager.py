"""The ExperimentService's domain: create (validate, then run), get, list, watch, cancel, report.

Nothing is deployed before the whole study is known to be valid: the study model checks the
file's own rules, then every configuration is rendered by the ServerService (RenderService:
unknown recipes, parameters, wrong types and resources beyond the recipe's limits are refused
there, by the same code a create runs) and every workload level is checked by the
BenchmarkService (CreateBenchmark with validate_only). Each experiment then runs in a task of
its own (`ExperimentRun`); every change is stored before the next step and wakes the watchers.
A restarted service resumes each unfinished experiment (`recover`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifb.experiment.listing import page
from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    ExperimentState,
    Trial,
    TrialState,
)
from aifb.experiment.plan import Plan
from aifb.experiment.remote import Remote
from aifb.experiment.report import render_report
from aifb.experiment.runner import Aborted, ExperimentRun
from aifb.experiment.store import ExperimentStore
from aifb.experiment.study import Study
from aifb.mesh.auth import Principal
from aifb.mesh.errors import (
    AifbError,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from aifb.mesh.labels import check_labels
from aifb.mesh.paging import check_page_size
from aifb.mesh.tracing import current_trace_id
from aifb.v1 import client_pb2 as C
from aifb.v1 import server_pb2 as S

__all__ = ["ExperimentManager", "parse_experiment_id"]

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{12}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RESTARTED = "resumed after the experiment service restarted"
_KEPT = 256  # progress messages kept for watchers


def _with_trial(trial: Trial) -> Callable[[ExperimentRecord], ExperimentRecord]:
    return lambda record: record.with_trial(trial)


def parse_experiment_id(name: str) -> str:
    eid = name.removeprefix("experiments/")
    if not _ID.fullmatch(eid):
        raise InvalidArgument(f"bad experiment name {name[:80]!r}: expected experiments/<id> "
                              "(12 hex digits)", field="name")
    return eid


@dataclass
class _Live:
    """An experiment this process runs: its record, latest progress and task."""

    record: ExperimentRecord
    run: ExperimentRun | None = None
    task: asyncio.Task[None] | None = None
    # The newest progress messages; `sent` counts every one ever added, so each watcher keeps
    # its own position (a watcher that falls more than _KEPT behind skips the oldest).
    progress: list[tuple[str, C.ProgressSample]] = field(default_factory=list)
    sent: int = 0
    cancel_reason: str = ""
    # The run is over (it returned, failed or was cancelled) and the task only records how it
    # ended: a cancel must not interrupt that.
    finishing: bool = False


class ExperimentManager:
    def __init__(self, store: ExperimentStore, remote: Remote) -> None:
        self.store = store
        self.remote = remote
        self._live: dict[str, _Live] = {}
        self._changed = asyncio.Condition()
        self._reporting = asyncio.Lock()
        self._closed = False

    # ---- startup and shutdown --------------------------------------------------------------
    def recover(self) -> int:
        """Resume every experiment a previous process left unfinished; returns how many."""
        unfinished = self.store.unfinished()
        for record in unfinished:
            log.warning("experiment %s was %s when the service stopped: resuming", record.id,
                        record.state.value)
            self._start(record, self.store.token(record.id), resumed=True)
        return len(unfinished)

    async def close(self) -> None:
        """Stop the runs without recording anything: they resume at the next start."""
        self._closed = True
        tasks = [live.task for live in self._live.values() if live.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        await self._notify()

    # ---- queries ---------------------------------------------------------------------------
    def get(self, principal: Principal, name: str) -> ExperimentRecord:
        eid = parse_experiment_id(name)
        live = self._live.get(eid)
        record = live.record if live is not None else self.store.get(eid)
        if record is None or record.owner != principal.user:
            raise NotFound(f"experiment {eid} not found")
        return record

    def owned(self, principal: Principal) -> list[ExperimentRecord]:
        out = []
        for record in self.store.owned_by(principal.user):
            live = self._live.get(record.id)
            out.append(live.record if live is not None else record)
        return out

    def page(self, principal: Principal, *, page_size: int, token: str, filter_text: str
             ) -> tuple[list[ExperimentRecord], str]:
        check_page_size(page_size)
        return page(self.owned(principal), page_size=page_size, token=token,
                    filter_text=filter_text)

    async def report(self, principal: Principal, name: str, fmt: str) -> bytes:
        record = self.get(principal, name)
        directory = self.store.run_dir(record.id)
        # Off the loop: 10,000 trials take a second or two, which every other RPC would wait.
        # One at a time: they write their files through the same temporary names.
        async with self._reporting:
            return await asyncio.to_thread(render_report, record, fmt, directory)

    async def watch(self, principal: Principal, name: str
                    ) -> AsyncIterator[tuple[ExperimentRecord, str, C.ProgressSample | None]]:
        """The snapshot, then (record, trial, progress) per change and per second of the
        running benchmarks, until the experiment is terminal. A stream that this process
        cannot carry on (it stops; the experiment resumes at the next start) ends UNAVAILABLE,
        not OK, so that clients watch again (`aifb experiment watch` does)."""
        live = self._live.get(parse_experiment_id(name))
        record = self.get(principal, name)
        yield record, "", None
        seen = live.sent if live is not None else 0
        revision = record.revision
        while not record.terminal:
            if live is None or self._closed:
                raise Unavailable(f"{record.name} is not running in this process (the "
                                  "experiment service is stopping or starting): watch again")

            def news(x: _Live = live, n: int = seen, rev: int = revision) -> bool:
                return self._closed or x.sent > n or x.record.revision != rev

            async with self._changed:
                await self._changed.wait_for(news)
            record = live.record
            if record.revision != revision:
                revision = record.revision
                yield record, "", None
            fresh = live.progress[max(0, len(live.progress) - (live.sent - seen)):]
            seen = live.sent
            for trial, progress in fresh:
                yield record, trial, progress

    # ---- commands --------------------------------------------------------------------------
    async def create(self, principal: Principal, study: Study, labels: dict[str, str],
                     request_id: str) -> ExperimentRecord:
        if principal.is_job:
            raise PermissionDenied("a job's report token cannot start experiments")
        if self._closed:
            raise FailedPrecondition("the experiment service is shutting down")
        if request_id:
            if not _REQUEST_ID.fullmatch(request_id):
                raise InvalidArgument("request_id must be 1-64 letters, digits, _ or -",
                                      field="request_id")
            existing = self.store.by_request_id(principal.user, request_id)
            if existing is not None:
                return self.get(principal, existing.id)
        check_labels(labels)
        plan = Plan(study)
        await self._validate(principal, plan)
        if self._closed:  # it stopped while the study was checked: start nothing now
            raise FailedPrecondition("the experiment service is shutting down")
        eid = secrets.token_hex(6)
        record = ExperimentRecord(
            id=eid, owner=principal.user, study=study.to_dict(), labels=dict(labels),
            configurations=tuple(ConfigurationRun(c.index) for c in plan.configurations),
            trials=tuple(plan.initial_trials()), create_time=time.time(),
            request_id=request_id, trace_id=current_trace_id(),
            state_message=f"{len(plan.configurations)} configurations, "
                          f"{plan.trial_count} trials at most")
        try:
            self.store.insert(record, principal.token)
        except AlreadyExists:  # the same request_id, created meanwhile by a concurrent call
            existing = self.store.by_request_id(principal.user, request_id) if request_id else None
            if existing is None:
                raise
            return self.get(principal, existing.id)
        self._start(record, principal.token, plan)
        return record

    async def cancel(self, principal: Principal, name: str) -> ExperimentRecord:
        record = self.get(principal, name)
        if record.terminal:
            return record
        live = self._live.get(record.id)
        if live is not None and live.task is not None:
            # Once: a second cancel (or one while the run records its end) would cut the
            # wind-down short. Stored first, so that a shutdown cannot turn it into a resume.
            if not live.cancel_reason and not live.finishing:
                reason = live.cancel_reason = f"cancelled by {principal.user}"
                self._apply(record.id, lambda r: r.evolve(cancel_reason=reason), [])
                live.task.cancel()
                await self._notify()
            await asyncio.wait({live.task}, timeout=20)  # the CLI waits 30 s
        return self.get(principal, name)

    # ---- validation ------------------------------------------------------------------------
    async def _validate(self, principal: Principal, plan: Plan) -> None:
        token = principal.token
        for config in plan.configurations:
            try:
                await self.remote.call(self.remote.server.RenderService, S.RenderServiceRequest(
                    recipe=config.recipe, parameters=config.parameters,
                    resources=plan.resources(config)), token)
            except InvalidArgument as exc:
                where = f"services[{plan.grid_index(config)}]"
                raise InvalidArgument(f"{where} ({config.key()}): {exc.message}",
                                      field=f"{where}.{exc.field}".rstrip(".")) from None
            except NotFound as exc:
                where = f"services[{plan.grid_index(config)}].recipe"
                raise InvalidArgument(f"{where}: {exc.message}", field=where) from None
        for index, request in plan.validation_requests():
            request.validate_only = True
            try:
                await self.remote.call(self.remote.bench.CreateBenchmark, request, token)
            except InvalidArgument as exc:
                where = f"workloads[{index}]"
                raise InvalidArgument(f"{where}: {exc.message}",
                                      field=f"{where}.{exc.field}".rstrip(".")) from None

    # ---- running ---------------------------------------------------------------------------
    def _start(self, record: ExperimentRecord, token: str, plan: Plan | None = None, *,
               resumed: bool = False) -> None:
        """Run it in a task of its own (`plan`: the one `create` made; a resumed experiment's is
        made again from its stored study)."""
        plan = plan or Plan(Study.from_dict(record.study))
        live = self._live[record.id] = _Live(record, cancel_reason=record.cancel_reason)
        live.run = ExperimentRun(record, plan, self.remote, token,
                                 lambda change, trials: self._commit(record.id, change, trials),
                                 lambda trial, p: self._on_progress(record.id, trial, p))
        live.task = asyncio.get_running_loop().create_task(
            self._execute(record.id, resumed), name=f"experiment {record.id}")

    def _apply(self, eid: str, change: Callable[[ExperimentRecord], ExperimentRecord],
               trials: Sequence[Trial]) -> ExperimentRecord:
        live = self._live[eid]
        live.record = change(live.record)
        # The trials as they are in the record now (a change may touch more than it names).
        self.store.update(live.record, *[live.record.trials[t.n] for t in trials])
        return live.record

    async def _commit(self, eid: str, change: Callable[[ExperimentRecord], ExperimentRecord],
                      trials: Sequence[Trial]) -> ExperimentRecord:
        record = self._apply(eid, change, trials)
        await self._notify()
        return record

    def _on_progress(self, eid: str, trial: str, progress: C.ProgressSample) -> None:
        live = self._live.get(eid)
        if live is None:
            return
        live.progress.append((trial, progress))
        live.sent += 1
        del live.progress[:-_KEPT]
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _set(self, eid: str, **changes: Any) -> None:
        await self._commit(eid, lambda r: r.evolve(**changes), [])

    async def _execute(self, eid: str, resumed: bool) -> None:
        live = self._live[eid]
        assert live.run is not None
        try:
            if not live.cancel_reason:  # (else a cancel that a shutdown cut short: finish it)
                try:
                    if live.record.state is ExperimentState.PENDING:
                        await self._set(eid, state=ExperimentState.RUNNING,
                                        start_time=time.time(), state_message="running")
                    elif resumed:
                        await self._set(eid, state_message=_RESTARTED)
                    await live.run.run()
                except asyncio.CancelledError:
                    if not live.cancel_reason:  # the service is stopping: resume at next start
                        self._live.pop(eid, None)
                        raise
                finally:
                    live.finishing = True  # from here on, only its end is recorded
            live.finishing = True
            if live.cancel_reason:  # (a shutdown that cuts this short leaves it stored)
                await self._wind_down(eid, live.cancel_reason)
                await self._set(eid, state=ExperimentState.CANCELLED,
                                state_message=live.cancel_reason, end_time=time.time())
            else:
                record = live.record
                done = sum(t.state is TrialState.SUCCEEDED for t in record.trials)
                await self._set(eid, state=ExperimentState.SUCCEEDED, end_time=time.time(),
                                state_message=f"{done} of {len(record.trials)} trials "
                                              "succeeded")
        except Aborted as exc:
            await self._set(eid, state=ExperimentState.FAILED,
                            state_message=f"aborted (on_failure: abort): {exc}",
                            end_time=time.time())
        except Exception as exc:  # a bug or a lost mesh: say so, keep what was measured
            log.exception("experiment %s failed", eid)
            await self._wind_down(eid, f"the experiment failed: {exc}")
            await self._set(eid, state=ExperimentState.FAILED,
                            state_message=f"{type(exc).__name__}: {exc}", end_time=time.time())
        finally:
            if eid in self._live and self._live[eid].record.terminal:
                self._live.pop(eid, None)
            await self._notify()

    async def _wind_down(self, eid: str, reason: str) -> None:
        """Cancel the running benchmarks, delete every deployment, mark what is left."""
        live = self._live[eid]
        assert live.run is not None
        run = live.run
        for trial in live.record.trials:
            if trial.benchmark and not trial.finished:
                await run.cancel_benchmark(trial.benchmark)
        for trial in list(live.record.trials):
            if not trial.finished:
                state = (TrialState.CANCELLED if trial.state is TrialState.BENCHMARKING
                         else TrialState.SKIPPED)
                ended = trial.evolve(state=state, state_message=reason, end_time=time.time())
                await self._commit(eid, _with_trial(ended), [ended])
        for config in live.record.configurations:
            try:  # every deployment; a trial left TEARING_DOWN takes back its end state
                await run.teardown(config)
            except AifbError as exc:
                log.warning("experiment %s: %s not deleted: %s", eid, config.service, exc)

    def run_dir(self, eid: str) -> Path:
        return self.store.run_dir(eid)

"""Benchmark runs' lifecycle: create (idempotent), run in this process, watch, cancel, report.

Domain code only: the servicer converts protobuf to these calls. A run is a record in the
`RunStore` plus, while it goes, an asyncio task here. Every change (state or a new second of
progress) notifies one `asyncio.Condition`; watchers wait on it and read the run's progress
list from where they left off, so each sees every second in order. A caller sees only its own
runs (another user's run is reported as absent). At start, runs that were in flight when the
process died are marked FAILED with the reason: their load stopped with the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from aifb.client.engine.progress import Progress
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.samples import RequestLog, SampleSet
from aifb.client.engine.sessions import SESSIONS_NOT_CANCELLED
from aifb.client.report.parquet import samples_parquet
from aifb.client.report.render import FORMATS, render_report
from aifb.client.runs.options import LoadOptions, plan, workload_defaults
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.service.listing import page
from aifb.client.service.runner import Runner, RunOutcome, final_progress
from aifb.client.service.store import RunStore
from aifb.client.service.targets import ServiceResolver, Target, check_url
from aifb.client.service.telemetry import TelemetrySink
from aifb.client.workloads.registry import (
    build_workload,
    check_one_engine,
    get_kind,
    parse_params,
)
from aifb.client.workloads.spread import STRATEGIES
from aifb.mesh.access import operator_name
from aifb.mesh.auth import Principal
from aifb.mesh.errors import (
    AifbError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from aifb.mesh.labels import check_labels
from aifb.mesh.paging import check_page_size
from aifb.mesh.tracing import current_trace_id
from aifb.recipes.llm_models import PACKAGED

__all__ = ["BenchmarkManager", "CreateRequest", "Report", "parse_benchmark_id"]

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID = re.compile(r"^[a-z0-9-]{1,64}$")
RESTART_REASON = "the benchmark service stopped while the run was in flight"
SAMPLES_FILE = "samples.parquet"


def parse_benchmark_id(name: str) -> str:
    """'benchmarks/abc' or 'abc' -> 'abc'; anything else is INVALID_ARGUMENT."""
    rid = name.removeprefix("benchmarks/")
    if not _ID.match(rid):
        raise InvalidArgument(f"bad benchmark name {name!r}: expected benchmarks/<id>",
                              field="name")
    return rid


@dataclass(frozen=True)
class CreateRequest:
    workload: str
    service: str = ""
    url: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    labels: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    validate_only: bool = False  # check everything a create checks, start nothing
    spread: str = ""  # over a replicated service's replicas: "round-robin" (""), or
    # "least-outstanding"


@dataclass(frozen=True)
class Report:
    content: bytes
    directory: Path  # where it was written, with its plots


@dataclass
class _Active:
    record: BenchmarkRecord
    runner: Runner | None = None
    task: asyncio.Task[None] | None = None
    progress: list[Progress] = field(default_factory=list)


def _with_load_defaults(kind_fields: Mapping[str, object], parameters: Mapping[str, str],
                        load: LoadOptions) -> dict[str, str]:
    """The parameters with what the load implies (a replay's trace) for those the workload
    declares and the caller left out; a trace parameter naming another file than the replayed
    one is refused (the schedule and the content would disagree)."""
    out = dict(parameters)
    for key, value in workload_defaults(load).items():
        if key not in kind_fields:
            continue
        if key == "trace" and out.get(key, value) != value:
            raise InvalidArgument("parameters.trace names another file than load.trace_file: "
                                  "give the replayed trace once", field="parameters.trace")
        out.setdefault(key, value)
    return out


def _typed_params(raw: Mapping[str, str]) -> dict[str, Any]:
    """Map values are strings: JSON objects and lists ('{"a": "b"}') are decoded, the rest is
    left to the workload's model (pydantic turns '16' into 16 where an int is declared)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


# Parameters that name a file on this service's host (a packaged model's name is not a file).
_FILE_PARAMS = ("dataset", "tokenizer", "trace")


def _check_files(principal: Principal, params: dict[str, Any], trace_file: str) -> None:
    """A file a request names is read by this service, with its account's permissions: only
    that account (the operator) may name one. Another user's request could otherwise read
    the operator's files (their error messages say whether a path exists, and a dataset's
    prompts are sent to a target the user chose). Docs: docs/security.md, rule 5."""
    named = ["load.trace_file"] if trace_file else []  # (it also fills parameters.trace)
    named += [f"parameters.{k}" for k in _FILE_PARAMS
              if isinstance(params.get(k), str) and params[k]
              and not (k == "tokenizer" and params[k] in PACKAGED)]
    if named and principal.user != operator_name():
        raise PermissionDenied(
            f"{named[0]} names a file on the benchmark service's host, which it reads as "
            f"{operator_name()!r}: only {operator_name()!r} may name files there (send the "
            "content another way, e.g. synthetic prompts, or ask the operator)")


class BenchmarkManager:
    def __init__(self, store: RunStore, resolver: ServiceResolver | None, *,
                 telemetry: TelemetrySink | None = None,
                 tracer: trace.Tracer | None = None, facts: dict[str, Any] | None = None
                 ) -> None:
        self.store = store
        self.resolver = resolver
        self.telemetry = telemetry or TelemetrySink(None)
        self.tracer = tracer or trace.NoOpTracer()
        self.facts = facts or {}
        self._active: dict[str, _Active] = {}
        self._changed = asyncio.Condition()
        self._closed = False

    # ---- startup and shutdown --------------------------------------------------------------
    def recover(self) -> int:
        """Mark runs left in flight by a previous process FAILED; returns how many."""
        stale = self.store.interrupted()
        for record in stale:
            self.store.update(record.evolve(state=RunState.FAILED, state_message=RESTART_REASON,
                                            end_time=time.time()))
        if stale:
            log.warning("%d benchmark runs were in flight when the service stopped: FAILED",
                        len(stale))
        return len(stale)

    async def close(self) -> None:
        """Cancel running runs (their partial results are kept) and wake every watcher."""
        self._closed = True
        for active in list(self._active.values()):
            if active.runner is not None:
                active.runner.cancel("the benchmark service is shutting down")
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        await self._notify()
        await self.telemetry.close()

    # ---- queries ---------------------------------------------------------------------------
    def get(self, principal: Principal, name: str) -> BenchmarkRecord:
        rid = parse_benchmark_id(name)
        active = self._active.get(rid)
        record = active.record if active is not None else self.store.get(rid)
        if record is None or record.owner != principal.user:
            raise NotFound(f"benchmark {rid} not found")
        return record

    def owned(self, principal: Principal) -> list[BenchmarkRecord]:
        out = []
        for record in self.store.owned_by(principal.user):
            active = self._active.get(record.id)
            out.append(active.record if active is not None else record)
        return out

    def page(self, principal: Principal, *, page_size: int, token: str, filter_text: str
             ) -> tuple[list[BenchmarkRecord], str]:
        """One page of the caller's runs and the next page's token (ListBenchmarks)."""
        check_page_size(page_size)
        return page(self.owned(principal), page_size=page_size, token=token,
                    filter_text=filter_text)

    def report(self, principal: Principal, name: str, fmt: str) -> Report:
        """A finished run's report in `fmt` (json, md, html, parquet), also written to the run's
        folder with its plots (FailedPrecondition while it runs)."""
        if fmt not in FORMATS:
            raise InvalidArgument(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})",
                                  field="format")
        record = self.get(principal, name)
        if not record.terminal:
            raise FailedPrecondition(f"benchmark {record.id} is {record.state.value}: the "
                                     "report is written when it ends")
        directory = self.store.run_dir(record.id)
        content = render_report(record, self.store.read_json(record.id, "result.json") or {},
                                self.store.read_json(record.id, "context.json") or {}, fmt,
                                directory)
        return Report(content, directory)

    # ---- commands --------------------------------------------------------------------------
    async def create(self, principal: Principal, req: CreateRequest) -> BenchmarkRecord:
        if principal.is_job:
            raise PermissionDenied("a job's report token cannot start benchmarks")
        if self._closed:
            raise FailedPrecondition("the benchmark service is shutting down")
        if req.request_id:
            if not _REQUEST_ID.match(req.request_id):
                raise InvalidArgument("request_id must be 1-64 letters, digits, _ or -",
                                      field="request_id")
            existing = (None if req.validate_only
                        else self.store.by_request_id(principal.user, req.request_id))
            if existing is not None:
                return self.get(principal, existing.id)
        kind = get_kind(req.workload) if req.workload else None
        if kind is None:
            raise InvalidArgument("workload is required", field="workload")
        req = dataclasses.replace(req, parameters=_with_load_defaults(
            kind.params.model_fields, req.parameters, req.load))
        parsed = parse_params(kind, _typed_params(req.parameters))
        params = parsed.model_dump()
        _check_files(principal, params, req.load.trace_file)
        if getattr(parsed, "multi_turn", False) and req.load.cancel_fraction > 0:
            raise InvalidArgument(SESSIONS_NOT_CANCELLED, field="load.cancel_fraction")
        the_plan = plan(req.load)
        spark = req.load.engine == "spark"  # a sweep's steps run in one worker each
        check_one_engine(req.workload, params, req.load.partitions if spark else 1
                         if the_plan.sweep is not None else req.load.workers,
                         field="load.partitions" if spark else "load.workers")
        check_labels(req.labels)
        if bool(req.service) == bool(req.url):
            raise InvalidArgument("give exactly one target: service or url",
                                  field="service" if req.service else "url")
        if req.spread and req.spread not in STRATEGIES:
            raise InvalidArgument(f"spread must be one of {', '.join(STRATEGIES)}, got "
                                  f"{req.spread[:64]!r}", field="spread")
        if req.validate_only:
            if req.url:
                build_workload(req.workload, check_url(req.url), _typed_params(req.parameters))
            return BenchmarkRecord(
                id="", owner=principal.user, workload=req.workload, service=req.service,
                url=req.url, parameters=dict(req.parameters), load=req.load,
                labels=dict(req.labels), state_message="valid: nothing was started (validate "
                "only)")
        if req.url:
            target = Target(url=check_url(req.url))
        else:
            if self.resolver is None:
                raise FailedPrecondition("this benchmark service cannot resolve services "
                                         "(no server): give a url")
            target = await self.resolver.resolve(principal, req.service)
        # The workload itself checks the URL against what it supports (e.g. http:// only).
        aim = target.load_target(req.spread)
        build_workload(req.workload, aim, _typed_params(req.parameters))
        rid = secrets.token_hex(6)
        record = BenchmarkRecord(
            id=rid, owner=principal.user, workload=req.workload, service=target.service,
            url=req.url, resolved_url=target.url, parameters=dict(req.parameters),
            load=req.load, labels=dict(req.labels), state=RunState.PENDING,
            state_message="starting", create_time=time.time(), request_id=req.request_id,
            trace_id=current_trace_id())
        self.store.insert(record)
        self.store.write_json(rid, "context.json", {
            **target.context, "target": {"url": target.url, "service": target.service},
            "facts": self.facts})
        active = self._active[rid] = _Active(record)
        runner = Runner(the_plan, req.load, req.workload, aim, params,
                        lambda p: self._on_progress(rid, p))
        active.runner = runner
        active.task = asyncio.get_running_loop().create_task(
            self._execute(rid, runner, target, the_plan.total_s))
        return record

    async def cancel(self, principal: Principal, name: str) -> BenchmarkRecord:
        record = self.get(principal, name)
        if record.terminal:
            return record
        active = self._active.get(record.id)
        if active is not None and active.runner is not None:
            active.runner.cancel(f"cancelled by {principal.user}")
            if active.task is not None:
                await asyncio.wait({active.task}, timeout=30)
        return self.get(principal, name)

    async def watch(self, principal: Principal, name: str
                    ) -> AsyncIterator[tuple[BenchmarkRecord, Progress | None]]:
        """The snapshot, then (record, progress) per second and per state change, until the
        run is terminal (or the service shuts down)."""
        # The active entry first: it keeps the final record even after the run leaves it.
        active = self._active.get(parse_benchmark_id(name))
        record = self.get(principal, name)
        yield record, None
        index = len(active.progress) if active is not None else 0
        revision = record.revision
        while not record.terminal and active is not None:
            def news(a: _Active = active, i: int = index, rev: int = revision) -> bool:
                return self._closed or len(a.progress) > i or a.record.revision != rev

            async with self._changed:
                await self._changed.wait_for(news)
            for progress in active.progress[index:]:
                index += 1
                yield active.record, progress
            record = active.record
            if record.revision != revision and record.terminal:
                yield record, None
            revision = record.revision
            if self._closed and not record.terminal:
                return

    # ---- the run ---------------------------------------------------------------------------
    def _on_progress(self, rid: str, progress: Progress) -> None:
        active = self._active.get(rid)
        if active is None:
            return
        active.progress.append(progress)
        active.record = active.record.evolve(last_progress=progress)
        try:
            self.telemetry.publish(active.record, progress)
        except Exception as exc:  # telemetry must never stop a run
            log.warning("benchmark telemetry failed: %s", exc)
        asyncio.get_running_loop().create_task(self._notify())

    def _final_figures(self, rid: str, result: LoadResult) -> None:
        """The run's own figures replace its last (partial) second as the record's last
        progress (`bench list`) and in the live gauges; watchers keep the per-second stream."""
        active = self._active[rid]
        final = final_progress(result, active.record.last_progress)
        active.record = active.record.evolve(last_progress=final)
        try:
            self.telemetry.publish(active.record, final)
        except Exception as exc:  # telemetry must never stop a run
            log.warning("benchmark telemetry failed: %s", exc)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _set(self, rid: str, **changes: Any) -> BenchmarkRecord:
        active = self._active[rid]
        active.record = active.record.evolve(**changes)
        self.store.update(active.record)
        await self._notify()
        return active.record

    def _links(self, target: Target) -> list[Link]:
        if not re.fullmatch(r"[0-9a-f]{32}", target.trace_id or ""):
            return []
        tid = int(target.trace_id, 16)
        # The server records the service's trace id, not its root span id: the link names the
        # trace (span id derived from it, so it is valid and stable).
        ctx = SpanContext(trace_id=tid, span_id=(tid & ((1 << 64) - 1)) or 1, is_remote=True,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return [Link(ctx, {"aifb.link": "service", "aifb.service": target.service})]

    def _phase_spans(self, parent: trace.Span, outcome: RunOutcome) -> None:
        """One child span of the load span per phase of the run (times as they happened)."""
        ctx = trace.set_span_in_context(parent)
        for phase in outcome.phases:
            span = self.tracer.start_span(f"aifb.bench.{phase.name}", context=ctx,
                                          start_time=phase.start_ns,
                                          attributes=phase.attributes)
            span.end(end_time=max(phase.end_ns, phase.start_ns))

    async def _write_samples(self, record: BenchmarkRecord, samples: RequestLog | SampleSet
                             ) -> dict[str, Any]:
        """samples.parquet in the run's folder (built off the event loop); what the report
        says about it."""
        summary: dict[str, Any] = {**samples.summary(), "file": SAMPLES_FILE}
        try:
            data = await asyncio.to_thread(samples_parquet, record.name, record.workload,
                                           samples)
            self.store.write_bytes(record.id, SAMPLES_FILE, data)
        except Exception as exc:  # the run's figures are kept whatever happens to its rows
            log.warning("benchmark %s: samples.parquet not written: %s", record.id, exc)
            summary = {**summary, "file": "", "error": f"{type(exc).__name__}: {exc}"}
        return summary

    async def _write_partitions(self, record: BenchmarkRecord, result: LoadResult,
                                partitions: list[LoadResult]) -> dict[str, Any]:
        """A Spark run's per-partition rows beside the merged ones (partition -1), under
        `<run>/spark/{series,summary}/<run>.parquet`, for Spark SQL or pandas."""
        from aifb.client.report.parquet_dataset import write_parquet

        folder = self.store.run_dir(record.id) / "spark"
        try:
            files = await asyncio.to_thread(write_parquet, result, folder, record.id,
                                            partitions=partitions)
        except Exception as exc:  # the merged figures are kept whatever happens here
            log.warning("benchmark %s: spark parquet not written: %s", record.id, exc)
            return {"partitions": len(partitions), "error": f"{type(exc).__name__}: {exc}"}
        return {"partitions": len(partitions),
                "files": {k: str(v.relative_to(self.store.run_dir(record.id)))
                          for k, v in files.items()}}

    async def _execute(self, rid: str, runner: Runner, target: Target, total_s: float) -> None:
        record = self._active[rid].record
        outcome: RunOutcome | None = None
        with self.tracer.start_as_current_span(
                "aifb.bench.run", links=self._links(target),
                attributes={"aifb.benchmark": record.name, "aifb.workload": record.workload,
                            "aifb.target": target.url,
                            "aifb.service": target.service}) as span:
            await self._set(rid, state=RunState.RUNNING, start_time=time.time(),
                            state_message=f"running for up to {total_s:g}s",
                            trace_id=current_trace_id() or record.trace_id)
            following = (asyncio.create_task(_follow(target, runner))
                         if target.follow is not None else None)
            try:
                with self.tracer.start_as_current_span("aifb.bench.load") as load_span:
                    outcome = await runner.run()
                    self._phase_spans(load_span, outcome)
            except Exception as exc:
                log.exception("benchmark %s failed", rid)
                outcome = RunOutcome(LoadResult(state=RunState.FAILED,
                                                reason=f"{type(exc).__name__}: {exc}",
                                                workload=record.workload))
            if following is not None:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
            result = outcome.result
            if result.reason.startswith("workload prepare failed"):
                result.reason = (f"target unreachable or refused: {target.url}: "
                                 f"{result.reason.removeprefix('workload prepare failed: ')}")
            span.set_attribute("aifb.state", result.state.value)
            span.set_attribute("aifb.requests", result.counters["completed"])
            if result.measured_s > 0:
                self._final_figures(rid, result)
            with self.tracer.start_as_current_span("aifb.bench.store"):
                stored: dict[str, Any] = {
                    "result": result.to_dict(),
                    "steps": [{"name": s.name, "target_rate": s.target_rate,
                               "result": s.result.to_dict()}
                              for s in outcome.steps],
                    "stop_reason": outcome.stop_reason}
                if result.samples is not None:
                    stored["samples"] = await self._write_samples(record, result.samples)
                if outcome.partitions:
                    stored["spark"] = await self._write_partitions(record, result,
                                                                   outcome.partitions)
                self.store.write_json(rid, "result.json", stored)
        message = result.reason or ("completed" if result.state is RunState.SUCCEEDED
                                    else result.state.value.lower())
        await self._set(rid, state=result.state, state_message=message, end_time=time.time())
        await self.telemetry.flush(2.0)
        self._active.pop(rid, None)
        await self._notify()


async def _follow(target: Target, runner: Runner) -> None:
    """Hand the run each new list of the replicated target's READY replicas."""
    assert target.follow is not None
    try:
        async for urls in target.follow():
            runner.endpoints(urls)
    except AifbError as exc:  # the run goes on over the replicas it knows
        log.warning("stopped following %s: %s", target.service, exc)

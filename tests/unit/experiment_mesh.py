"""A fake mesh for ExperimentRun's unit tests: `Mesh` is `Remote` over a channel that only
builds the generated stubs; each stub method is a callable tagged with its service and name, and
`call`/`stream` dispatch on that tag to in-memory ServerService, BenchmarkService and
CollectorService fakes that answer with the real messages (serialized and parsed again, as on
the wire) and raise the mesh's errors. `run` drives a run to its end and keeps every trial's
committed states."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    Trial,
    TrialState,
)
from aifb.experiment.plan import Plan
from aifb.experiment.remote import Remote
from aifb.experiment.runner import ExperimentRun
from aifb.experiment.study import load_study
from aifb.mesh.errors import FailedPrecondition, NotFound, PermissionDenied
from aifb.v1 import client_pb2 as C
from aifb.v1 import collector_pb2 as L
from aifb.v1 import server_pb2 as S

EID = "0123456789ab"
TOKEN = "alice-token"
LOST = "the benchmark service stopped while the run was in flight"
TERMINAL = (C.BENCHMARK_STATE_SUCCEEDED, C.BENCHMARK_STATE_FAILED,
             C.BENCHMARK_STATE_CANCELLED)

GRID = """\
name: grid
services:
  - name: web
    recipe: nginx
    parameters: {{worker_processes: [1, 2]}}
workloads:
  - name: open
    workload: http
    load: {{duration: 5s, slo: {{p99: 80ms}}}}
    rates: [100, 200]
limits: {{parallel_deployments: {parallel}{budget}}}
on_failure: {on_failure}
"""

SEARCH = """\
name: peak
services:
  - name: web
    recipe: nginx
workloads:
  - name: peak
    workload: http
    load: {duration: 5s}
    search: {slo: {p99: 50ms}, start: 100, tolerance: 0.05}
"""


# -- the fake mesh ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FakeMethod:
    """What a generated stub holds for one RPC: here, only its service, name and codecs."""

    service: str  # ServerService, BenchmarkService, CollectorService
    name: str  # CreateService, WatchBenchmark, ...
    streaming: bool
    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]


class FakeChannel:
    """Enough of a channel to build the generated stubs; their calls never reach it."""

    def _method(self, path: str, streaming: bool, **kw: Any) -> FakeMethod:
        service, name = path.strip("/").split("/")
        return FakeMethod(service.rsplit(".", 1)[-1], name, streaming, kw["request_serializer"],
                       kw["response_deserializer"])

    def unary_unary(self, path: str, **kw: Any) -> FakeMethod:
        return self._method(path, False, **kw)

    def unary_stream(self, path: str, **kw: Any) -> FakeMethod:
        return self._method(path, True, **kw)

    def stream_unary(self, path: str, **kw: Any) -> FakeMethod:
        return self._method(path, False, **kw)

    def stream_stream(self, path: str, **kw: Any) -> FakeMethod:
        return self._method(path, True, **kw)


class Servers:
    """The ServerService: CreateService idempotent by request id; WatchService sends the
    snapshot, then READY (or FAILED with `fail[configuration]` as its message)."""

    def __init__(self, fail: dict[int, str] | None = None) -> None:
        self.fail = fail or {}
        self.services: dict[str, S.Service] = {}
        self.by_request: dict[str, str] = {}
        self.creates: list[S.CreateServiceRequest] = []  # every CreateService call
        self.deleted: list[str] = []

    def add(self, request_id: str, configuration: int, state: S.ServiceState) -> str:
        """A service created before the test (by a previous process)."""
        name = f"services/{len(self.services) + 1:012x}"
        self.services[name] = S.Service(name=name, recipe="nginx", state=state,
                                        labels={"configuration": str(configuration)})
        self.by_request[request_id] = name
        return name

    def _get(self, name: str) -> S.Service:
        if name not in self.services:
            raise NotFound(f"{name} not found")
        return self.services[name]

    def CreateService(self, req: S.CreateServiceRequest) -> S.CreateServiceResponse:
        self.creates.append(req)
        if req.request_id in self.by_request:
            return S.CreateServiceResponse(service=self.services[self.by_request[req.request_id]])
        name = f"services/{len(self.services) + 1:012x}"
        self.services[name] = S.Service(name=name, recipe=req.recipe, parameters=req.parameters,
                                        labels=req.labels, resources=req.resources,
                                        state=S.SERVICE_STATE_PENDING)
        self.by_request[req.request_id] = name
        return S.CreateServiceResponse(service=self.services[name])

    def WatchService(self, req: S.WatchServiceRequest) -> Iterator[S.WatchServiceResponse]:
        svc = self._get(req.name)
        yield S.WatchServiceResponse(service=svc)
        if svc.state == S.SERVICE_STATE_PENDING:
            config = int(svc.labels["configuration"])
            if config in self.fail:
                svc.state, svc.state_message = S.SERVICE_STATE_FAILED, self.fail[config]
            else:
                svc.state = S.SERVICE_STATE_READY
            yield S.WatchServiceResponse(service=svc)

    def DeleteService(self, req: S.DeleteServiceRequest) -> S.DeleteServiceResponse:
        svc = self._get(req.name)
        svc.state = S.SERVICE_STATE_STOPPED
        self.deleted.append(req.name)
        return S.DeleteServiceResponse(service=svc)

    def GetServiceLogs(self, req: S.GetServiceLogsRequest) -> S.GetServiceLogsResponse:
        svc = self._get(req.name)
        if svc.state == S.SERVICE_STATE_FAILED:
            return S.GetServiceLogsResponse(stderr="nginx: [emerg] bind() to 0.0.0.0:80 failed")
        return S.GetServiceLogsResponse()


class Benchmarks:
    """The BenchmarkService: CreateBenchmark idempotent by request id; WatchBenchmark sends the
    snapshot, RUNNING with a progress sample, then `outcome(rate)`; the JSON report's SLO is
    met iff `slo_met(rate)`."""

    def __init__(self, *, slo_met: Callable[[float], bool] = lambda rate: True,
                 outcome: Callable[[float], tuple[C.BenchmarkState, str]] = (
                     lambda rate: (C.BENCHMARK_STATE_SUCCEEDED, "done"))) -> None:
        self.slo_met = slo_met
        self.outcome = outcome
        self.benchmarks: dict[str, C.Benchmark] = {}
        self.by_request: dict[str, str] = {}
        self.creates: list[C.CreateBenchmarkRequest] = []  # every CreateBenchmark call
        self.cancelled: list[str] = []

    def add(self, request_id: str, rate: float, state: C.BenchmarkState,
            message: str = "") -> str:
        """A benchmark created before the test (by a previous process)."""
        name = f"benchmarks/{request_id.replace('-', '')[-12:]}"
        self.benchmarks[name] = C.Benchmark(name=name, state=state, state_message=message,
                                            load=C.LoadProfile(rate=rate))
        self.by_request[request_id] = name
        return name

    def _get(self, name: str) -> C.Benchmark:
        if name not in self.benchmarks:
            raise NotFound(f"{name} not found")
        return self.benchmarks[name]

    def CreateBenchmark(self, req: C.CreateBenchmarkRequest) -> C.CreateBenchmarkResponse:
        assert not req.validate_only
        self.creates.append(req)
        if req.request_id in self.by_request:
            return C.CreateBenchmarkResponse(
                benchmark=self.benchmarks[self.by_request[req.request_id]])
        name = f"benchmarks/{len(self.benchmarks) + 1:012x}"
        self.benchmarks[name] = C.Benchmark(
            name=name, state=C.BENCHMARK_STATE_PENDING, workload=req.workload,
            service=req.service, parameters=req.parameters, load=req.load, labels=req.labels)
        self.by_request[req.request_id] = name
        return C.CreateBenchmarkResponse(benchmark=self.benchmarks[name])

    def WatchBenchmark(self, req: C.WatchBenchmarkRequest
                       ) -> Iterator[C.WatchBenchmarkResponse]:
        bench = self._get(req.name)
        yield C.WatchBenchmarkResponse(benchmark=bench)
        if bench.state in TERMINAL:
            return
        bench.state = C.BENCHMARK_STATE_RUNNING
        yield C.WatchBenchmarkResponse(benchmark=bench, progress=C.ProgressSample(
            requests=10, achieved_rate=bench.load.rate, target_rate=bench.load.rate))
        bench.state, bench.state_message = self.outcome(bench.load.rate)
        yield C.WatchBenchmarkResponse(benchmark=bench)

    def GetBenchmark(self, req: C.GetBenchmarkRequest) -> C.GetBenchmarkResponse:
        return C.GetBenchmarkResponse(benchmark=self._get(req.name))

    @staticmethod
    def figures(rate: float) -> dict[str, Any]:
        return {"achieved_rate": rate * 0.99, "ok_rate": rate * 0.98, "error_ratio": 0.001,
                "histograms": {"latency": {"count": 100, "p50": rate / 1e5, "p99": rate / 1e4}}}

    def GetBenchmarkReport(self, req: C.GetBenchmarkReportRequest
                           ) -> C.GetBenchmarkReportResponse:
        bench = self._get(req.name)
        assert req.format == C.REPORT_FORMAT_JSON
        if bench.state not in TERMINAL:
            raise FailedPrecondition(f"{bench.name} has not ended")
        rate = bench.load.rate
        doc = {"schema_version": 1,
               "benchmark": {"name": bench.name,
                             "state": C.BenchmarkState.Name(bench.state)
                             .removeprefix("BENCHMARK_STATE_")},
               "figures": self.figures(rate),
               "slo": [{"slo": "p99", "limit_s": 0.05, "measured_s": rate / 1e4,
                        "met": self.slo_met(rate)}]}
        return C.GetBenchmarkReportResponse(format=C.REPORT_FORMAT_JSON,
                                            content=json.dumps(doc).encode())

    def CancelBenchmark(self, req: C.CancelBenchmarkRequest) -> C.CancelBenchmarkResponse:
        bench = self._get(req.name)
        if bench.state not in TERMINAL:
            bench.state = C.BENCHMARK_STATE_CANCELLED
        self.cancelled.append(req.name)
        return C.CancelBenchmarkResponse(benchmark=bench)


class Collector:
    """CollectorService.QueryMetrics: no samples, or the operator's view refused."""

    def __init__(self, denies: bool) -> None:
        self.denies = denies

    def QueryMetrics(self, req: L.QueryMetricsRequest) -> L.QueryMetricsResponse:
        if self.denies:
            raise PermissionDenied("QueryMetrics is for operators")
        return L.QueryMetricsResponse()


class Mesh(Remote):
    """`Remote` whose stubs' calls go to the fakes, through each message's wire form."""

    def __init__(self, servers: Servers | None = None, benchmarks: Benchmarks | None = None,
                 *, collector_denies: bool = False) -> None:
        super().__init__("fake-mesh:0")
        self.servers = servers or Servers()
        self.benchmarks = benchmarks or Benchmarks()
        self.collector = Collector(collector_denies)
        self.calls: list[tuple[str, str]] = []  # (method, token)

    def _open(self) -> Any:
        return FakeChannel()

    def _handler(self, method: Any, request: Any, token: str) -> tuple[FakeMethod, Any, Any]:
        assert isinstance(method, FakeMethod), method
        self.calls.append((method.name, token))
        fake = {"ServerService": self.servers, "BenchmarkService": self.benchmarks,
                "CollectorService": self.collector}[method.service]
        wire = type(request).FromString(method.serialize(request))
        return method, getattr(fake, method.name), wire

    async def call(self, method: Any, request: Any, token: str, *,
                   timeout: float = 30.0) -> Any:
        method, handler, wire = self._handler(method, request, token)
        assert not method.streaming
        return method.deserialize(handler(wire).SerializeToString())

    async def stream(self, method: Any, request: Any, token: str) -> AsyncIterator[Any]:
        method, handler, wire = self._handler(method, request, token)
        assert method.streaming
        for message in handler(wire):
            await asyncio.sleep(0)  # let other configurations run, as a real stream would
            yield method.deserialize(message.SerializeToString())

    def count(self, name: str) -> int:
        return sum(method == name for method, _ in self.calls)


# -- driving a run --------------------------------------------------------------------------------
@dataclass
class Run:
    """The record a run commits to, and each trial's states as committed (a change of state
    each: a commit that keeps the state, such as naming the benchmark, adds nothing)."""

    record: ExperimentRecord
    states: dict[int, list[TrialState]] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for trial in self.record.trials:
            self.states[trial.n] = [trial.state]

    async def commit(self, change: Callable[[ExperimentRecord], ExperimentRecord],
                     trials: Sequence[Trial]) -> ExperimentRecord:
        self.record = change(self.record)  # as ExperimentManager._commit: apply, then store
        for named in trials:
            trial = self.record.trials[named.n]
            seen = self.states.setdefault(trial.n, [])
            if not seen or seen[-1] is not trial.state:
                seen.append(trial.state)
        return self.record

    def on_progress(self, trial: str, progress: C.ProgressSample) -> None:
        self.progress.append(trial)


def grid_plan(*, parallel: int = 1, on_failure: str = "continue", budget: str = "") -> Plan:
    budget = f", budget: {budget}" if budget else ""
    return Plan(load_study(GRID.format(parallel=parallel, on_failure=on_failure, budget=budget),
                           file="grid.yaml"))


def record_of(plan: Plan, *, trials: Sequence[Trial] = (),
            configurations: Sequence[ConfigurationRun] = (),
            start_time: float | None = None) -> ExperimentRecord:
    """A RUNNING experiment as the manager stores it, with some trials and configurations
    replaced by what a previous process left."""
    runs = {c.index: ConfigurationRun(c.index) for c in plan.configurations}
    runs.update({c.index: c for c in configurations})
    initial = {t.n: t for t in plan.initial_trials()}
    initial.update({t.n: t for t in trials})
    return ExperimentRecord(
        id=EID, owner="alice", study=plan.study.to_dict(),
        configurations=tuple(runs[i] for i in sorted(runs)),
        trials=tuple(initial[n] for n in sorted(initial)),
        start_time=time.time() if start_time is None else start_time)


def runner_of(mesh: Mesh, plan: Plan, record: ExperimentRecord | None = None
            ) -> tuple[Run, ExperimentRun]:
    done = Run(record or record_of(plan))
    return done, ExperimentRun(done.record, plan, mesh, TOKEN, done.commit, done.on_progress)


def run(mesh: Mesh, plan: Plan, record: ExperimentRecord | None = None) -> Run:
    done, runner = runner_of(mesh, plan, record)
    asyncio.run(runner.run())
    assert runner.record is done.record
    return done


def bench_request_ids(mesh: Mesh) -> list[str]:
    return [req.request_id for req in mesh.benchmarks.creates]

"""ExperimentRun's orchestration over a fake mesh (no processes, no sockets): trial states in
order, one deployment per configuration deleted once, figures from the benchmark's report,
deploy failures (continue and abort), resuming after a crash (a finished benchmark read, a lost
one run again, a teardown finished, a recorded failure still aborting), a rate search, and a
spent time budget.

The fake mesh is `Remote` over a channel that only builds the generated stubs: each stub method
is a callable tagged with its service and name, and `call`/`stream` dispatch on that tag to
in-memory ServerService, BenchmarkService and CollectorService fakes that answer with the real
messages (serialized and parsed again, as on the wire) and raise the mesh's errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    SearchRun,
    Trial,
    TrialState,
)
from aifb.experiment.plan import Plan
from aifb.experiment.remote import Remote
from aifb.experiment.runner import Aborted, ExperimentRun
from aifb.experiment.search import RateSearch
from aifb.experiment.study import load_study
from aifb.mesh.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from aifb.v1 import client_pb2 as C
from aifb.v1 import collector_pb2 as L
from aifb.v1 import server_pb2 as S

pytestmark = pytest.mark.unit

EID = "0123456789ab"
TOKEN = "alice-token"
LOST = "the benchmark service stopped while the run was in flight"
_TERMINAL = (C.BENCHMARK_STATE_SUCCEEDED, C.BENCHMARK_STATE_FAILED,
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
class _Method:
    """What a generated stub holds for one RPC: here, only its service, name and codecs."""

    service: str  # ServerService, BenchmarkService, CollectorService
    name: str  # CreateService, WatchBenchmark, ...
    streaming: bool
    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]


class _Channel:
    """Enough of a channel to build the generated stubs; their calls never reach it."""

    def _method(self, path: str, streaming: bool, **kw: Any) -> _Method:
        service, name = path.strip("/").split("/")
        return _Method(service.rsplit(".", 1)[-1], name, streaming, kw["request_serializer"],
                       kw["response_deserializer"])

    def unary_unary(self, path: str, **kw: Any) -> _Method:
        return self._method(path, False, **kw)

    def unary_stream(self, path: str, **kw: Any) -> _Method:
        return self._method(path, True, **kw)

    def stream_unary(self, path: str, **kw: Any) -> _Method:
        return self._method(path, False, **kw)

    def stream_stream(self, path: str, **kw: Any) -> _Method:
        return self._method(path, True, **kw)


class _Servers:
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


class _Benchmarks:
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
        if bench.state in _TERMINAL:
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
        if bench.state not in _TERMINAL:
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
        if bench.state not in _TERMINAL:
            bench.state = C.BENCHMARK_STATE_CANCELLED
        self.cancelled.append(req.name)
        return C.CancelBenchmarkResponse(benchmark=bench)


class _Collector:
    """CollectorService.QueryMetrics: no samples, or the operator's view refused."""

    def __init__(self, denies: bool) -> None:
        self.denies = denies

    def QueryMetrics(self, req: L.QueryMetricsRequest) -> L.QueryMetricsResponse:
        if self.denies:
            raise PermissionDenied("QueryMetrics is for operators")
        return L.QueryMetricsResponse()


class _Mesh(Remote):
    """`Remote` whose stubs' calls go to the fakes, through each message's wire form."""

    def __init__(self, servers: _Servers | None = None, benchmarks: _Benchmarks | None = None,
                 *, collector_denies: bool = False) -> None:
        super().__init__("fake-mesh:0")
        self.servers = servers or _Servers()
        self.benchmarks = benchmarks or _Benchmarks()
        self.collector = _Collector(collector_denies)
        self.calls: list[tuple[str, str]] = []  # (method, token)

    def _open(self) -> Any:
        return _Channel()

    def _handler(self, method: Any, request: Any, token: str) -> tuple[_Method, Any, Any]:
        assert isinstance(method, _Method), method
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
class _Run:
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


def _grid_plan(*, parallel: int = 1, on_failure: str = "continue", budget: str = "") -> Plan:
    budget = f", budget: {budget}" if budget else ""
    return Plan(load_study(GRID.format(parallel=parallel, on_failure=on_failure, budget=budget),
                           file="grid.yaml"))


def _record(plan: Plan, *, trials: Sequence[Trial] = (),
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


def _runner(mesh: _Mesh, plan: Plan, record: ExperimentRecord | None = None
            ) -> tuple[_Run, ExperimentRun]:
    done = _Run(record or _record(plan))
    return done, ExperimentRun(done.record, plan, mesh, TOKEN, done.commit, done.on_progress)


def _run(mesh: _Mesh, plan: Plan, record: ExperimentRecord | None = None) -> _Run:
    done, runner = _runner(mesh, plan, record)
    asyncio.run(runner.run())
    assert runner.record is done.record
    return done


def _bench_request_ids(mesh: _Mesh) -> list[str]:
    return [req.request_id for req in mesh.benchmarks.creates]


# -- the tests ------------------------------------------------------------------------------------
def test_each_trial_goes_pending_deploying_benchmarking_tearing_down_succeeded() -> None:
    plan = _grid_plan()
    mesh = _Mesh()
    done = _run(mesh, plan)
    s = TrialState
    # trials 0, 1 on configuration 0, then 2, 3 on configuration 1
    first = [s.PENDING, s.DEPLOYING, s.BENCHMARKING, s.SUCCEEDED]
    last = [s.PENDING, s.BENCHMARKING, s.SUCCEEDED, s.TEARING_DOWN, s.SUCCEEDED]
    assert done.states == {0: first, 1: last, 2: first, 3: last}
    assert all(t.state is s.SUCCEEDED and t.ended_as == "" and t.slo_met
               for t in done.record.trials)


def test_each_configuration_is_created_once_and_deleted_once() -> None:
    plan = _grid_plan()
    mesh = _Mesh()
    done = _run(mesh, plan)
    creates = mesh.servers.creates
    assert [c.request_id for c in creates] == [f"{EID}-c0", f"{EID}-c1"]
    assert [dict(c.parameters) for c in creates] == [{"worker_processes": "1"},
                                                     {"worker_processes": "2"}]
    assert [dict(c.labels) for c in creates] == [
        {"experiment": EID, "configuration": "0"}, {"experiment": EID, "configuration": "1"}]
    names = [c.service for c in done.record.configurations]
    assert sorted(names) == sorted(mesh.servers.services) and len(set(names)) == 2
    assert sorted(mesh.servers.deleted) == sorted(names)  # each once
    assert all(c.torn_down and not c.failure for c in done.record.configurations)
    # every benchmark ran on its own configuration's service
    by_trial = {int(b.labels["trial"]): b for b in mesh.benchmarks.benchmarks.values()}
    assert [by_trial[n].service for n in range(4)] == [names[0], names[0], names[1], names[1]]
    # the owner's token on every ServerService and BenchmarkService call
    assert {token for method, token in mesh.calls if method != "QueryMetrics"} == {TOKEN}


def test_benchmarks_are_named_by_trial_and_attempt_and_labelled_and_figures_come_from_report(
) -> None:
    plan = _grid_plan()
    mesh = _Mesh()
    done = _run(mesh, plan)
    assert _bench_request_ids(mesh) == [f"{EID}-t{n}-a0" for n in range(4)]
    assert [dict(r.labels) for r in mesh.benchmarks.creates] == [
        {"experiment": EID, "trial": str(n)} for n in range(4)]
    assert [r.load.rate for r in mesh.benchmarks.creates] == [100.0, 200.0, 100.0, 200.0]
    for trial in done.record.trials:
        assert trial.benchmark == mesh.benchmarks.by_request[f"{EID}-t{trial.n}-a0"]
        report = _Benchmarks.figures(trial.level)
        assert trial.figures["achieved_rate"] == pytest.approx(report["achieved_rate"])
        assert trial.figures["error_ratio"] == pytest.approx(0.001)
        assert trial.figures["latency_p50_seconds"] == pytest.approx(trial.level / 1e5)
        assert trial.figures["latency_p99_seconds"] == pytest.approx(trial.level / 1e4)
        assert "cpu_cores" not in trial.figures  # the collector had no samples
        assert trial.start_time <= trial.end_time
    assert done.progress == [f"experiments/{EID}/trials/{n}" for n in range(4)]


def test_a_configuration_that_fails_to_deploy_skips_its_trials_and_the_next_one_runs() -> None:
    plan = _grid_plan()
    mesh = _Mesh(_Servers(fail={0: "the job exited with code 1"}), collector_denies=True)
    done = _run(mesh, plan)
    trials = done.record.trials
    assert [t.state for t in trials] == [TrialState.SKIPPED, TrialState.SKIPPED,
                                         TrialState.SUCCEEDED, TrialState.SUCCEEDED]
    for trial in trials[:2]:
        assert trial.state_message.startswith("configuration 0 failed to deploy")
        assert "the job exited with code 1" in trial.state_message
    assert done.states[0] == [TrialState.PENDING, TrialState.DEPLOYING, TrialState.SKIPPED]
    failure = done.record.configurations[0].failure
    assert "ended FAILED before it was READY: the job exited with code 1" in failure
    assert "nginx: [emerg] bind() to 0.0.0.0:80 failed" in failure  # the log tail
    assert done.record.configurations[1].failure == ""
    assert not {t.benchmark for t in trials[:2]} - {""}  # no benchmark for a failed deployment
    assert _bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    # the failed deployment is deleted too (the server keeps its record and logs until then)
    assert sorted(mesh.servers.deleted) == sorted(mesh.servers.services)
    # a collector that refuses QueryMetrics costs the trials their usage figures only
    assert mesh.count("QueryMetrics") >= 2
    assert all("cpu_cores" not in t.figures and t.figures for t in trials[2:])


@pytest.mark.parametrize(("parallel", "failing"), [(1, 0), (2, 0), (2, 1)])
def test_on_failure_abort_raises_aborted_and_leaves_nothing_pending_or_deployed(
        parallel: int, failing: int) -> None:
    plan = _grid_plan(parallel=parallel, on_failure="abort")
    mesh = _Mesh(_Servers(fail={failing: "the job exited with code 1"}))
    done, runner = _runner(mesh, plan)
    with pytest.raises(Aborted, match=f"configuration {failing} failed to deploy"):
        asyncio.run(runner.run())
    assert not [t for t in done.record.trials if not t.state.terminal]
    failed = [t for t in done.record.trials if t.configuration == failing]
    assert all(t.state is TrialState.SKIPPED for t in failed)
    assert sorted(mesh.servers.deleted) == sorted(mesh.servers.services)
    assert all(c.torn_down for c in done.record.configurations if c.service)
    assert not [b for b in mesh.benchmarks.benchmarks.values() if b.state not in _TERMINAL]


def _left_by_a_crash(plan: Plan, servers: _Servers, trials: dict[int, tuple[TrialState, str]],
                     *, ended_as: TrialState = TrialState.SUCCEEDED) -> ExperimentRecord:
    """What a process that crashed left: configuration 0 deployed (READY), and these trials
    of it in these states with these benchmarks (one TEARING_DOWN had ended `ended_as`)."""
    service = servers.add(f"{EID}-c0", 0, S.SERVICE_STATE_READY)
    initial = plan.initial_trials()
    crashed = []
    for n, (state, bench) in trials.items():
        finished = state is not TrialState.BENCHMARKING
        crashed.append(initial[n].evolve(
            state=state, benchmark=bench, start_time=1000.0 + n,
            end_time=1010.0 + n if finished else 0.0,
            figures={"achieved_rate": 1.0} if finished else {}, slo_met=finished or None,
            ended_as=ended_as.value if state is TrialState.TEARING_DOWN else ""))
    return _record(plan, trials=crashed,
                   configurations=[ConfigurationRun(0, service=service)])


def test_a_resumed_run_reads_a_finished_benchmark_reuses_the_service_and_runs_the_rest(
) -> None:
    plan = _grid_plan()
    servers, benchmarks = _Servers(), _Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_SUCCEEDED)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.BENCHMARKING, t1)})
    service = record.configurations[0].service
    mesh = _Mesh(servers, benchmarks, collector_denies=True)
    done = _run(mesh, plan, record)
    trials = done.record.trials
    assert trials[0] == record.trials[0] and done.states[0] == [TrialState.SUCCEEDED]
    assert trials[1].state is TrialState.SUCCEEDED and trials[1].benchmark == t1
    assert trials[1].figures["achieved_rate"] == pytest.approx(200.0 * 0.99)  # its report's
    assert trials[1].start_time == 1001.0  # the trial's, not the resumed run's
    assert TrialState.PENDING not in done.states[1]
    assert _bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    # CreateService again with the same request id: the same service, no second one
    assert [c.request_id for c in servers.creates] == [f"{EID}-c0", f"{EID}-c1"]
    assert done.record.configurations[0].service == service and len(servers.services) == 2
    assert sorted(servers.deleted) == sorted(servers.services)
    assert [t.state for t in trials] == [TrialState.SUCCEEDED] * 4


def test_a_benchmark_lost_to_a_restart_runs_again_as_attempt_1() -> None:
    plan = _grid_plan()
    servers, benchmarks = _Servers(), _Benchmarks()
    lost = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_FAILED, LOST)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.BENCHMARKING, lost)})
    mesh = _Mesh(servers, benchmarks)
    done = _run(mesh, plan, record)
    trial = done.record.trials[0]
    assert trial.state is TrialState.SUCCEEDED and trial.attempt == 1
    assert trial.benchmark == benchmarks.by_request[f"{EID}-t0-a1"] != lost
    assert trial.figures["achieved_rate"] == pytest.approx(100.0 * 0.99)
    assert _bench_request_ids(mesh) == [f"{EID}-t0-a1", f"{EID}-t1-a0", f"{EID}-t2-a0",
                                        f"{EID}-t3-a0"]
    assert [t.state for t in done.record.trials] == [TrialState.SUCCEEDED] * 4


def test_a_trial_left_tearing_down_ends_as_it_was_once_the_deployment_is_deleted() -> None:
    plan = _grid_plan()
    servers, benchmarks = _Servers(), _Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_SUCCEEDED)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.TEARING_DOWN, t1)})
    service = record.configurations[0].service
    mesh = _Mesh(servers, benchmarks)
    done = _run(mesh, plan, record)
    trial = done.record.trials[1]
    assert done.states[1] == [TrialState.TEARING_DOWN, TrialState.SUCCEEDED]
    assert trial == record.trials[1].evolve(state=TrialState.SUCCEEDED, ended_as="")
    assert servers.deleted.count(service) == 1
    assert done.record.configurations[0].torn_down
    # configuration 0 is neither deployed nor benchmarked again; configuration 1 runs
    assert [c.request_id for c in servers.creates] == [f"{EID}-c1"]
    assert _bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    assert [t.state for t in done.record.trials] == [TrialState.SUCCEEDED] * 4


def test_a_rate_search_runs_the_trials_it_asks_for_and_ends_within_tolerance_below_the_peak(
) -> None:
    plan = Plan(load_study(SEARCH, file="peak.yaml"))
    assert plan.initial_trials() == []  # a search's trials are numbered as it asks
    mesh = _Mesh(benchmarks=_Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    done = _run(mesh, plan)
    # the rates an uninterrupted search with the same answers asks for, in order
    step = plan.steps(0)[0]
    assert step.search is not None
    replay: RateSearch = step.search()
    asked = []
    while (rate := replay.next_rate()) is not None:
        asked.append(rate)
        replay.record(rate, rate <= 1000.0)
    trials = done.record.trials
    assert [t.level for t in trials] == asked and len(asked) > 4
    assert [r.load.rate for r in mesh.benchmarks.creates] == asked
    assert _bench_request_ids(mesh) == [f"{EID}-t{n}-a0" for n in range(len(asked))]
    assert all(r.load.slo["p99"] for r in mesh.benchmarks.creates)  # the search's SLO
    assert [(t.level_kind, t.search_step, t.n) for t in trials] == [
        ("search", i + 1, i) for i in range(len(asked))]
    assert [t.slo_met for t in trials] == [t.level <= 1000.0 for t in trials]
    assert all(t.state is TrialState.SUCCEEDED for t in trials)  # an SLO miss is not a failure
    [search] = done.record.searches
    assert search.done and search.converged and search.key == (0, "peak", 0)
    assert search.best_rate is not None and search.failed_rate is not None
    assert 1000.0 * (1 - 0.05) <= search.best_rate <= 1000.0 < search.failed_rate
    assert (search.failed_rate - search.best_rate) / search.best_rate <= 0.05
    assert len(mesh.servers.creates) == 1 and len(mesh.servers.deleted) == 1


def test_a_spent_budget_deploys_nothing_and_skips_every_trial() -> None:
    plan = _grid_plan(budget="60s")
    mesh = _Mesh()
    done = _run(mesh, plan, _record(plan, start_time=time.time() - 86400))
    assert mesh.calls == []  # nothing deployed, nothing benchmarked
    assert all(t.state is TrialState.SKIPPED and "budget" in t.state_message
               for t in done.record.trials)
    assert all(not c.service for c in done.record.configurations)


def test_a_deploy_failure_recorded_before_a_restart_still_aborts_the_experiment() -> None:
    plan = _grid_plan(on_failure="abort")
    servers = _Servers()
    # configuration 0 failed and its trials were skipped; the process stopped while deleting
    # its deployment, before the abort reached configuration 1
    service = servers.add(f"{EID}-c0", 0, S.SERVICE_STATE_FAILED)
    initial = plan.initial_trials()
    skipped = [initial[n].evolve(state=TrialState.SKIPPED, end_time=1000.0,
                                 state_message="configuration 0 failed to deploy: boom")
               for n in (0, 1)]
    record = _record(plan, trials=skipped, configurations=[
        ConfigurationRun(0, service=service, failure="boom")])
    mesh = _Mesh(servers)
    done, runner = _runner(mesh, plan, record)
    with pytest.raises(Aborted, match="configuration 0 failed to deploy"):
        asyncio.run(runner.run())
    assert servers.creates == [] and mesh.benchmarks.creates == []  # configuration 1 never ran
    assert servers.deleted == [service] and done.record.configurations[0].torn_down
    assert all(t.state is TrialState.SKIPPED for t in done.record.trials)
    assert done.record.trials[2].state_message.startswith("the experiment was aborted")


def test_a_trial_failure_recorded_before_a_restart_still_aborts_the_experiment() -> None:
    plan = _grid_plan(on_failure="abort")
    servers, benchmarks = _Servers(), _Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_FAILED, "connection refused")
    # trial 1 failed; the process stopped while deleting configuration 0's deployment
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.TEARING_DOWN, t1)},
                              ended_as=TrialState.FAILED)
    mesh = _Mesh(servers, benchmarks)
    done, runner = _runner(mesh, plan, record)
    with pytest.raises(Aborted, match="trial 1 failed"):
        asyncio.run(runner.run())
    assert servers.creates == [] and benchmarks.creates == []  # configuration 1 never ran
    assert servers.deleted == [record.configurations[0].service]
    assert [t.state for t in done.record.trials] == [TrialState.SUCCEEDED, TrialState.FAILED,
                                                     TrialState.SKIPPED, TrialState.SKIPPED]


def test_a_watch_that_ends_before_the_benchmark_does_is_opened_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_wait(delay: float) -> None:
        return None

    monkeypatch.setattr("aifb.experiment.runner.asyncio.sleep", no_wait)

    class Cut(_Benchmarks):  # the first stream of each run ends while it is still RUNNING
        cut: set[str] = set()

        def WatchBenchmark(self, req: C.WatchBenchmarkRequest
                           ) -> Iterator[C.WatchBenchmarkResponse]:
            bench = self._get(req.name)
            if req.name not in self.cut:
                self.cut.add(req.name)
                bench.state = C.BENCHMARK_STATE_RUNNING
                yield C.WatchBenchmarkResponse(benchmark=bench)
                return
            yield from super().WatchBenchmark(req)

    mesh = _Mesh(benchmarks=Cut())
    done = _run(mesh, _grid_plan())
    assert {t.state for t in done.record.trials} == {TrialState.SUCCEEDED}
    assert len(mesh.benchmarks.creates) == len(done.record.trials)  # followed, not rerun


def test_a_deployment_that_cannot_be_deleted_fails_the_run_instead_of_leaking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck(_Servers):
        def DeleteService(self, req: S.DeleteServiceRequest) -> S.DeleteServiceResponse:
            self.deleted.append(req.name)
            raise Unavailable("the scheduler does not answer")

    async def no_wait(delay: float) -> None:  # the retries' backoff, without the wait
        return None

    monkeypatch.setattr("aifb.experiment.runner.asyncio.sleep", no_wait)
    mesh = _Mesh(servers=Stuck())
    done, runner = _runner(mesh, _grid_plan())
    with pytest.raises(Unavailable):
        asyncio.run(runner.run())
    # Tried four times, then the run fails: the manager winds down (and tries once more)
    # instead of calling a leaked deployment SUCCEEDED.
    first = done.record.configurations[0].service
    assert mesh.servers.deleted.count(first) == 4
    ended = [t for t in done.record.trials if t.configuration == 0]
    assert ended[-1].state is TrialState.TEARING_DOWN and ended[-1].ended_as == "SUCCEEDED"
    assert not done.record.configurations[0].torn_down


def test_a_search_trial_that_ended_after_the_searchs_last_stored_state_is_not_run_again(
) -> None:
    plan = Plan(load_study(SEARCH, file="peak.yaml"))
    mesh = _Mesh(benchmarks=_Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    first = _run(mesh, plan)
    # The same experiment as a crash could leave it: the first two trials stored as ended,
    # the search's stored state from before the second one was recorded.
    state = RateSearch.from_dict(first.record.searches[0].state).to_dict()
    state["trials"] = state["trials"][:1]
    kept = first.record.trials[:2]
    record = _record(plan, trials=kept).with_search(
        SearchRun(0, "peak", 0, state=state))
    again = _Mesh(benchmarks=_Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    for t in kept:
        again.benchmarks.add(f"{EID}-t{t.n}-a0", t.level, C.BENCHMARK_STATE_SUCCEEDED)
    resumed = _run(again, plan, record)
    assert [t.level for t in resumed.record.trials] == [t.level for t in first.record.trials]
    assert f"{EID}-t1-a0" not in _bench_request_ids(again)  # the second rate was not re-run
    assert resumed.record.searches[0].best_rate == first.record.searches[0].best_rate


def test_a_search_rate_the_generator_could_not_send_is_not_met() -> None:
    class Short(_Benchmarks):  # the load reaches 90 % of any rate above 1,500 req/s
        @staticmethod
        def figures(rate: float) -> dict[str, Any]:
            achieved = rate if rate <= 1500.0 else rate * 0.9
            return {**_Benchmarks.figures(rate), "achieved_rate": achieved}

    mesh = _Mesh(benchmarks=Short(slo_met=lambda rate: True))  # the SLO alone: met everywhere
    done = _run(mesh, Plan(load_study(SEARCH, file="peak.yaml")))
    [search] = done.record.searches
    assert search.best_rate is not None and search.best_rate <= 1500.0 < search.failed_rate

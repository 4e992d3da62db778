"""Review findings on the ExperimentService: hostile studies, cancel and shutdown races, the
store's per-change cost, the report's cost, the watch's shared conversion and the CLI's errors.

The manager runs over a fake mesh: `Remote` whose stubs' methods are their names, answered in
memory; WatchBenchmark never ends (a trial stays BENCHMARKING until cancelled) and DeleteService
can be held open by a gate, to catch a run in its wind-down."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aifb.experiment import charts
from aifb.experiment.convert import study_from_proto
from aifb.experiment.manager import ExperimentManager
from aifb.experiment.model import ExperimentRecord, ExperimentState, Trial, TrialState
from aifb.experiment.remote import Remote
from aifb.experiment.servicer import ExperimentServicer
from aifb.experiment.store import ExperimentStore
from aifb.experiment.study import load_study
from aifb.mesh.auth import Principal, current_principal
from aifb.mesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from aifb.v1 import client_pb2 as C
from aifb.v1 import experiment_pb2 as E
from aifb.v1 import server_pb2 as S

pytestmark = pytest.mark.unit

ALICE = Principal(user="alice", token="alice-token")
STUDY = """\
name: one
services:
  - name: web
    recipe: nginx
workloads:
  - name: open
    workload: http
    load: {duration: 5s}
    rates: [100]
"""


# -- the fake mesh ------------------------------------------------------------------------------
class _Stub:
    def __init__(self, service: str) -> None:
        self.service = service

    def __getattr__(self, name: str) -> str:
        return name


class _Channel:
    def _method(self, path: str, **kw: Any) -> str:
        return path.rsplit("/", 1)[-1]

    unary_unary = unary_stream = stream_unary = stream_stream = _method


class _Mesh(Remote):
    def __init__(self) -> None:
        super().__init__("fake:0")
        self.render_gate: asyncio.Event | None = None
        self.delete_gate: asyncio.Event | None = None
        self.deleting = False
        self.rendering = False
        self.deleted: list[str] = []
        self.benchmarks = 0

    @property
    def server(self) -> Any:
        return _Stub("ServerService")

    @property
    def bench(self) -> Any:
        return _Stub("BenchmarkService")

    def channel(self) -> Any:
        return _Channel()

    async def call(self, method: Any, request: Any, token: str, *,
                   timeout: float = 30.0) -> Any:
        if method == "RenderService":
            await asyncio.sleep(0)
            self.rendering = True
            if self.render_gate is not None:
                await self.render_gate.wait()
            return S.RenderServiceResponse()
        if method == "CreateBenchmark":
            if request.validate_only:
                return C.CreateBenchmarkResponse()
            self.benchmarks += 1
            return C.CreateBenchmarkResponse(benchmark=C.Benchmark(
                name=f"benchmarks/{self.benchmarks:012x}", state=C.BENCHMARK_STATE_RUNNING))
        if method == "GetBenchmark":
            return C.GetBenchmarkResponse(benchmark=C.Benchmark(
                name=request.name, state=C.BENCHMARK_STATE_RUNNING))
        if method == "CreateService":
            return S.CreateServiceResponse(service=S.Service(name="services/00000000000a"))
        if method == "DeleteService":
            self.deleting = True
            if self.delete_gate is not None:
                await self.delete_gate.wait()
            self.deleted.append(request.name)
            return S.DeleteServiceResponse()
        if method == "CancelBenchmark":
            return C.CancelBenchmarkResponse()
        if method == "GetServiceLogs":
            return S.GetServiceLogsResponse()
        if method == "QueryMetrics":
            raise PermissionDenied("the operator's view")
        raise AssertionError(f"unexpected call {method}")

    async def stream(self, method: Any, request: Any, token: str) -> AsyncIterator[Any]:
        if method == "WatchService":
            yield S.WatchServiceResponse(service=S.Service(name=request.name,
                                                           state=S.SERVICE_STATE_READY))
            return
        assert method == "WatchBenchmark", method
        yield C.WatchBenchmarkResponse(benchmark=C.Benchmark(
            name=request.name, state=C.BENCHMARK_STATE_RUNNING))
        await asyncio.Event().wait()  # runs until cancelled


async def _settle() -> None:
    """Let every task that can run go as far as it can (the fakes do no I/O: a few loop turns
    take each to its next wait)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.01)


def _manager(tmp_path: Path, mesh: _Mesh | None = None) -> tuple[ExperimentManager, _Mesh]:
    mesh = mesh or _Mesh()
    return ExperimentManager(ExperimentStore(tmp_path / "experiments"), mesh), mesh


def _benchmarking(manager: ExperimentManager, name: str) -> Callable[[], bool]:
    return lambda: manager.get(ALICE, name).trials[0].state is TrialState.BENCHMARKING


# -- cancel and shutdown ----------------------------------------------------------------------
def test_a_second_cancel_during_the_wind_down_still_ends_cancelled_with_nothing_deployed(
        tmp_path: Path) -> None:
    async def main() -> None:
        manager, mesh = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        await _until(_benchmarking(manager, x.name))
        mesh.delete_gate = asyncio.Event()
        first = asyncio.create_task(manager.cancel(ALICE, x.name))
        await _until(lambda: mesh.deleting)
        second = asyncio.create_task(manager.cancel(ALICE, x.name))  # the user asks again
        await _settle()
        mesh.delete_gate.set()
        await asyncio.gather(first, second)
        await _until(lambda: manager.get(ALICE, x.name).terminal, 2)
        assert manager.get(ALICE, x.name).state is ExperimentState.CANCELLED
        assert mesh.deleted == ["services/00000000000a"]
        await manager.close()

    asyncio.run(main())


def test_a_cancel_while_the_run_records_that_it_started_ends_cancelled(tmp_path: Path) -> None:
    async def main() -> None:
        manager, _ = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        # A watcher being woken holds the condition's lock for a moment: the run's first
        # commit waits for it there, before it is inside the part that handles a cancel.
        await manager._changed.acquire()
        await asyncio.sleep(0)
        cancel = asyncio.create_task(manager.cancel(ALICE, x.name))
        await _settle()
        manager._changed.release()
        await cancel
        await _until(lambda: manager.get(ALICE, x.name).terminal, 2)
        assert manager.get(ALICE, x.name).state is ExperimentState.CANCELLED
        await manager.close()

    asyncio.run(main())


def test_a_cancel_cut_short_by_shutdown_is_finished_at_the_next_start(tmp_path: Path) -> None:
    async def main() -> None:
        manager, mesh = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        await _until(_benchmarking(manager, x.name))
        mesh.delete_gate = asyncio.Event()
        cancel = asyncio.create_task(manager.cancel(ALICE, x.name))
        await _until(lambda: mesh.deleting)
        await manager.close()  # the service stops while the cancel tears down
        await cancel
        again = ExperimentManager(manager.store, _Mesh())  # the next start, same store
        assert again.recover() == 1
        await _until(lambda: again.get(ALICE, x.name).terminal, 2)
        assert again.get(ALICE, x.name).state is ExperimentState.CANCELLED
        await again.close()

    asyncio.run(main())


def test_two_creates_with_one_request_id_at_once_give_the_same_experiment(
        tmp_path: Path) -> None:
    async def main() -> None:
        manager, _ = _manager(tmp_path)
        study = load_study(STUDY, file="s.yaml")
        a, b = await asyncio.gather(manager.create(ALICE, study, {}, "retry-1"),
                                    manager.create(ALICE, study, {}, "retry-1"))
        assert a.id == b.id
        assert len(manager.store.owned_by("alice")) == 1
        await manager.close()

    asyncio.run(main())


def test_a_create_still_validating_when_the_service_stops_starts_nothing(
        tmp_path: Path) -> None:
    async def main() -> None:
        manager, mesh = _manager(tmp_path)
        mesh.render_gate = asyncio.Event()
        create = asyncio.create_task(manager.create(ALICE, load_study(STUDY, file="s.yaml"),
                                                    {}, ""))
        await _until(lambda: mesh.rendering)
        await manager.close()
        mesh.render_gate.set()
        with pytest.raises(FailedPrecondition):
            await create
        assert manager.store.owned_by("alice") == []

    asyncio.run(main())


def test_a_watch_cut_by_shutdown_ends_unavailable_so_that_clients_watch_again(
        tmp_path: Path) -> None:
    async def main() -> None:
        manager, _ = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        await _until(_benchmarking(manager, x.name))
        stream = manager.watch(ALICE, x.name)
        record, _, _ = await anext(stream)
        assert not record.terminal
        following = asyncio.create_task(anext(stream))
        await _settle()
        await manager.close()  # the experiment goes on at the next start: not an end (OK)
        with pytest.raises(Unavailable):
            async with asyncio.timeout(2):
                while True:
                    await following
                    following = asyncio.create_task(anext(stream))

    asyncio.run(main())


# -- names ------------------------------------------------------------------------------------
def test_an_experiment_name_with_a_trailing_newline_is_invalid_argument(tmp_path: Path) -> None:
    manager, _ = _manager(tmp_path)
    with pytest.raises(InvalidArgument) as err:
        manager.get(ALICE, "experiments/0123456789ab\n")
    assert err.value.field == "name"


# -- hostile studies --------------------------------------------------------------------------
def _proto_study() -> E.Study:
    msg = E.Study(name="hostile")
    msg.services.add(recipe="nginx")
    msg.workloads.add(workload="http").rates.rates.append(100)
    return msg


def _many_grids(msg: E.Study) -> None:
    for _ in range(100_000):
        msg.services.add()


def _many_workloads(msg: E.Study) -> None:
    for _ in range(100_000):
        msg.workloads.add()


def _many_parameters(msg: E.Study) -> None:
    for i in range(100):
        msg.services[0].parameters.add(name=f"p{i}", values=["1"])


def _many_zip_groups(msg: E.Study) -> None:
    for i in range(100):
        msg.services[0].zip.add(axes=[E.GridAxis(name=f"p{i}", values=["1"])])


def _many_excluded_points(msg: E.Study) -> None:
    msg.services[0].parameters.add(name="a", values=[str(i) for i in range(1024)])
    for _ in range(2000):  # 1024 points x 2000 rules: minutes of CPU with 16 MiB of them
        msg.services[0].exclude.add(values={"a": "1"})


@pytest.mark.parametrize(("spoil", "field"), [
    (_many_grids, "study.services"),
    (_many_workloads, "study.workloads"),
    (_many_parameters, "study.services[0].parameters"),
    (_many_zip_groups, "study.services[0].zip"),
    (_many_excluded_points, "study.services[0].exclude"),
], ids=["grids", "workloads", "parameters", "zip-groups", "excluded-points"])
def test_a_study_listing_too_much_is_refused_naming_the_field(
        spoil: Callable[[E.Study], None], field: str) -> None:
    msg = _proto_study()
    spoil(msg)
    with pytest.raises(InvalidArgument) as err:
        study_from_proto(msg)
    assert err.value.field == field


def test_an_axis_given_twice_in_a_proto_grid_is_refused_not_merged() -> None:
    msg = _proto_study()
    msg.services[0].parameters.add(name="workers", values=["1", "2"])
    msg.services[0].parameters.add(name="workers", values=["4"])
    with pytest.raises(InvalidArgument) as err:
        study_from_proto(msg)
    assert err.value.field == "study.services[0].parameters[1].name"


def test_a_search_start_too_small_for_its_default_min_is_refused_at_create() -> None:
    msg = _proto_study()
    search = msg.workloads[0].search  # (replaces the rates)
    search.slo["p99"] = "50ms"
    search.start = 5e-324  # start / 1024 is 0.0: the search could not be built when it runs
    with pytest.raises(InvalidArgument) as err:
        study_from_proto(msg)
    assert err.value.field == "study.workloads[0].search.start"


def test_excluded_points_leave_exactly_the_other_configurations() -> None:
    study = load_study("""\
name: grid
services:
  - recipe: nginx
    parameters: {a: [1, 2, 3], b: [x, y], c: 1}
    exclude:
      - {a: 1, b: x}
      - {a: 2}
      - {a: 2}
      - {b: y, c: 1, a: 3}
workloads:
  - workload: http
    rates: [1]
""", file="s.yaml")
    assert study.services[0].points() == [("1", "y", "1"), ("3", "x", "1")]


# -- the store's and the report's costs ---------------------------------------------------------
def test_storing_a_change_serializes_only_the_trials_it_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ExperimentStore(tmp_path / "experiments")
    trials = tuple(Trial(n=n, configuration=0, workload="open", level_kind="rate", level=1.0)
                   for n in range(50))
    record = ExperimentRecord(id="0123456789ab", owner="alice",
                              study=load_study(STUDY, file="s.yaml").to_dict(), trials=trials)
    store.insert(record, "")
    serialized: list[int] = []
    to_dict = Trial.to_dict
    monkeypatch.setattr(Trial, "to_dict", lambda t: serialized.append(t.n) or to_dict(t))
    changed = trials[7].evolve(state=TrialState.BENCHMARKING)
    store.update(record.with_trial(changed), changed)
    assert serialized == [7]  # not the 50 of the head as well
    got = store.get(record.id)
    assert got is not None and got.trials[7].state is TrialState.BENCHMARKING
    assert got.revision == record.revision + 1


def _pareto_by_definition(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    points = charts._points(groups)
    front = [p for p in points
             if not any(q["workload"] == p["workload"] and q["rate"] >= p["rate"]
                        and q["p99"] <= p["p99"] and (q["rate"] > p["rate"] or q["p99"] < p["p99"])
                        for q in points)]
    return sorted(front, key=lambda p: (p["workload"], p["rate"]))


def test_the_pareto_front_is_the_definitions_on_random_points_with_ties() -> None:
    rng = random.Random(7)
    for _ in range(200):
        groups = [{"configuration": i, "workload": rng.choice("ab"), "level": float(i),
                   "figures": {"achieved_rate": {"mean": float(rng.randint(1, 6))},
                               "latency_p99_seconds": {"mean": rng.randint(1, 6) / 100}}}
                  for i in range(rng.randint(0, 25))]
        assert charts.pareto_front(groups) == _pareto_by_definition(groups)


def test_a_report_is_rendered_off_the_event_loop(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        manager, _ = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        where: list[int] = []
        monkeypatch.setattr("aifb.experiment.manager.render_report",
                            lambda *a: where.append(threading.get_ident()) or b"{}")
        assert await manager.report(ALICE, x.name, "json") == b"{}"
        assert where and where[0] != threading.get_ident()
        await manager.close()

    asyncio.run(main())


def test_watchers_of_one_experiment_share_one_conversion_per_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aifb.experiment import servicer as servicer_module

    converted: list[int] = []
    real = servicer_module.experiment_to_proto

    def counting(record: ExperimentRecord) -> E.Experiment:
        converted.append(record.revision)
        return real(record)

    monkeypatch.setattr(servicer_module, "experiment_to_proto", counting)

    async def main() -> None:
        manager, _ = _manager(tmp_path)
        x = await manager.create(ALICE, load_study(STUDY, file="s.yaml"), {}, "")
        await _until(_benchmarking(manager, x.name))
        servicer = ExperimentServicer(manager)
        current_principal.set(ALICE)
        streams = [servicer.WatchExperiment(E.WatchExperimentRequest(name=x.name), None)
                   for _ in range(3)]  # type: ignore[arg-type]
        firsts = [await anext(s) for s in streams]
        assert {m.experiment.name for m in firsts} == {x.name}
        assert len(converted) == 1  # three streams, one record: one conversion
        for s in streams:
            await s.aclose()
        await manager.close()

    asyncio.run(main())


# -- the CLI ----------------------------------------------------------------------------------
class _CliChannel:
    """A sync channel whose ExperimentService answers GetExperimentReport with `content`."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def unary_unary(self, path: str, **kw: Any) -> Callable[..., Any]:
        return lambda request, **_: E.GetExperimentReportResponse(
            format=request.format, content=self.content)

    unary_stream = stream_unary = stream_stream = unary_unary


def _cli(args: list[str], content: bytes = b"{}\n") -> Any:
    from aifb.cli.context import CliState
    from aifb.cli.experiment import app

    state = CliState(_channel=_CliChannel(content))  # type: ignore[arg-type]
    return CliRunner().invoke(app, args, obj=state)


def test_a_report_that_cannot_be_written_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    result = _cli(["report", "0123456789ab", "--out", str(tmp_path / "no-such-dir" / "r.json")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert "error:" in result.stderr and "--out" in result.stderr


def test_the_trials_table_shows_a_configuration_key_with_brackets_as_written() -> None:
    import io

    from rich.console import Console

    from aifb.cli.experiment import _table

    x = E.Experiment(name="experiments/0123456789ab", state=E.EXPERIMENT_STATE_SUCCEEDED,
                     configurations=[E.Configuration(index=0, key="web path=[/]")],
                     searches=[E.SearchOutcome(configuration=0, workload="peak",
                                               best_rate=50, reason="[bold]converged")])
    out = io.StringIO()
    Console(file=out, width=200).print(_table(x))
    assert "web path=[/] / peak" in out.getvalue()
    assert "[bold]converged" in out.getvalue()

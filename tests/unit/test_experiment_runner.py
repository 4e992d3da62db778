"""ExperimentRun's orchestration over a fake mesh (no processes, no sockets): trial states in
order, one deployment per configuration deleted once, figures from the benchmark's report,
deploy failures (continue and abort), resuming after a crash (a finished benchmark read, a lost
one run again, a teardown finished, a recorded failure still aborting), a rate search, and a
spent time budget.

The fake mesh is in `tests/unit/experiment_mesh.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    SearchRun,
    TrialState,
)
from aifb.experiment.plan import Plan
from aifb.experiment.runner import Aborted
from aifb.experiment.search import RateSearch
from aifb.experiment.study import load_study
from aifb.mesh.errors import Unavailable
from aifb.v1 import client_pb2 as C
from aifb.v1 import server_pb2 as S
from tests.unit.experiment_mesh import (
    EID,
    LOST,
    SEARCH,
    TERMINAL,
    TOKEN,
    Benchmarks,
    Mesh,
    Servers,
    bench_request_ids,
    grid_plan,
    record_of,
    run,
    runner_of,
)

pytestmark = pytest.mark.unit


# -- the tests ------------------------------------------------------------------------------------
def test_each_trial_goes_pending_deploying_benchmarking_tearing_down_succeeded() -> None:
    plan = grid_plan()
    mesh = Mesh()
    done = run(mesh, plan)
    s = TrialState
    # trials 0, 1 on configuration 0, then 2, 3 on configuration 1
    first = [s.PENDING, s.DEPLOYING, s.BENCHMARKING, s.SUCCEEDED]
    last = [s.PENDING, s.BENCHMARKING, s.SUCCEEDED, s.TEARING_DOWN, s.SUCCEEDED]
    assert done.states == {0: first, 1: last, 2: first, 3: last}
    assert all(t.state is s.SUCCEEDED and t.ended_as == "" and t.slo_met
               for t in done.record.trials)


def test_each_configuration_is_created_once_and_deleted_once() -> None:
    plan = grid_plan()
    mesh = Mesh()
    done = run(mesh, plan)
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
    plan = grid_plan()
    mesh = Mesh()
    done = run(mesh, plan)
    assert bench_request_ids(mesh) == [f"{EID}-t{n}-a0" for n in range(4)]
    assert [dict(r.labels) for r in mesh.benchmarks.creates] == [
        {"experiment": EID, "trial": str(n)} for n in range(4)]
    assert [r.load.rate for r in mesh.benchmarks.creates] == [100.0, 200.0, 100.0, 200.0]
    for trial in done.record.trials:
        assert trial.benchmark == mesh.benchmarks.by_request[f"{EID}-t{trial.n}-a0"]
        report = Benchmarks.figures(trial.level)
        assert trial.figures["achieved_rate"] == pytest.approx(report["achieved_rate"])
        assert trial.figures["error_ratio"] == pytest.approx(0.001)
        assert trial.figures["latency_p50_seconds"] == pytest.approx(trial.level / 1e5)
        assert trial.figures["latency_p99_seconds"] == pytest.approx(trial.level / 1e4)
        assert "cpu_cores" not in trial.figures  # the collector had no samples
        assert trial.start_time <= trial.end_time
    assert done.progress == [f"experiments/{EID}/trials/{n}" for n in range(4)]


def test_a_configuration_that_fails_to_deploy_skips_its_trials_and_the_next_one_runs() -> None:
    plan = grid_plan()
    mesh = Mesh(Servers(fail={0: "the job exited with code 1"}), collector_denies=True)
    done = run(mesh, plan)
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
    assert bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    # the failed deployment is deleted too (the server keeps its record and logs until then)
    assert sorted(mesh.servers.deleted) == sorted(mesh.servers.services)
    # a collector that refuses QueryMetrics costs the trials their usage figures only
    assert mesh.count("QueryMetrics") >= 2
    assert all("cpu_cores" not in t.figures and t.figures for t in trials[2:])


@pytest.mark.parametrize(("parallel", "failing"), [(1, 0), (2, 0), (2, 1)])
def test_on_failure_abort_raises_aborted_and_leaves_nothing_pending_or_deployed(
        parallel: int, failing: int) -> None:
    plan = grid_plan(parallel=parallel, on_failure="abort")
    mesh = Mesh(Servers(fail={failing: "the job exited with code 1"}))
    done, runner = runner_of(mesh, plan)
    with pytest.raises(Aborted, match=f"configuration {failing} failed to deploy"):
        asyncio.run(runner.run())
    assert not [t for t in done.record.trials if not t.state.terminal]
    failed = [t for t in done.record.trials if t.configuration == failing]
    assert all(t.state is TrialState.SKIPPED for t in failed)
    assert sorted(mesh.servers.deleted) == sorted(mesh.servers.services)
    assert all(c.torn_down for c in done.record.configurations if c.service)
    assert not [b for b in mesh.benchmarks.benchmarks.values() if b.state not in TERMINAL]


def _left_by_a_crash(plan: Plan, servers: Servers, trials: dict[int, tuple[TrialState, str]],
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
    return record_of(plan, trials=crashed,
                   configurations=[ConfigurationRun(0, service=service)])


def test_a_resumed_run_reads_a_finished_benchmark_reuses_the_service_and_runs_the_rest(
) -> None:
    plan = grid_plan()
    servers, benchmarks = Servers(), Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_SUCCEEDED)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.BENCHMARKING, t1)})
    service = record.configurations[0].service
    mesh = Mesh(servers, benchmarks, collector_denies=True)
    done = run(mesh, plan, record)
    trials = done.record.trials
    assert trials[0] == record.trials[0] and done.states[0] == [TrialState.SUCCEEDED]
    assert trials[1].state is TrialState.SUCCEEDED and trials[1].benchmark == t1
    assert trials[1].figures["achieved_rate"] == pytest.approx(200.0 * 0.99)  # its report's
    assert trials[1].start_time == 1001.0  # the trial's, not the resumed run's
    assert TrialState.PENDING not in done.states[1]
    assert bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    # CreateService again with the same request id: the same service, no second one
    assert [c.request_id for c in servers.creates] == [f"{EID}-c0", f"{EID}-c1"]
    assert done.record.configurations[0].service == service and len(servers.services) == 2
    assert sorted(servers.deleted) == sorted(servers.services)
    assert [t.state for t in trials] == [TrialState.SUCCEEDED] * 4


def test_a_benchmark_lost_to_a_restart_runs_again_as_attempt_1() -> None:
    plan = grid_plan()
    servers, benchmarks = Servers(), Benchmarks()
    lost = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_FAILED, LOST)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.BENCHMARKING, lost)})
    mesh = Mesh(servers, benchmarks)
    done = run(mesh, plan, record)
    trial = done.record.trials[0]
    assert trial.state is TrialState.SUCCEEDED and trial.attempt == 1
    assert trial.benchmark == benchmarks.by_request[f"{EID}-t0-a1"] != lost
    assert trial.figures["achieved_rate"] == pytest.approx(100.0 * 0.99)
    assert bench_request_ids(mesh) == [f"{EID}-t0-a1", f"{EID}-t1-a0", f"{EID}-t2-a0",
                                        f"{EID}-t3-a0"]
    assert [t.state for t in done.record.trials] == [TrialState.SUCCEEDED] * 4


def test_a_trial_left_tearing_down_ends_as_it_was_once_the_deployment_is_deleted() -> None:
    plan = grid_plan()
    servers, benchmarks = Servers(), Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_SUCCEEDED)
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.TEARING_DOWN, t1)})
    service = record.configurations[0].service
    mesh = Mesh(servers, benchmarks)
    done = run(mesh, plan, record)
    trial = done.record.trials[1]
    assert done.states[1] == [TrialState.TEARING_DOWN, TrialState.SUCCEEDED]
    assert trial == record.trials[1].evolve(state=TrialState.SUCCEEDED, ended_as="")
    assert servers.deleted.count(service) == 1
    assert done.record.configurations[0].torn_down
    # configuration 0 is neither deployed nor benchmarked again; configuration 1 runs
    assert [c.request_id for c in servers.creates] == [f"{EID}-c1"]
    assert bench_request_ids(mesh) == [f"{EID}-t2-a0", f"{EID}-t3-a0"]
    assert [t.state for t in done.record.trials] == [TrialState.SUCCEEDED] * 4


def test_a_rate_search_runs_the_trials_it_asks_for_and_ends_within_tolerance_below_the_peak(
) -> None:
    plan = Plan(load_study(SEARCH, file="peak.yaml"))
    assert plan.initial_trials() == []  # a search's trials are numbered as it asks
    mesh = Mesh(benchmarks=Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    done = run(mesh, plan)
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
    assert bench_request_ids(mesh) == [f"{EID}-t{n}-a0" for n in range(len(asked))]
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
    plan = grid_plan(budget="60s")
    mesh = Mesh()
    done = run(mesh, plan, record_of(plan, start_time=time.time() - 86400))
    assert mesh.calls == []  # nothing deployed, nothing benchmarked
    assert all(t.state is TrialState.SKIPPED and "budget" in t.state_message
               for t in done.record.trials)
    assert all(not c.service for c in done.record.configurations)


def test_a_deploy_failure_recorded_before_a_restart_still_aborts_the_experiment() -> None:
    plan = grid_plan(on_failure="abort")
    servers = Servers()
    # configuration 0 failed and its trials were skipped; the process stopped while deleting
    # its deployment, before the abort reached configuration 1
    service = servers.add(f"{EID}-c0", 0, S.SERVICE_STATE_FAILED)
    initial = plan.initial_trials()
    skipped = [initial[n].evolve(state=TrialState.SKIPPED, end_time=1000.0,
                                 state_message="configuration 0 failed to deploy: boom")
               for n in (0, 1)]
    record = record_of(plan, trials=skipped, configurations=[
        ConfigurationRun(0, service=service, failure="boom")])
    mesh = Mesh(servers)
    done, runner = runner_of(mesh, plan, record)
    with pytest.raises(Aborted, match="configuration 0 failed to deploy"):
        asyncio.run(runner.run())
    assert servers.creates == [] and mesh.benchmarks.creates == []  # configuration 1 never ran
    assert servers.deleted == [service] and done.record.configurations[0].torn_down
    assert all(t.state is TrialState.SKIPPED for t in done.record.trials)
    assert done.record.trials[2].state_message.startswith("the experiment was aborted")


def test_a_trial_failure_recorded_before_a_restart_still_aborts_the_experiment() -> None:
    plan = grid_plan(on_failure="abort")
    servers, benchmarks = Servers(), Benchmarks()
    t0 = benchmarks.add(f"{EID}-t0-a0", 100.0, C.BENCHMARK_STATE_SUCCEEDED)
    t1 = benchmarks.add(f"{EID}-t1-a0", 200.0, C.BENCHMARK_STATE_FAILED, "connection refused")
    # trial 1 failed; the process stopped while deleting configuration 0's deployment
    record = _left_by_a_crash(plan, servers, {0: (TrialState.SUCCEEDED, t0),
                                              1: (TrialState.TEARING_DOWN, t1)},
                              ended_as=TrialState.FAILED)
    mesh = Mesh(servers, benchmarks)
    done, runner = runner_of(mesh, plan, record)
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

    class Cut(Benchmarks):  # the first stream of each run ends while it is still RUNNING
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

    mesh = Mesh(benchmarks=Cut())
    done = run(mesh, grid_plan())
    assert {t.state for t in done.record.trials} == {TrialState.SUCCEEDED}
    assert len(mesh.benchmarks.creates) == len(done.record.trials)  # followed, not rerun


def test_a_deployment_that_cannot_be_deleted_fails_the_run_instead_of_leaking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck(Servers):
        def DeleteService(self, req: S.DeleteServiceRequest) -> S.DeleteServiceResponse:
            self.deleted.append(req.name)
            raise Unavailable("the scheduler does not answer")

    async def no_wait(delay: float) -> None:  # the retries' backoff, without the wait
        return None

    monkeypatch.setattr("aifb.experiment.runner.asyncio.sleep", no_wait)
    mesh = Mesh(servers=Stuck())
    done, runner = runner_of(mesh, grid_plan())
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
    mesh = Mesh(benchmarks=Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    first = run(mesh, plan)
    # The same experiment as a crash could leave it: the first two trials stored as ended,
    # the search's stored state from before the second one was recorded.
    state = RateSearch.from_dict(first.record.searches[0].state).to_dict()
    state["trials"] = state["trials"][:1]
    kept = first.record.trials[:2]
    record = record_of(plan, trials=kept).with_search(
        SearchRun(0, "peak", 0, state=state))
    again = Mesh(benchmarks=Benchmarks(slo_met=lambda rate: rate <= 1000.0))
    for t in kept:
        again.benchmarks.add(f"{EID}-t{t.n}-a0", t.level, C.BENCHMARK_STATE_SUCCEEDED)
    resumed = run(again, plan, record)
    assert [t.level for t in resumed.record.trials] == [t.level for t in first.record.trials]
    assert f"{EID}-t1-a0" not in bench_request_ids(again)  # the second rate was not re-run
    assert resumed.record.searches[0].best_rate == first.record.searches[0].best_rate


def test_a_search_rate_the_generator_could_not_send_is_not_met() -> None:
    class Short(Benchmarks):  # the load reaches 90 % of any rate above 1,500 req/s
        @staticmethod
        def figures(rate: float) -> dict[str, Any]:
            achieved = rate if rate <= 1500.0 else rate * 0.9
            return {**Benchmarks.figures(rate), "achieved_rate": achieved}

    mesh = Mesh(benchmarks=Short(slo_met=lambda rate: True))  # the SLO alone: met everywhere
    done = run(mesh, Plan(load_study(SEARCH, file="peak.yaml")))
    [search] = done.record.searches
    assert search.best_rate is not None and search.best_rate <= 1500.0 < search.failed_rate

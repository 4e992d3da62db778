"""A study survives the trip through `aifb.v1.Study` unchanged; a bad proto study is refused
with an error naming `study.<field>`; an experiment record becomes `aifb.v1.Experiment` with its
configurations, trials (names, states, figures) and searches."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aifb.experiment.convert import experiment_to_proto, study_from_proto, study_to_proto
from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    ExperimentState,
    SearchRun,
    Trial,
    TrialState,
)
from aifb.experiment.study import Study, load_study
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from aifb.v1 import experiment_pb2 as E

pytestmark = pytest.mark.unit

RICH = """\
name: rich-study
description: every corner of a study
services:
  - name: web
    recipe: nginx
    parameters: {worker_processes: [1, 2, 4], port: 0}
    resources: {memory: [1G, 2G], time: 30, partition: debug}
    zip:
      - {threads: [1, 2], cpus: [1, 2]}
    exclude:
      - {worker_processes: 4, memory: 1G}
  - recipe: vllm
    parameters: {model: tiny, dtype: [half, float]}
workloads:
  - name: open
    workload: http
    parameters: {path: /}
    load:
      duration: 5s
      warmup: 500ms
      cooldown: 1s
      arrival: poisson
      error_budget: 2%
      burstiness: 1.5
      max_requests: 1000
      slo: {p99: 50ms, errors: 1%}
    rates: [10, 20.5]
  - name: closed
    workload: http
    load: {engine: spark, spark_master: "local[2]", partitions: 4, workers: 2}
    concurrencies: [1, 8]
  - name: sat
    workload: openai-chat
    load: {record_samples: true}
    sweep: {max_concurrency: 32}
  - name: peak
    workload: http
    load: {arrival: poisson}
    search: {slo: {p99: 100ms}, start: 50, min: 5, max: 500, tolerance: 0.1, max_trials: 8}
repeats: 3
seed: 42
objective: {minimize: latency_p99}
limits: {parallel_deployments: 2, deploy_timeout: 5m, trial_timeout: 2m, budget: 3h}
on_failure: abort
"""

SMALL = """\
name: small
services:
  - name: web
    recipe: nginx
    parameters: {worker_processes: [1, 2]}
workloads:
  - name: http
    workload: http
    rates: [100]
  - name: peak
    workload: http
    search: {slo: {p99: 50ms}, start: 10}
"""


def _rich() -> Study:
    return load_study(RICH, file="t.yaml")


def test_a_rich_study_comes_back_from_its_proto_equal() -> None:
    study = _rich()
    back = study_from_proto(study_to_proto(study))
    assert back.to_dict() == study.to_dict()
    assert back == study


def test_a_study_with_the_defaults_comes_back_from_its_proto_equal() -> None:
    study = load_study(SMALL, file="t.yaml")
    assert study_from_proto(study_to_proto(study)).to_dict() == study.to_dict()


def test_the_proto_of_a_rich_study_carries_each_part_in_its_field() -> None:
    msg = study_to_proto(_rich())
    assert (msg.name, msg.repeats, msg.seed, msg.on_failure) == (
        "rich-study", 3, 42, E.ON_FAILURE_ABORT)
    web = msg.services[0]
    assert [(a.name, list(a.values)) for a in web.parameters] == [
        ("worker_processes", ["1", "2", "4"]), ("port", ["0"])]
    assert [(a.name, list(a.values)) for a in web.zip[0].axes] == [
        ("threads", ["1", "2"]), ("cpus", ["1", "2"])]
    assert dict(web.exclude[0].values) == {"worker_processes": "4", "memory": "1G"}
    open_, closed, sat, peak = msg.workloads
    assert open_.load.mode == C.LOAD_MODE_POISSON
    assert open_.load.error_budget == pytest.approx(0.02)
    assert list(open_.rates.rates) == [10.0, 20.5]
    assert closed.load.engine == C.LOAD_ENGINE_SPARK
    assert list(closed.concurrencies.concurrencies) == [1, 8]
    assert sat.sweep.max_concurrency == 32
    assert (peak.search.start, peak.search.min, peak.search.max, peak.search.max_trials) == (
        50.0, 5.0, 500.0, 8)
    assert (msg.objective.metric, msg.objective.minimize) == ("latency_p99", True)
    assert msg.limits.budget.seconds == 3 * 3600
    assert msg.limits.trial_timeout.seconds == 120


def test_a_proto_study_without_names_names_grids_and_workloads_after_what_they_run() -> None:
    msg = E.Study(name="unnamed")
    msg.services.append(E.ServiceGrid(recipe="nginx"))
    workload = E.StudyWorkload(workload="http")
    workload.sweep.max_concurrency = 8
    msg.workloads.append(workload)
    study = study_from_proto(msg)
    assert [g.name for g in study.services] == ["nginx"]
    assert [w.name for w in study.workloads] == ["http"]
    assert study.repeats == 1
    assert study.objective.maximize == "achieved_rate"
    assert study.on_failure == "continue"


def _valid() -> E.Study:
    return study_to_proto(load_study(SMALL, file="t.yaml"))


def _negative_rate(m: E.Study) -> None:
    m.workloads[0].rates.rates[0] = -5.0


def _unknown_engine(m: E.Study) -> None:
    m.workloads[1].load.engine = 7  # type: ignore[assignment]


def _no_services(m: E.Study) -> None:
    del m.services[:]


def _no_levels(m: E.Study) -> None:
    m.workloads[0].ClearField("rates")


def _unknown_metric(m: E.Study) -> None:
    m.objective.metric = "throughput"


def _exclude_unknown_axis(m: E.Study) -> None:
    m.services[0].exclude.add(values={"threads": "2"})


def _negative_deploy_timeout(m: E.Study) -> None:
    m.limits.deploy_timeout.seconds = -5


@pytest.mark.parametrize(("spoil", "field"), [
    (_negative_rate, "study.workloads[0].rates[0]"),
    (_unknown_engine, "study.workloads[1].load.engine"),
    (_no_services, "study.services"),
    (_no_levels, "study.workloads[0]"),
    (_unknown_metric, "study.objective.maximize"),
    (_exclude_unknown_axis, "study.services[0].exclude[0].threads"),
    (_negative_deploy_timeout, "study.limits.deploy_timeout"),
], ids=["negative-rate", "unknown-engine", "no-services", "no-levels", "unknown-metric",
        "exclude-unknown-axis", "negative-deploy-timeout"])
def test_a_bad_proto_study_is_invalid_argument_naming_the_study_field(
        spoil: Callable[[E.Study], None], field: str) -> None:
    msg = _valid()
    spoil(msg)
    with pytest.raises(InvalidArgument) as err:
        study_from_proto(msg)
    assert err.value.field == field
    assert err.value.message.startswith(f"{field}: ")


def _record() -> ExperimentRecord:
    study = load_study(SMALL, file="t.yaml")
    figures = {"achieved_rate": 99.5, "ok_rate": 99.0, "error_ratio": 0.005,
               "latency_p50_seconds": 0.002, "latency_p99_seconds": 0.011,
               "ttft_p99_seconds": 0.2, "output_tokens_per_second": 1234.0}
    trials = (
        Trial(n=0, configuration=0, workload="http", level_kind="rate", level=100.0,
              state=TrialState.SUCCEEDED, benchmark="benchmarks/b0", figures=figures,
              slo_met=True, start_time=1000.5, end_time=1012.25),
        Trial(n=1, configuration=1, workload="http", level_kind="rate", level=100.0,
              state=TrialState.SKIPPED, state_message="configuration 1 failed to deploy"),
        Trial(n=2, configuration=0, workload="peak", level_kind="search", level=20.0,
              search_step=2, state=TrialState.FAILED, state_message="missed p99",
              figures={"achieved_rate": 19.0}, slo_met=False),
        Trial(n=3, configuration=0, workload="peak", level_kind="search", level=15.0,
              search_step=3, state=TrialState.BENCHMARKING, benchmark="benchmarks/b3"),
    )
    return ExperimentRecord(
        id="0123456789ab", owner="alice", study=study.to_dict(),
        state=ExperimentState.RUNNING, state_message="2 configurations",
        labels={"team": "ml"},
        configurations=(ConfigurationRun(0, service="services/s0"),
                        ConfigurationRun(1, failure="render failed\nlog tail")),
        trials=trials,
        searches=(SearchRun(0, "peak", 0, best_rate=10.0, failed_rate=20.0, converged=False,
                            reason="still bisecting"),),
        create_time=999.0, start_time=1000.0, trace_id="ab" * 16)


def test_experiment_to_proto_carries_the_head_and_the_study() -> None:
    record = _record()
    msg = experiment_to_proto(record)
    assert msg.name == "experiments/0123456789ab"
    assert msg.state == E.EXPERIMENT_STATE_RUNNING
    assert (msg.owner, msg.state_message, dict(msg.labels), msg.trace_id) == (
        "alice", "2 configurations", {"team": "ml"}, "ab" * 16)
    assert msg.create_time.ToNanoseconds() == 999 * 10**9
    assert msg.start_time.ToNanoseconds() == 1000 * 10**9
    assert msg.end_time.ToNanoseconds() == 0
    assert study_from_proto(msg.study).to_dict() == record.study


def test_experiment_to_proto_carries_each_configuration_with_its_key_service_and_failure(
        ) -> None:
    msg = experiment_to_proto(_record())
    assert [(c.index, c.grid, c.recipe, c.key, dict(c.parameters), c.service, c.failure)
            for c in msg.configurations] == [
        (0, "web", "nginx", "web worker_processes=1", {"worker_processes": "1"},
         "services/s0", ""),
        (1, "web", "nginx", "web worker_processes=2", {"worker_processes": "2"}, "",
         "render failed\nlog tail")]


def test_experiment_to_proto_names_trials_and_maps_their_states() -> None:
    msg = experiment_to_proto(_record())
    assert [t.name for t in msg.trials] == [f"experiments/0123456789ab/trials/{n}"
                                            for n in range(4)]
    assert [t.state for t in msg.trials] == [
        E.TRIAL_STATE_SUCCEEDED, E.TRIAL_STATE_SKIPPED, E.TRIAL_STATE_FAILED,
        E.TRIAL_STATE_BENCHMARKING]
    search = msg.trials[2]
    assert (search.configuration, search.workload, search.level_kind, search.level,
            search.search_step, search.state_message) == (
        0, "peak", "search", 20.0, 2, "missed p99")
    first = msg.trials[0]
    assert first.benchmark == "benchmarks/b0"
    assert first.start_time.ToNanoseconds() == 1_000_500_000_000
    assert first.end_time.ToNanoseconds() == 1_012_250_000_000


def test_experiment_to_proto_splits_figures_into_typed_fields_and_extra() -> None:
    msg = experiment_to_proto(_record())
    f = msg.trials[0].figures
    assert (f.achieved_rate, f.ok_rate, f.error_ratio, f.latency_p50_seconds,
            f.latency_p99_seconds) == (99.5, 99.0, 0.005, 0.002, 0.011)
    assert dict(f.extra) == {"ttft_p99_seconds": 0.2, "output_tokens_per_second": 1234.0}
    assert f.slo_met is True
    failed = msg.trials[2].figures
    assert (failed.achieved_rate, failed.slo_met, dict(failed.extra)) == (19.0, False, {})


def test_experiment_to_proto_carries_the_searches() -> None:
    msg = experiment_to_proto(_record())
    assert [(s.configuration, s.workload, s.repeat, s.best_rate, s.failed_rate, s.converged,
             s.reason) for s in msg.searches] == [
        (0, "peak", 0, 10.0, 20.0, False, "still bisecting")]


def test_experiment_to_proto_of_a_search_without_a_result_gives_zero_rates() -> None:
    record = _record()
    record = record.with_search(SearchRun(0, "peak", 0, reason="no rate met the SLO",
                                          done=True))
    (search,) = experiment_to_proto(record).searches
    assert (search.best_rate, search.failed_rate, search.reason) == (
        0.0, 0.0, "no rate met the SLO")

"""What an experiment runs, spelled out from its study: trials numbered configuration by
configuration, then repeat, workload and level; search steps without a number; each level's
BenchmarkService load; resource overrides; the requests checked before deploying; timeouts."""

from __future__ import annotations

import pytest

from aifb.experiment.expand import Level
from aifb.experiment.plan import Plan, load_profile, search_ceiling
from aifb.experiment.study import Study, load_study
from aifb.v1 import client_pb2 as C

pytestmark = pytest.mark.unit

STUDY = """\
name: numbering
services:
  - name: web
    recipe: nginx
    parameters: {worker_processes: [1, 2]}
    resources: {memory: 2G, time: "01:30:00", cpus: [1, 4], partition: debug}
    exclude:
      - {worker_processes: 2, cpus: 4}
workloads:
  - name: open
    workload: http
    parameters: {path: /}
    load: {duration: 5s, warmup: 1s, cooldown: 2s, slo: {p99: 80ms, errors: 1%}}
    rates: [100, 150, 200]
  - name: peak
    workload: http
    load: {slo: {p99: 80ms, errors: 1%}}
    search: {slo: {p99: 50ms}, start: 40, max_trials: 5}
  - name: closed
    workload: http
    concurrencies: [4, 16]
repeats: 2
"""


def _study(text: str = STUDY) -> Study:
    return load_study(text, file="t.yaml")


def _one_workload(workload: str, limits: str = "") -> Study:
    return _study(f"name: one\nservices: [{{recipe: nginx}}]\nworkloads:\n{workload}{limits}")


def test_trials_are_numbered_configuration_by_configuration_then_repeat_workload_level() -> None:
    plan = Plan(_study())
    trials = plan.initial_trials()
    # 3 configurations (one of 4 excluded) x 2 repeats x (3 rates + 2 concurrencies)
    assert len(trials) == 3 * 2 * 5
    assert [t.n for t in trials] == list(range(30))
    per_configuration = [("open", "rate", 100.0), ("open", "rate", 150.0),
                         ("open", "rate", 200.0), ("closed", "concurrency", 4.0),
                         ("closed", "concurrency", 16.0)]
    expected = [(c, r, *level) for c in range(3) for r in range(2)
                for level in per_configuration]
    assert [(t.configuration, t.repeat, t.workload, t.level_kind, t.level)
            for t in trials] == expected
    assert all(t.search_step == 0 and t.state.value == "PENDING" for t in trials)


def test_trial_count_counts_a_search_at_its_max_trials() -> None:
    plan = Plan(_study())
    assert plan.trial_count == 3 * 2 * (3 + 5 + 2)


def test_steps_follow_the_trials_and_a_search_step_has_no_trial_number() -> None:
    plan = Plan(_study())
    steps = plan.steps(1)
    assert [(s.repeat, s.workload.name, s.level.kind, s.trial) for s in steps] == [
        (0, "open", "rate", 10), (0, "open", "rate", 11), (0, "open", "rate", 12),
        (0, "peak", "search", -1),
        (0, "closed", "concurrency", 13), (0, "closed", "concurrency", 14),
        (1, "open", "rate", 15), (1, "open", "rate", 16), (1, "open", "rate", 17),
        (1, "peak", "search", -1),
        (1, "closed", "concurrency", 18), (1, "closed", "concurrency", 19)]
    searches = [s for s in steps if s.search is not None]
    assert [s.search_key for s in searches] == [(1, "peak", 0), (1, "peak", 1)]
    assert [s.workload_index for s in searches] == [1, 1]
    assert all(s.search is None for s in steps if s.trial >= 0)


def test_a_search_step_builds_a_fresh_search_from_the_study() -> None:
    step = next(s for s in Plan(_study()).steps(0) if s.search is not None)
    assert step.search is not None
    first, second = step.search(), step.search()
    assert first is not second
    assert first.next_rate() == 40.0
    # the default bounds: start / 1024 .. start * 1024
    assert first.to_dict()["low"] == pytest.approx(40 / 1024)
    assert first.to_dict()["high"] == pytest.approx(40 * 1024)
    assert first.to_dict()["max_trials"] == 5


def test_load_profile_of_a_rate_is_constant_open_loop_with_the_shared_load() -> None:
    workload = _study().workloads[0]
    profile = load_profile(workload, Level("rate", 150.0))
    assert profile.mode == C.LOAD_MODE_CONSTANT
    assert profile.rate == 150.0
    assert profile.concurrency == 0
    assert profile.duration.ToNanoseconds() == 5 * 10**9
    assert profile.warmup.ToNanoseconds() == 1 * 10**9
    assert profile.cooldown.ToNanoseconds() == 2 * 10**9
    assert dict(profile.slo) == {"p99": "80ms", "errors": "1%"}
    assert profile.engine == C.LOAD_ENGINE_INPROCESS
    assert profile.workers == 1


def test_load_profile_of_a_rate_with_poisson_arrival_is_poisson() -> None:
    study = _one_workload("  - {workload: http, rates: [7.5], load: {arrival: poisson, "
                          "error_budget: 2%, burstiness: 3}}\n")
    profile = load_profile(study.workloads[0], Level("rate", 7.5))
    assert profile.mode == C.LOAD_MODE_POISSON
    assert profile.rate == 7.5
    assert profile.error_budget == pytest.approx(0.02)
    assert profile.burstiness == 3.0


def test_load_profile_of_a_concurrency_is_closed_loop_with_that_many_users() -> None:
    workload = _study().workloads[2]
    profile = load_profile(workload, Level("concurrency", 16.0))
    assert profile.mode == C.LOAD_MODE_CLOSED
    assert profile.concurrency == 16
    assert profile.rate == 0.0


def test_load_profile_of_a_sweep_is_a_sweep_up_to_its_max_concurrency() -> None:
    study = _one_workload("  - {workload: http, sweep: {max_concurrency: 48}}\n")
    profile = load_profile(study.workloads[0], Level("sweep"))
    assert profile.mode == C.LOAD_MODE_SWEEP
    assert profile.concurrency == 48


def test_load_profile_of_a_search_runs_its_rate_with_the_search_slo_over_the_workloads() -> None:
    workload = _study().workloads[1]
    profile = load_profile(workload, Level("search"), rate=320.0)
    assert profile.mode == C.LOAD_MODE_CONSTANT
    assert profile.rate == 320.0
    assert dict(profile.slo) == {"p99": "50ms", "errors": "1%"}
    # the workload's own SLO is left as it was
    assert workload.load.slo == {"p99": "80ms", "errors": "1%"}


def test_load_profile_of_a_search_without_a_rate_starts_at_the_search_start() -> None:
    profile = load_profile(_study().workloads[1], Level("search"))
    assert profile.rate == 40.0


def test_load_profile_of_a_poisson_search_is_poisson() -> None:
    study = _one_workload("  - {workload: http, load: {arrival: poisson}, "
                          "search: {slo: {p99: 50ms}, start: 10}}\n")
    profile = load_profile(study.workloads[0], Level("search"), rate=12.5)
    assert profile.mode == C.LOAD_MODE_POISSON
    assert profile.rate == 12.5


def test_load_profile_carries_the_spark_engine() -> None:
    study = _one_workload("  - {workload: http, rates: [5], load: {engine: spark, "
                          "spark_master: 'local[2]', partitions: 3, workers: 2, "
                          "max_requests: 900, record_samples: true}}\n")
    profile = load_profile(study.workloads[0], Level("rate", 5.0))
    assert profile.engine == C.LOAD_ENGINE_SPARK
    assert profile.spark_master == "local[2]"
    assert profile.partitions == 3
    assert profile.workers == 2
    assert profile.max_requests == 900
    assert profile.record_samples is True


def test_benchmark_request_targets_the_service_at_the_trials_level() -> None:
    plan = Plan(_study())
    step = plan.steps(2)[1]
    trial = plan.initial_trials()[step.trial]
    request = plan.benchmark_request(step, trial, "services/abc")
    assert request.service == "services/abc"
    assert request.workload == "http"
    assert dict(request.parameters) == {"path": "/"}
    assert request.load.rate == trial.level == 150.0


def test_resources_turn_memory_and_time_into_the_resources_message() -> None:
    plan = Plan(_study())
    got = [plan.resources(c) for c in plan.configurations]
    assert [r.cpus for r in got] == [1, 4, 1]
    assert {r.memory_mib for r in got} == {2048}
    assert {r.time_limit_minutes for r in got} == {90}
    assert {r.partition for r in got} == {"debug"}
    # what the grid does not set stays 0: the recipe's default
    assert {(r.nodes, r.gpus, r.account) for r in got} == {(0, 0, "")}
    assert [plan.grid_index(c) for c in plan.configurations] == [0, 0, 0]


def test_validation_requests_check_the_first_and_last_level_of_each_workload_once() -> None:
    requests = Plan(_study()).validation_requests()
    # A search is checked at the lowest and the highest rate it may try (start / 1024, and
    # start x 1024 within one engine's 100,000 req/s).
    assert [(i, r.load.mode, r.load.rate, r.load.concurrency) for i, r in requests] == [
        (0, C.LOAD_MODE_CONSTANT, 100.0, 0), (0, C.LOAD_MODE_CONSTANT, 200.0, 0),
        (1, C.LOAD_MODE_CONSTANT, 40.0 / 1024, 0), (1, C.LOAD_MODE_CONSTANT, 40.0 * 1024, 0),
        (2, C.LOAD_MODE_CLOSED, 0.0, 4), (2, C.LOAD_MODE_CLOSED, 0.0, 16)]
    assert {r.service for _, r in requests} == {"services/000000000000"}
    assert dict(requests[0][1].parameters) == {"path": "/"}
    assert dict(requests[2][1].load.slo) == {"p99": "50ms", "errors": "1%"}


def test_a_search_without_max_stops_at_what_its_engines_can_send() -> None:
    def ceiling(load: str) -> float:
        study = _one_workload("  - {workload: http, load: " + load + ", search: {slo: {p99: "
                              "50ms}, start: 500}}\n")
        return search_ceiling(study.workloads[0])

    assert ceiling("{}") == 100_000.0  # not 500 x 1024
    assert ceiling("{workers: 4}") == 400_000.0
    assert ceiling("{engine: spark, partitions: 8}") == 512_000.0  # start x 1024 is lower


def test_trial_timeout_is_three_trial_lengths_plus_a_minute_by_default() -> None:
    plan = Plan(_study())
    trials = plan.initial_trials()
    assert plan.trial_timeout_s(trials[0]) == 3 * (1 + 5 + 2) + 60.0
    assert plan.trial_timeout_s(trials[3]) == 3 * 10 + 60.0  # closed: the default 10 s


def test_trial_timeout_of_a_sweep_counts_its_eight_steps() -> None:
    plan = Plan(_one_workload("  - {workload: http, load: {duration: 4s}, sweep: {}}\n"))
    assert plan.trial_timeout_s(plan.initial_trials()[0]) == 3 * 4 * 8 + 60.0


def test_trial_timeout_from_the_limits_wins() -> None:
    plan = Plan(_one_workload("  - {workload: http, rates: [1]}\n",
                              "limits: {trial_timeout: 2m}\n"))
    assert plan.trial_timeout_s(plan.initial_trials()[0]) == 120.0


def test_limits_and_abort_come_from_the_study() -> None:
    plan = Plan(_one_workload("  - {workload: http, rates: [1]}\n",
                              "limits: {parallel_deployments: 3, deploy_timeout: 90s, "
                              "budget: 1h}\non_failure: abort\n"))
    assert (plan.limits.parallel_deployments, plan.limits.deploy_timeout_s,
            plan.limits.budget_s) == (3, 90.0, 3600.0)
    assert plan.abort_on_failure is True
    default = Plan(_one_workload("  - {workload: http, rates: [1]}\n"))
    assert (default.limits.budget_s, default.abort_on_failure) == (0.0, False)


def test_each_trial_gets_its_own_seed_and_the_same_one_every_time_the_study_runs() -> None:
    plan, again = Plan(_study()), Plan(_study())
    seeds = [plan.benchmark_request(step, plan.initial_trials()[step.trial], "services/x")
             .load.seed for c in plan.configurations for step in plan.steps(c.index)
             if step.trial >= 0]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [again.benchmark_request(step, again.initial_trials()[step.trial],
                                             "services/x").load.seed
                     for c in again.configurations for step in again.steps(c.index)
                     if step.trial >= 0]

"""What an experiment runs, spelled out from its study: configurations, trials, steps, requests.

Trials are numbered once, at create time, in the order they run: configuration by
configuration; within one, repeat by repeat (repeats interleave, so a slow drift of the machine
spreads over all levels instead of biasing the last repeat), workload by workload, level by
level. A search's trials are numbered as the search asks for them, after all the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from aifb.experiment.expand import Configuration, Level, configurations, levels, trial_timeout
from aifb.experiment.model import Trial
from aifb.experiment.search import RateSearch
from aifb.experiment.study import Study, Workload
from aifb.v1 import client_pb2 as C
from aifb.v1 import common_pb2

__all__ = ["Limits", "Plan", "Step", "load_profile"]

# The target named when the BenchmarkService checks a workload before anything is deployed
# (validate_only: the service is not resolved, only the request's own rules are checked).
_VALIDATION_TARGET = "services/000000000000"
_ENGINES = {"inprocess": C.LOAD_ENGINE_INPROCESS, "spark": C.LOAD_ENGINE_SPARK}
# What one load engine may be asked for (aifb.client.runs.options.MAX_RATE_PER_ENGINE).
MAX_RATE_PER_ENGINE = 100_000.0


@dataclass(frozen=True)
class Limits:
    parallel_deployments: int
    deploy_timeout_s: float
    budget_s: float  # 0: none


@dataclass(frozen=True)
class Step:
    """One thing to run on a deployed configuration: a fixed-level trial, or a search."""

    configuration: int
    workload_index: int
    workload: Workload
    level: Level
    repeat: int
    trial: int = -1  # the fixed-level trial's number
    search: Callable[[], RateSearch] | None = None

    @property
    def search_key(self) -> tuple[int, str, int]:
        return (self.configuration, self.workload.name, self.repeat)


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def load_profile(workload: Workload, level: Level, rate: float = 0.0,
                 seed: int | None = None) -> C.LoadProfile:
    """The BenchmarkService's load for one trial: the workload's shared load, at `level` (a
    search trial: at `rate`, with the search's SLOs added to the workload's), its random
    choices seeded by `seed`."""
    load = workload.load
    poisson = load.arrival == "poisson"
    profile = C.LoadProfile(
        duration=_duration(load.duration), warmup=_duration(load.warmup),
        cooldown=_duration(load.cooldown), error_budget=load.error_budget or 0.0,
        burstiness=load.burstiness, max_requests=load.max_requests, slo=dict(load.slo),
        engine=_ENGINES[load.engine], spark_master=load.spark_master or "",
        partitions=load.partitions, record_samples=load.record_samples, workers=load.workers,
        seed=seed)
    open_loop = C.LOAD_MODE_POISSON if poisson else C.LOAD_MODE_CONSTANT
    if level.kind == "rate":
        profile.mode, profile.rate = open_loop, level.value
    elif level.kind == "concurrency":
        profile.mode, profile.concurrency = C.LOAD_MODE_CLOSED, int(level.value)
    elif level.kind == "sweep":
        assert workload.sweep is not None
        profile.mode, profile.concurrency = C.LOAD_MODE_SWEEP, workload.sweep.max_concurrency
    else:
        assert workload.search is not None
        profile.mode, profile.rate = open_loop, rate or workload.search.start
        profile.slo.update(workload.search.slo)
    return profile


def search_ceiling(workload: Workload) -> float:
    """The highest rate a search tries: its `max`, else start x 1024 within what the load's
    engines can send (the BenchmarkService's bound: 100,000 req/s per worker or partition)."""
    search = workload.search
    assert search is not None
    if search.max is not None:
        return search.max
    load = workload.load
    engines = max(load.partitions, 1) if load.engine == "spark" else load.workers
    return min(search.max_rate, MAX_RATE_PER_ENGINE * engines)


class Plan:
    def __init__(self, study: Study) -> None:
        self.study = study
        self.configurations: list[Configuration] = configurations(study)
        self.limits = Limits(study.limits.parallel_deployments, study.limits.deploy_timeout,
                             study.limits.budget or 0.0)
        self.abort_on_failure = study.on_failure == "abort"
        self.trial_count = study.trial_count()
        self._grids = {g.name: i for i, g in enumerate(study.services)}
        self._workloads = {w.name: w for w in study.workloads}
        self._steps: dict[int, list[Step]] = {}
        self._trials: list[Trial] = []
        for config in self.configurations:
            steps = self._steps[config.index] = []
            for repeat in range(study.repeats):
                for w_index, workload in enumerate(study.workloads):
                    for level in levels(workload):
                        if level.kind == "search":
                            steps.append(Step(config.index, w_index, workload, level, repeat,
                                              search=self._search_factory(workload)))
                            continue
                        n = len(self._trials)
                        self._trials.append(Trial(
                            n=n, configuration=config.index, workload=workload.name,
                            level_kind=level.kind, level=level.value, repeat=repeat))
                        steps.append(Step(config.index, w_index, workload, level, repeat,
                                          trial=n))

    @staticmethod
    def _search_factory(workload: Workload) -> Callable[[], RateSearch]:
        search = workload.search
        assert search is not None
        high = search_ceiling(workload)
        return lambda: RateSearch(start=search.start, low=search.min_rate, high=high,
                                  tolerance=search.tolerance, max_trials=search.max_trials)

    def initial_trials(self) -> list[Trial]:
        """Every fixed-level trial, PENDING, numbered in the order they run."""
        return list(self._trials)

    def steps(self, configuration: int) -> list[Step]:
        return self._steps[configuration]

    def grid_index(self, config: Configuration) -> int:
        return self._grids[config.service]

    def resources(self, config: Configuration) -> common_pb2.Resources:
        return common_pb2.Resources(**config.resource_request())  # type: ignore[arg-type]

    def benchmark_request(self, step: Step, trial: Trial, service: str
                          ) -> C.CreateBenchmarkRequest:
        workload = step.workload
        return C.CreateBenchmarkRequest(
            workload=workload.workload, service=service, parameters=dict(workload.parameters),
            # Each trial its own seed, derived from the study's: the same every time it runs.
            load=load_profile(workload, step.level, trial.level,
                              seed=(self.study.seed * 1_000_003 + trial.n) % (2**61 - 1)))

    def validation_requests(self) -> list[tuple[int, C.CreateBenchmarkRequest]]:
        """One request for the first and one for the last level of each workload (the same
        one, once, when it has one level), to check before anything is deployed."""
        out = []
        for index, workload in enumerate(self.study.workloads):
            shown = levels(workload)
            for level in dict.fromkeys((shown[0], shown[-1])):
                rates = [0.0]  # the level's own
                if workload.search is not None:  # the lowest and highest rate it may try
                    rates = [workload.search.min_rate, search_ceiling(workload)]
                for rate in rates:
                    out.append((index, C.CreateBenchmarkRequest(
                        workload=workload.workload, service=_VALIDATION_TARGET,
                        parameters=dict(workload.parameters),
                        load=load_profile(workload, level, rate))))
        return out

    def trial_timeout_s(self, trial: Trial) -> float:
        return trial_timeout(self.study, self._workloads[trial.workload])

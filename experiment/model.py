"""An experiment's records: the experiment, its configurations' deployments and its trials.

Plain immutable dataclasses (no gRPC here); a change makes a new record with `revision + 1`,
which is how watchers tell news from what they already sent. The study itself is kept as the
study model's plain dict (`aifb.experiment.study.Study.to_dict`), exactly as it was created.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigurationRun", "ExperimentRecord", "ExperimentState", "SearchRun", "Trial",
           "TrialState"]


class ExperimentState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (ExperimentState.SUCCEEDED, ExperimentState.FAILED,
                        ExperimentState.CANCELLED)


class TrialState(enum.StrEnum):
    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    BENCHMARKING = "BENCHMARKING"
    TEARING_DOWN = "TEARING_DOWN"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        return self in (TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED,
                        TrialState.SKIPPED)


@dataclass(frozen=True, slots=True)
class Trial:
    """One benchmark of one configuration at one level (one repeat)."""

    n: int  # its number within the experiment: experiments/<id>/trials/<n>
    configuration: int
    workload: str  # the study workload's name
    level_kind: str  # rate | concurrency | sweep | search
    level: float = 0.0  # requests/s or users (a search trial: the rate it tried)
    repeat: int = 0
    search_step: int = 0  # 1, 2, ... for a search's trials
    state: TrialState = TrialState.PENDING
    state_message: str = ""
    benchmark: str = ""  # benchmarks/<id> once created
    attempt: int = 0  # a benchmark lost to a restart is run again as attempt + 1
    figures: dict[str, float] = field(default_factory=dict)
    slo_met: bool | None = None
    samples: str = ""  # its benchmark's per-request rows (samples.parquet), when recorded
    start_time: float = 0.0
    end_time: float = 0.0
    # While TEARING_DOWN (the last trial of a configuration, its deployment being deleted):
    # the state it ended in, which it takes back once the deployment is gone.
    ended_as: str = ""

    @property
    def finished(self) -> bool:
        """Its benchmark is over: terminal, or only waiting for its deployment's deletion."""
        return self.state.terminal or self.state is TrialState.TEARING_DOWN

    def evolve(self, **changes: Any) -> Trial:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(**{**data, "state": TrialState(data["state"])})


@dataclass(frozen=True, slots=True)
class ConfigurationRun:
    """What happened to one configuration's deployment."""

    index: int
    service: str = ""  # services/<id> once created
    failure: str = ""  # why it could not be deployed (with the tail of its logs)
    torn_down: bool = False

    def evolve(self, **changes: Any) -> ConfigurationRun:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class SearchRun:
    """One rate search (a configuration, a workload, a repeat): its state, as
    `aifb.experiment.search.RateSearch.to_dict` gives it, and its outcome once done."""

    configuration: int
    workload: str
    repeat: int
    state: dict[str, Any] = field(default_factory=dict)
    best_rate: float | None = None
    failed_rate: float | None = None
    converged: bool = False
    reason: str = ""
    done: bool = False

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.configuration, self.workload, self.repeat)

    def evolve(self, **changes: Any) -> SearchRun:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    id: str
    owner: str
    study: dict[str, Any]
    state: ExperimentState = ExperimentState.PENDING
    state_message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    configurations: tuple[ConfigurationRun, ...] = ()
    trials: tuple[Trial, ...] = ()
    searches: tuple[SearchRun, ...] = ()
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    trace_id: str = ""
    request_id: str = ""
    revision: int = 1
    # Set when a cancel is asked for, before the run is stopped: a cancel that a shutdown cuts
    # short is finished at the next start instead of the run being resumed.
    cancel_reason: str = ""

    @property
    def name(self) -> str:
        return f"experiments/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def evolve(self, **changes: Any) -> ExperimentRecord:
        return dataclasses.replace(self, **changes, revision=self.revision + 1)

    def with_trial(self, trial: Trial) -> ExperimentRecord:
        trials = list(self.trials)
        if trial.n < len(trials):
            trials[trial.n] = trial
        else:
            trials.append(trial)
        return self.evolve(trials=tuple(trials))

    def with_configuration(self, run: ConfigurationRun) -> ExperimentRecord:
        runs = list(self.configurations)
        runs[run.index] = run
        return self.evolve(configurations=tuple(runs))

    def with_search(self, run: SearchRun) -> ExperimentRecord:
        searches = [s for s in self.searches if s.key != run.key]
        searches.append(run)
        searches.sort(key=lambda s: s.key)
        return self.evolve(searches=tuple(searches))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "study": self.study,
                "state": self.state.value, "state_message": self.state_message,
                "labels": dict(self.labels),
                "configurations": [dataclasses.asdict(c) for c in self.configurations],
                "trials": [t.to_dict() for t in self.trials],
                "searches": [dataclasses.asdict(s) for s in self.searches],
                "create_time": self.create_time, "start_time": self.start_time,
                "end_time": self.end_time, "trace_id": self.trace_id,
                "request_id": self.request_id, "revision": self.revision,
                "cancel_reason": self.cancel_reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentRecord:
        return cls(
            id=data["id"], owner=data["owner"], study=data["study"],
            state=ExperimentState(data["state"]), state_message=data["state_message"],
            labels=dict(data["labels"]),
            configurations=tuple(ConfigurationRun(**c) for c in data["configurations"]),
            trials=tuple(Trial.from_dict(t) for t in data["trials"]),
            searches=tuple(SearchRun(**s) for s in data["searches"]),
            create_time=data["create_time"], start_time=data["start_time"],
            end_time=data["end_time"], trace_id=data["trace_id"],
            request_id=data["request_id"], revision=data["revision"],
            cancel_reason=data.get("cancel_reason", ""))

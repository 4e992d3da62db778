"""A benchmark run's record: who owns it, what it targets, its options, state, times and last
second of progress (`aifb.client.engine.progress.Progress`); no gRPC here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from aifb.client.engine.progress import Progress
from aifb.client.engine.results import RunState
from aifb.client.runs.options import LoadOptions

__all__ = ["BenchmarkRecord"]


@dataclass(frozen=True, slots=True)
class BenchmarkRecord:
    """One run. Immutable: a change makes a new record with `revision + 1`."""

    id: str
    owner: str
    workload: str
    service: str = ""  # "services/<id>" when the target was a service
    url: str = ""  # the URL the caller gave (when no service)
    resolved_url: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    labels: dict[str, str] = field(default_factory=dict)
    state: RunState = RunState.PENDING
    state_message: str = ""
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    trace_id: str = ""
    request_id: str = ""
    last_progress: Progress | None = None
    revision: int = 1

    @property
    def name(self) -> str:
        return f"benchmarks/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def evolve(self, **changes: Any) -> BenchmarkRecord:
        return dataclasses.replace(self, **changes, revision=self.revision + 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkRecord:
        data = dict(data)
        data["state"] = RunState(data["state"])
        data["load"] = LoadOptions.from_dict(data["load"])
        if data.get("last_progress") is not None:
            data["last_progress"] = Progress.from_dict(data["last_progress"])
        return cls(**data)

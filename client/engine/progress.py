"""One interval of a run's progress, in seconds: what the load engine reports each second, the
Spark hub merges, WatchBenchmark streams, the report's series keeps and the collector receives.
Units change only at the proto edge (`aifb.client.service.convert`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress"]


@dataclass(frozen=True, slots=True)
class Progress:
    second: int
    elapsed_s: float
    requests: int  # completed in this interval
    errors: int
    achieved_rate: float
    target_rate: float
    p50_s: float
    p99_s: float
    in_flight: int
    lag_p99_s: float
    total_requests: int  # completed since the run (or sweep) began
    total_errors: int
    phase: str = ""  # warmup | measure | cooldown; "final": the run's own figures once it ended
    dropped: int = 0  # open loop: sends skipped in this interval (max_in_flight reached)
    cancelled: int = 0  # requests the engine cancelled on purpose in this interval
    total_cancelled: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(**data)

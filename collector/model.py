"""Domain records of the collector: metric series, log streams, spans and push outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Labels",
    "LogBatchIn",
    "LogRecord",
    "LogStreamIn",
    "MetricBatchIn",
    "NotDelivered",
    "PushOutcome",
    "SeriesIn",
    "SeriesOut",
    "Settled",
    "SpanRecord",
]

# Sorted (name, value) pairs; for metrics `__name__` is one of them.
Labels = tuple[tuple[str, str], ...]

KIND_UNTYPED, KIND_GAUGE, KIND_COUNTER = 0, 1, 2


@dataclass(slots=True)
class SeriesIn:
    """One series as an agent sent it (timestamps in ms, values of the same length)."""

    name: str
    labels: dict[str, str]
    timestamps: list[int]
    values: list[float]
    kind: int = KIND_UNTYPED
    help: str = ""


@dataclass(slots=True)
class MetricBatchIn:
    agent_id: str
    sequence: int
    resource: dict[str, str]
    series: list[SeriesIn]


@dataclass(slots=True)
class SeriesOut:
    """A series ready for Prometheus: sorted labels, ascending unique timestamps in range."""

    labels: Labels
    timestamps: list[int]
    values: list[float]
    kind: int = KIND_UNTYPED
    help: str = ""


@dataclass(slots=True)
class LogStreamIn:
    labels: dict[str, str]
    timestamps: list[int]  # ns
    lines: list[str]


@dataclass(slots=True)
class LogBatchIn:
    agent_id: str
    sequence: int
    resource: dict[str, str]
    streams: list[LogStreamIn]


@dataclass(slots=True)
class LogRecord:
    labels: Labels
    timestamp_ns: int
    line: str


class NotDelivered(Exception):
    """A batch the collector accepted but could not forward (it is stopping): it is not
    acknowledged, so its agent keeps it and resends it to the next collector."""


@dataclass(frozen=True, slots=True)
class Settled:
    """How a forwarded batch ended: delivered, with `rejected` of its items refused for good
    by the target (and why)."""

    rejected: int = 0
    message: str = ""


@dataclass(slots=True)
class PushOutcome:
    """What an ack says: duplicate, or how many items were accepted and rejected and why."""

    sequence: int
    duplicate: bool = False
    accepted: int = 0
    rejected: int = 0
    error_message: str = ""


@dataclass(slots=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service_name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, str] = field(default_factory=dict)
    status: str = "UNSET"
    # "" for spans made in this process or exported by the operator: they say truly whose
    # call they were (`enduser.id`). Otherwise the user who exported the span, which may claim
    # anything.
    exported_by: str = ""

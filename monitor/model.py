"""Metric samples as collectors produce them, and their packing into a MetricBatch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aifb.v1 import telemetry_pb2

__all__ = ["COUNTER", "GAUGE", "BatchBuilder", "MetricSet", "Sample", "to_batch"]

GAUGE = telemetry_pb2.METRIC_TYPE_GAUGE
COUNTER = telemetry_pb2.METRIC_TYPE_COUNTER


@dataclass(frozen=True)
class Sample:
    """One value of one series. `timestamp_ms` None means "the collection's time"."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    type: int = GAUGE
    help: str = ""
    timestamp_ms: int | None = None


@dataclass
class MetricSet:
    """What one collection produced. Unknown values are skipped, never recorded as -1."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, name: str, value: float | None, labels: Mapping[str, str] | None = None, *,
            type: int = GAUGE, help: str = "", timestamp_ms: int | None = None) -> None:
        if value is None:
            return
        pairs = tuple(sorted(labels.items())) if labels else ()
        self.samples.append(Sample(name, pairs, float(value), type, help, timestamp_ms))

    def gauge(self, name: str, help: str, value: float | None, **labels: str) -> None:
        self.add(name, value, labels, type=GAUGE, help=help)

    def counter(self, name: str, help: str, value: float | None, **labels: str) -> None:
        self.add(name, value, labels, type=COUNTER, help=help)

    def extend(self, samples: Iterable[Sample]) -> None:
        self.samples.extend(samples)


class BatchBuilder:
    """Packs samples into MetricBatches, reusing each series' name, labels and help.

    Copying a cached prototype is about three times cheaper than building the labels map anew.
    """

    def __init__(self, max_cached: int = 50_000) -> None:
        self._protos: dict[tuple[str, tuple[tuple[str, str], ...]],
                           telemetry_pb2.MetricSeries] = {}
        self._max_cached = max_cached

    def _proto(self, first: Sample) -> telemetry_pb2.MetricSeries:
        key = (first.name, first.labels)
        proto = self._protos.get(key)
        if proto is None:
            if len(self._protos) >= self._max_cached:
                self._protos.clear()
            proto = self._protos[key] = telemetry_pb2.MetricSeries(
                name=first.name, labels=dict(first.labels), type=first.type,  # type: ignore[arg-type]
                help=first.help)
        return proto

    def build(self, samples: Iterable[Sample], timestamp_ms: int,
              resource: Mapping[str, str]) -> telemetry_pb2.MetricBatch:
        """Group samples into series (labels once, packed points ascending by time)."""
        grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[Sample]] = {}
        for s in samples:
            grouped.setdefault((s.name, s.labels), []).append(s)
        batch = telemetry_pb2.MetricBatch(
            resource=telemetry_pb2.TelemetryResource(attributes=dict(resource)))
        for group in grouped.values():
            series = batch.series.add()
            series.MergeFrom(self._proto(group[0]))
            points = sorted((timestamp_ms if s.timestamp_ms is None else s.timestamp_ms, s.value)
                            for s in group)
            series.timestamps_ms.extend(t for t, _ in points)
            series.values.extend(v for _, v in points)
        return batch


def to_batch(samples: Iterable[Sample], timestamp_ms: int,
             resource: Mapping[str, str]) -> telemetry_pb2.MetricBatch:
    """Group samples into series (labels once, packed points ascending by time)."""
    return BatchBuilder().build(samples, timestamp_ms, resource)

"""Metric samples as collectors produce them, and their packing into a MetricBatch."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import itemgetter
from typing import NamedTuple

from aifb.mesh.protowire import varint
from aifb.v1 import telemetry_pb2

_DOUBLE = struct.Struct("<d")
_CHUNK8 = struct.Struct("8s")
_FIRST = itemgetter(0)
_KEY = itemgetter(0, 1)  # a Sample's (name, labels)
_VALUE = itemgetter(2)
_STAMP = itemgetter(5)
Labels = tuple[tuple[str, str], ...]



__all__ = ["COUNTER", "GAUGE", "BatchBuilder", "MetricSet", "Sample", "to_batch"]

GAUGE = telemetry_pb2.METRIC_TYPE_GAUGE
COUNTER = telemetry_pb2.METRIC_TYPE_COUNTER


class Sample(NamedTuple):
    """One value of one series. `timestamp_ms` None means "the collection's time".

    A NamedTuple: a collection makes a few hundred of these, and a tuple is built several
    times faster than a frozen dataclass."""

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
    """Packs samples into MetricBatches, reusing each series' encoded name, labels and help.

    Each series is written as bytes: its cached identity (name, labels, type, help serialized
    once) and its points; the batch is parsed once at the end. That costs about a microsecond
    per series, several times less than adding and filling message objects.
    """

    def __init__(self, max_cached: int = 50_000) -> None:
        self._idents: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._resources: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._max_cached = max_cached
        # Per series: field tag, length and identity of a one-point series whose point
        # header is `_framed_size` bytes (it grows with the timestamp's varint).
        self._framed: dict[tuple[str, Labels], bytes] = {}
        self._framed_size = 0

    def _ident(self, first: Sample) -> bytes:
        key = (first.name, first.labels)
        ident = self._idents.get(key)
        if ident is None:
            if len(self._idents) >= self._max_cached:
                self._idents.clear()
            ident = self._idents[key] = telemetry_pb2.MetricSeries(
                name=first.name, labels=dict(first.labels), type=first.type,  # type: ignore[arg-type]
                help=first.help).SerializeToString()
        return ident

    def _resource(self, resource: Mapping[str, str]) -> bytes:
        key = tuple(resource.items())
        found = self._resources.get(key)
        if found is None:
            if len(self._resources) >= 64:
                self._resources.clear()
            body = telemetry_pb2.TelemetryResource(attributes=dict(resource)).SerializeToString()
            found = self._resources[key] = b"\x1a" + varint(len(body)) + body
        return found

    def build(self, samples: Iterable[Sample], timestamp_ms: int,
              resource: Mapping[str, str]) -> telemetry_pb2.MetricBatch:
        """Group samples into series (labels once, packed points ascending by time)."""
        samples = list(samples)
        # The usual series: one point at the collection time (packed: tag, length, varint).
        stamp = varint(timestamp_ms) if timestamp_ms >= 0 else b""
        one_point = b"\x22" + bytes((len(stamp),)) + stamp + b"\x2a\x08"
        keys = list(map(_KEY, samples))
        if stamp and list(map(_STAMP, samples)).count(None) == len(samples) \
                and len(set(keys)) == len(keys):
            return self._one_point_each(samples, keys, one_point, resource)
        grouped: dict[tuple[str, tuple[tuple[str, str], ...]], list[Sample]] = {}
        for s in samples:
            grouped.setdefault((s.name, s.labels), []).append(s)
        parts = [self._resource(resource)]
        pack = _DOUBLE.pack
        for group in grouped.values():
            first = group[0]
            if len(group) == 1 and first.timestamp_ms is None and stamp:
                body = self._ident(first) + one_point + pack(first.value)
            else:
                points = sorted((timestamp_ms if s.timestamp_ms is None else s.timestamp_ms,
                                 s.value) for s in group)
                body = self._ident(first) + telemetry_pb2.MetricSeries(
                    timestamps_ms=[t for t, _ in points],
                    values=[v for _, v in points]).SerializeToString()
            parts += (b"\x22", varint(len(body)), body)
        return telemetry_pb2.MetricBatch.FromString(b"".join(parts))


    def _one_point_each(self, samples: list[Sample], keys: list[tuple[str, Labels]],
                        one_point: bytes, resource: Mapping[str, str]
                        ) -> telemetry_pb2.MetricBatch:
        """`build` when every sample is its own series at the collection time: each series is
        its cached framed identity, the shared point header and its value, joined at once."""
        framed = self._framed
        if self._framed_size != len(one_point) or len(framed) >= self._max_cached:
            framed.clear()
            self._framed_size = len(one_point)
        heads: list[bytes | None] = list(map(framed.get, keys))
        if None in heads:
            size = len(one_point) + 8
            for i in [i for i, h in enumerate(heads) if h is None]:
                ident = self._ident(samples[i])
                heads[i] = framed[keys[i]] = (b"\x22" + varint(len(ident) + size) + ident)
        values = map(_FIRST, _CHUNK8.iter_unpack(array("d", map(_VALUE, samples)).tobytes()))
        body = b"".join(chain.from_iterable(zip(heads, repeat(one_point), values)))  # type: ignore[arg-type]
        return telemetry_pb2.MetricBatch.FromString(self._resource(resource) + body)


def to_batch(samples: Iterable[Sample], timestamp_ms: int,
             resource: Mapping[str, str]) -> telemetry_pb2.MetricBatch:
    """Group samples into series (labels once, packed points ascending by time)."""
    return BatchBuilder().build(samples, timestamp_ms, resource)

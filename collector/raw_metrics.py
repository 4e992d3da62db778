"""The raw ingest path: an agent's metric batch kept as one bytes object per series.

An agent writes each series as its identity (name, labels, type, help) followed by its packed
timestamps and values; when every series of a batch carries the same number of samples n, the
samples are the last L bytes of each series, L fixed by n. The batch is parsed with
`aifb.wire.metric_raw` (a series is `bytes`), and everything after that is bulk work: numpy
gathers each series' timestamp and value runs from the joined bytes, decodes the 6-byte
timestamp varints (ms from 1971 to 2109), checks them ascending and inside the time window, and
writes the prompb `Sample` fields in one array. A series' identity bytes are a dict key: the
first time they are seen they are parsed with the real message, checked to be exactly one
canonical encoding without samples, and validated (the `Validator`, with its errors); their
sorted label set and encoded series head are kept.

A batch that is anything else (series with different sample counts, help written after the
samples, other timestamps, unsorted or out-of-range samples, limits passed) makes `prepare`
answer None, and the caller takes the next path (`fast_metrics`, then the general one).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, cast

import numpy as np
from google.protobuf.message import DecodeError

from aifb.collector.fast_metrics import PackedPrepared
from aifb.collector.packed import SAMPLE_BYTES, PackedSeries, encode_labels, series_head, varint
from aifb.collector.remote_write import TimeWindow
from aifb.collector.validate import Validator
from aifb.v1 import telemetry_pb2
from aifb.wire import metric_raw_pb2

__all__ = ["RawBatch", "RawMetrics", "read_raw_batch"]

_CACHE_LIMIT = 200_000
_LABEL_SET = attrgetter("labels")
_LABEL_BYTES = attrgetter("label_bytes")
# A 6-byte varint read as a little-endian integer: its continuation bits and its payload.
_STAMP_PARTS = np.dtype([("lo", "<u4"), ("hi", "<u2")])
_CONTINUATIONS, _CONTINUED = np.uint64(0x80_80_80_80_80_80), np.uint64(0x00_80_80_80_80_80)
_PAYLOAD, _TOP = np.uint64(0x7F_7F_7F_7F_7F_7F), np.uint64(40)
# One prompb Sample field (see `aifb.collector.packed.SAMPLE_BYTES`): 0x12 16 0x09 <double>
# 0x10 <6-byte varint>.
_SAMPLE = np.dtype({"names": ["tags", "value", "stamp_tag", "stamp"],
                    "formats": ["S3", "<u8", "u1", "S6"], "offsets": [0, 3, 11, 12],
                    "itemsize": SAMPLE_BYTES})


def _decode(groups: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Varints without their continuation bits (at most six 7-bit groups) as integers."""
    out = groups & np.uint64(0x7F)
    for k in range(1, 6):
        out |= (groups >> np.uint64(k)) & np.uint64(0x7F << (7 * k))
    return out.astype(np.int64)


@dataclass(slots=True)
class RawBatch:
    """A PushMetricsRequest's batch with each series still encoded."""

    agent_id: str
    sequence: int
    resource: bytes
    series: list[bytes]


def read_raw_batch(data: bytes) -> RawBatch | None:
    """The raw view of a serialized PushMetricsRequest, or None when it would not see exactly
    what the real message holds (unknown fields, repeated singular fields, non-minimal
    varints: then the re-encoded size differs from the input's)."""
    try:
        request = metric_raw_pb2.PushMetricsRequestRaw.FromString(data)
    except DecodeError:  # the general path reports it properly
        return None
    request.DiscardUnknownFields()
    if request.ByteSize() != len(data) or not request.HasField("batch"):
        return None
    batch = request.batch
    return RawBatch(batch.agent_id, batch.sequence, batch.resource, batch.series[:])


class _Series:
    """A known series identity: its sorted label set, type and help, and series heads."""

    __slots__ = ("heads", "help", "label_bytes", "labels", "type")

    def __init__(self, labels: tuple[tuple[str, str], ...], kind: int, help_: str) -> None:
        self.labels = labels
        self.type = kind
        self.help = help_
        self.label_bytes = encode_labels(labels)


class _Layout:
    """Where n samples sit at the end of a series: `size` bytes, timestamps then values."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stamps_tag = b"\x22" + varint(6 * n)
        self.values_tag = b"\x2a" + varint(8 * n)
        self.size = len(self.stamps_tag) + 6 * n + len(self.values_tag) + 8 * n
        # Byte positions, counted back from a series' end, of the two tags and two runs.
        self.tags_at = np.concatenate([
            np.arange(len(self.stamps_tag)) - self.size,
            np.arange(len(self.values_tag)) - 8 * n - len(self.values_tag)])
        self.tags = np.frombuffer(self.stamps_tag + self.values_tag, np.uint8)
        self.stamps_at = np.arange(6 * n) - self.size + len(self.stamps_tag)
        self.values_at = np.arange(8 * n) - 8 * n
        self.ident = slice(0, -self.size)


class RawMetrics:
    """Validates and packs raw batches; knows the series identities it has already checked."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self._resources: dict[bytes, dict[str, str]] = {}
        # Per resource: identity bytes -> series; per (resource, n): series -> head.
        self._series: dict[bytes, dict[bytes, _Series]] = {}
        self._heads: dict[tuple[bytes, int], dict[_Series, bytes]] = {}
        self._layouts: dict[int, _Layout] = {}

    def _resource(self, raw: bytes) -> dict[str, str]:
        found = self._resources.get(raw)
        if found is None:
            attrs = telemetry_pb2.TelemetryResource.FromString(raw).attributes
            found = {k: attrs[k] for k in attrs}
            if len(self._resources) >= 1000:
                self._resources.clear()
            self._resources[raw] = found
        return found

    def _layout(self, first: bytes) -> _Layout | None:
        """The layout of the first series' samples (the others must match it)."""
        try:
            series = telemetry_pb2.MetricSeries.FromString(first)
        except DecodeError:
            return None
        n = len(series.timestamps_ms)
        if n == 0 or len(series.values) != n:
            return None
        layout = self._layouts.get(n)
        if layout is None:
            if len(self._layouts) >= 64:
                self._layouts.clear()
            layout = self._layouts[n] = _Layout(n)
        return layout

    def _identity(self, ident: bytes, resource: dict[str, str], index: int) -> _Series | None:
        """First sight of a series identity: exactly one canonical encoding of a series
        without samples (else None), validated like the general path does (raising its
        InvalidArgument)."""
        try:
            series = telemetry_pb2.MetricSeries.FromString(ident)
        except DecodeError:
            return None
        series.DiscardUnknownFields()
        if series.ByteSize() != len(ident) or len(series.timestamps_ms) or len(series.values):
            return None
        labels = {k: series.labels[k] for k in series.labels}
        label_set = self.validator._series_label_set(series.name, labels, resource, index)
        return _Series(label_set, series.type, series.help)

    def prepare(self, batch: RawBatch, now_ms: int | None = None) -> PackedPrepared | None:
        """Validate and pack a whole batch, or None: then use another path."""
        cfg = self.validator.config
        resource = self._resource(batch.resource)
        self.validator._header(batch.agent_id, batch.sequence, resource)
        raws = batch.series
        n_series = len(raws)
        if not n_series or n_series > cfg.max_series_per_batch:
            return None
        layout = self._layout(raws[0])
        if layout is None:
            return None
        n, total = layout.n, n_series * layout.n
        if total > cfg.max_samples_per_batch:
            return None
        lengths = np.fromiter(map(len, raws), np.int64, n_series)
        if int(lengths.min()) <= layout.size:
            return None  # a series with no identity, or samples laid out otherwise
        ends = np.cumsum(lengths)[:, None]
        data = np.frombuffer(b"".join(raws), np.uint8)
        if not np.array_equal(data[ends + layout.tags_at],
                              np.broadcast_to(layout.tags, (n_series, layout.tags.size))):
            return None
        stamps = data[ends + layout.stamps_at].reshape(total, 6)
        parts = stamps.view(_STAMP_PARTS).ravel()
        raw = parts["lo"] | (parts["hi"].astype(np.uint64) << np.uint64(32))
        # Six bytes, one varint: continuation bits on the first five, the last one nonzero.
        if not ((raw & _CONTINUATIONS) == _CONTINUED).all() or not (raw >> _TOP).all():
            return None
        # Without their continuation bits the varints order as the numbers they encode.
        groups = (raw & _PAYLOAD).reshape(n_series, n)
        window = TimeWindow.from_config(cfg, now_ms)
        lasts = _decode(groups[:, -1])
        if (n > 1 and not (groups[:, 1:] > groups[:, :-1]).all()) \
                or int(_decode(groups[:, 0]).min()) < window.oldest \
                or int(lasts.max()) > window.newest:
            return None
        found = self._known(batch.resource)
        cut = layout.ident
        idents = [raw[cut] for raw in raws]
        entries: list[_Series | None] = list(map(found.get, idents))
        if None in entries:
            for i in [i for i, e in enumerate(entries) if e is None]:
                entry = self._identity(idents[i], resource, i)
                if entry is None:
                    return None
                entries[i] = found[idents[i]] = entry
        heads_by_series = self._heads_for(batch.resource, n)
        heads: list[bytes | None] = list(map(heads_by_series.get,
                                             cast("list[_Series]", entries)))
        if None in heads:
            for i in [i for i, h in enumerate(heads) if h is None]:
                entry = entries[i]
                assert entry is not None
                heads[i] = heads_by_series[entry] = series_head(entry.label_bytes,
                                                                SAMPLE_BYTES * n)
        values = data[ends + layout.values_at].reshape(total, 8)
        samples = np.empty(total, _SAMPLE)
        samples["tags"] = b"\x12\x10\x09"
        samples["value"] = values.view("<u8").ravel()  # the bits, NaN payloads included
        samples["stamp_tag"] = 0x10
        samples["stamp"] = stamps.view("S6").ravel()
        step = SAMPLE_BYTES * n
        packed = PackedSeries(list(map(_LABEL_SET, entries)), heads,  # type: ignore[arg-type]
                              [n] * n_series, samples.tobytes(),
                              list(range(0, step * n_series + 1, step)))
        last_values = values.view("<f8").reshape(n_series, n)[:, -1]
        return PackedPrepared(packed, lasts.tolist(), last_values.tolist(), entries, total,
                              list(map(_LABEL_BYTES, entries)))

    def _known(self, resource_key: bytes) -> dict[bytes, _Series]:
        """The series identities already validated under one resource (bounded)."""
        known = self._series.get(resource_key)
        if known is None:
            if len(self._series) >= 1000:
                self._series.clear()
                self._heads.clear()
            known = self._series[resource_key] = {}
        elif len(known) >= _CACHE_LIMIT:
            known.clear()
        return known

    def _heads_for(self, resource_key: bytes, n: int) -> dict[_Series, bytes]:
        heads = self._heads.get((resource_key, n))
        if heads is None:
            if len(self._heads) >= 1000:
                self._heads.clear()
            heads = self._heads[(resource_key, n)] = {}
        elif len(heads) >= _CACHE_LIMIT:
            heads.clear()
        return heads

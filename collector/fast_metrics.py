"""The fast ingest path: a metric batch's wire bytes to packed, validated series in bulk.

An agent's `PushMetricsRequest` is parsed with wire-compatible views (`aifb.wire.telemetry_view`)
that keep label map entries, packed timestamps and packed values as raw bytes: no Python object
per label pair or per sample. The batch is then checked as a whole: every series' timestamps are
6-byte varints (ms from 1971 to 2109) matching its values in number, strictly ascending, inside
the accepted time window. Such a batch is copied straight into prompb `Sample` fields by strided
slice assignments. Label sets are validated the first time they are seen (by the `Validator`,
with its errors) and then found by their raw bytes.

Anything unusual (unknown or duplicated fields, unpacked encodings, unsorted or out-of-range
samples, empty series, limits passed) makes `prepare` answer None, and the caller takes the
general path, which parses the batch with the real messages and handles each case exactly.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import accumulate, compress, count, islice
from operator import attrgetter, ge, itemgetter
from typing import Any, cast

from google.protobuf.message import DecodeError

from aifb.collector.model import Labels
from aifb.collector.packed import SAMPLE_BYTES, PackedSeries, interleave_samples, series_head
from aifb.collector.packed import encode_labels as _encode_labels
from aifb.collector.packed import varint as _varint
from aifb.collector.remote_write import TimeWindow
from aifb.collector.validate import Validator
from aifb.v1 import telemetry_pb2
from aifb.wire import telemetry_view_pb2

__all__ = ["FastMetrics", "MetricView", "PackedPrepared", "read_metric_view"]

_NAME = attrgetter("name")
_LABELS = attrgetter("labels")
_STAMPS = attrgetter("timestamps_ms")
_VALUES = attrgetter("values")
_LABEL_SET = attrgetter("labels")
_LABEL_BYTES = attrgetter("label_bytes")
_FIRST = itemgetter(0)
_EIGHTH = (8).__rfloordiv__
_TIMES6 = (6).__mul__
_TIMES8 = (8).__mul__
_TIMES18 = SAMPLE_BYTES.__mul__
_CACHE_LIMIT = 200_000
_CONTINUATION = bytes(range(0x80, 0x100))
_FINAL_NONZERO = bytes(range(1, 0x80))


@dataclass(slots=True)
class MetricView:
    """A batch parsed by the view messages; `batch` is a `MetricBatchView`."""

    agent_id: str
    sequence: int
    batch: Any


def read_metric_view(data: bytes) -> MetricView | None:
    """The view of a serialized PushMetricsRequest, or None when the view would not see exactly
    what the real message holds (unknown fields, repeated singular fields, non-minimal varints:
    then the re-encoded size differs from the input's)."""
    try:
        request = telemetry_view_pb2.PushMetricsRequestView.FromString(data)
    except DecodeError:  # the general path reports it properly
        return None
    request.DiscardUnknownFields()
    if request.ByteSize() != len(data) or not request.HasField("batch"):
        return None
    batch = request.batch
    return MetricView(batch.agent_id, batch.sequence, batch)


@dataclass(slots=True)
class PackedPrepared:
    """A batch accepted whole by the fast path: every sample of it is accepted."""

    packed: PackedSeries
    last_timestamps: list[int]
    last_values: list[float]
    series: Any  # with .type and .help: read again only for new entries of the local store
    received: int
    keys: list[bytes]  # each series' encoded labels (`packed.label_key`), the store's keys


class _Entry:
    """A known label set: sorted labels and their prompb encoding."""

    __slots__ = ("label_bytes", "labels")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.label_bytes = _encode_labels(labels)


class FastMetrics:
    """Validates and packs metric batch views; knows the label sets it has already checked."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self._resources: dict[bytes, dict[str, str]] = {}
        self._series: dict[bytes, dict[tuple[Any, ...], _Entry]] = {}
        # Series heads by sample count and label set (the usual batch has one sample count).
        self._heads: dict[int, dict[_Entry, bytes]] = {}

    def _resource(self, raw: bytes) -> dict[str, str]:
        found = self._resources.get(raw)
        if found is None:
            attrs = telemetry_pb2.TelemetryResource.FromString(raw).attributes
            found = {k: attrs[k] for k in attrs}
            if len(self._resources) >= 1000:
                self._resources.clear()
            self._resources[raw] = found
        return found

    def _entry(self, name: str, entries: tuple[bytes, ...], resource: dict[str, str],
               index: int) -> _Entry:
        """First sight of a label set: decode its map entries (later keys win, as in a map)
        and validate them like the general path does (raising its InvalidArgument)."""
        raw = b"".join(b"\x0a" + _varint(len(e)) + e for e in entries)
        attrs = telemetry_pb2.TelemetryResource.FromString(raw).attributes
        labels = {k: attrs[k] for k in attrs}
        return _Entry(self.validator._series_label_set(name, labels, resource, index))

    def prepare(self, view: MetricView, now_ms: int | None = None) -> PackedPrepared | None:
        """Validate and pack a whole batch, or None: then use the general path."""
        cfg = self.validator.config
        batch = view.batch
        resource = self._resource(batch.resource)
        self.validator._header(view.agent_id, view.sequence, resource)
        series = batch.series
        n_series = len(series)
        if not n_series or n_series > cfg.max_series_per_batch:
            return None
        # Every per-series step below is a C-level map: no Python bytecode runs per series
        # unless a label set is new.
        stamp_runs = list(map(_STAMPS, series))
        value_runs = list(map(_VALUES, series))
        if set(map(len, stamp_runs)) != {1} or set(map(len, value_runs)) != {1}:
            return None  # a series without samples, or samples in several packed runs
        stamps = list(map(_FIRST, stamp_runs))
        values = list(map(_FIRST, value_runs))
        counts = list(map(_EIGHTH, map(len, values)))
        if (0 in counts or list(map(len, values)) != list(map(_TIMES8, counts))
                or list(map(len, stamps)) != list(map(_TIMES6, counts))):
            return None
        total = sum(counts)
        if total > cfg.max_samples_per_batch:
            return None
        all_stamps = b"".join(stamps)
        # Each 6-byte group must be one varint: exactly one final byte (high bit clear) per
        # group, in its last place, and not zero (that would be a number under 2**35, encoded
        # too long). `translate` with a delete table checks this without a loop in Python.
        if len(all_stamps.translate(None, _CONTINUATION)) != total \
                or all_stamps[5::6].translate(None, _FINAL_NONZERO):
            return None
        flat = telemetry_pb2.MetricSeries.FromString(
            b"\x22" + _varint(len(all_stamps)) + all_stamps).timestamps_ms[:]
        ends = list(accumulate(counts))
        # Strictly ascending within each series: a step that is not up may only happen where
        # the next series starts. Then the first and last samples bound each series.
        if not set(ends).issuperset(compress(count(1), map(ge, flat, islice(flat, 1, None)))):
            return None
        last = [e - 1 for e in ends]
        window = TimeWindow.from_config(cfg, now_ms)
        if min(map(flat.__getitem__, [0, *ends[:-1]])) < window.oldest \
                or max(map(flat.__getitem__, last)) > window.newest:
            return None
        known = self._known(batch.resource)
        keys = list(zip(map(_NAME, series), map(tuple, map(_LABELS, series)), strict=True))
        entries: list[_Entry | None] = list(map(known.get, keys))
        if None in entries:
            for i in [i for i, e in enumerate(entries) if e is None]:
                name, raw_labels = keys[i]
                entries[i] = known[keys[i]] = self._entry(name, raw_labels, resource, i)
        heads_by_count = self._heads
        if len(heads_by_count) >= 64:
            heads_by_count.clear()
        n0 = counts[0]
        if counts.count(n0) == n_series:  # the usual shape: one sample count for all
            by_entry = heads_by_count.setdefault(n0, {})
            if len(by_entry) >= _CACHE_LIMIT:
                by_entry.clear()
            heads: list[bytes | None] = list(map(by_entry.get, cast("list[_Entry]", entries)))
        else:
            heads = [None] * n_series
        if None in heads:
            for i in [i for i, h in enumerate(heads) if h is None]:
                entry, n = entries[i], counts[i]
                assert entry is not None
                head = heads[i] = series_head(entry.label_bytes, SAMPLE_BYTES * n)
                if n == n0:
                    heads_by_count.setdefault(n, {})[entry] = head
        all_values = b"".join(values)
        packed = PackedSeries(list(map(_LABEL_SET, entries)), heads,  # type: ignore[arg-type]
                              counts, interleave_samples(all_values, all_stamps, total),
                              list(accumulate(map(_TIMES18, counts), initial=0)))
        doubles = array("d", all_values)
        return PackedPrepared(packed, list(map(flat.__getitem__, last)),
                              list(map(doubles.__getitem__, last)), series, total,
                              list(map(_LABEL_BYTES, entries)))

    def _known(self, resource_key: bytes) -> dict[tuple[Any, ...], _Entry]:
        """The label sets already validated under one resource (bounded)."""
        known = self._series.get(resource_key)
        if known is None:
            if len(self._series) >= 1000:
                self._series.clear()
            known = self._series[resource_key] = {}
        elif len(known) >= _CACHE_LIMIT:
            known.clear()
        return known

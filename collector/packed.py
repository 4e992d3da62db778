"""Series laid out for remote write: per-series prompb heads and one buffer of encoded samples.

Between ingest and the remote-write request the collector keeps no per-sample Python objects:
a `PackedSeries` holds, for each series, its sorted label set (for logs and the local store) and
its encoded `TimeSeries` head (field tag, length, labels), and one buffer with every series'
`Sample` fields back to back. A request body is then a single join of heads and buffer slices;
merging queued batches and bisecting a rejected request are list and buffer slicing.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from itertools import accumulate, chain, islice, pairwise
from operator import itemgetter

from aifb.collector.model import Labels, SeriesOut
from aifb.mesh.protowire import string_pairs, varint
from aifb.v1 import telemetry_pb2
from aifb.wire import prompb_pb2

__all__ = [
    "SAMPLE_BYTES",
    "PackedSeries",
    "encode_labels",
    "encode_samples",
    "interleave_samples",
    "label_key",
    "pack_series",
    "series_head",
    "varint",
]

# One prompb Sample field when its timestamp is a 6-byte varint (ms in [2**35, 2**42), that is
# 1971 to 2109): 0x12 len=16 | 0x09 <double> | 0x10 <varint>.
SAMPLE_BYTES = 18
VARINT6_LO, VARINT6_HI = 1 << 35, 1 << 42


def encode_labels(labels: Labels) -> bytes:
    """The `repeated Label labels = 1` part of a prompb TimeSeries."""
    return string_pairs(labels)


def series_head(label_bytes: bytes, sample_bytes: int) -> bytes:
    """WriteRequest's `timeseries` tag and length, then the labels: all but the samples."""
    return b"\x0a" + varint(len(label_bytes) + sample_bytes) + label_bytes


def interleave_samples(doubles: bytes, varints6: bytes, n: int) -> bytes:
    """`n` Sample fields from packed doubles and n 6-byte varints: strided copies, no loop."""
    out = bytearray(SAMPLE_BYTES * n)
    out[0::SAMPLE_BYTES] = b"\x12" * n
    out[1::SAMPLE_BYTES] = b"\x10" * n
    out[2::SAMPLE_BYTES] = b"\x09" * n
    out[11::SAMPLE_BYTES] = b"\x10" * n
    for j in range(8):
        out[3 + j::SAMPLE_BYTES] = doubles[j::8]
    for j in range(6):
        out[12 + j::SAMPLE_BYTES] = varints6[j::6]
    return bytes(out)


def encode_samples(series: list[SeriesOut]) -> tuple[bytes, list[int]]:
    """Every series' Sample fields in one buffer, and the byte offsets (len(series) + 1)."""
    all_ts = list(chain.from_iterable(s.timestamps for s in series))
    n = len(all_ts)
    if n and min(all_ts) >= VARINT6_LO and max(all_ts) < VARINT6_HI:
        doubles = array("d", chain.from_iterable(s.values for s in series)).tobytes()
        packed = telemetry_pb2.MetricSeries(timestamps_ms=all_ts).SerializeToString()
        buffer = interleave_samples(doubles, packed[len(packed) - 6 * n:], n)
        return buffer, list(accumulate((SAMPLE_BYTES * len(s.timestamps) for s in series),
                                       initial=0))
    # Other timestamps: upb writes each series' samples (a TimeSeries of samples only).
    chunks = [prompb_pb2.TimeSeries(samples=[
        prompb_pb2.Sample(value=v, timestamp=t)
        for t, v in zip(s.timestamps, s.values, strict=True)]).SerializeToString()
        for s in series]
    return b"".join(chunks), list(accumulate(map(len, chunks), initial=0))


class _LabelCache:
    """Encoded labels per label set, bounded (cleared when full)."""

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._map: dict[Labels, bytes] = {}

    def get(self, labels: Labels) -> bytes:
        found = self._map.get(labels)
        if found is None:
            if len(self._map) >= self.limit:
                self._map.clear()
            found = self._map[labels] = encode_labels(labels)
        return found


_LABELS = _LabelCache()


def label_key(labels: Labels) -> bytes:
    """A label set's encoding (cached): what keys a series where its hash is paid often."""
    return _LABELS.get(labels)
_CHUNKS: dict[int, struct.Struct] = {}
_FIRST = itemgetter(0)


@dataclass(slots=True)
class PackedSeries:
    """Series ready for one or more remote-write requests.

    `heads[i]` is series i's TimeSeries tag, length and labels; its samples are
    `samples[offsets[i]:offsets[i + 1]]`; `counts[i]` is its number of samples."""

    labels: list[Labels]
    heads: list[bytes]
    counts: list[int]
    samples: bytes
    offsets: list[int]

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def sample_count(self) -> int:
        return sum(self.counts)

    def body(self) -> bytes:
        """The serialized prompb.WriteRequest (uncompressed)."""
        n = len(self.heads)
        parts: list[bytes | memoryview] = [b""] * (2 * n)
        parts[0::2] = self.heads
        offsets = self.offsets
        size = offsets[1] if n else 0
        if size > 0 and offsets == list(range(0, size * n + 1, size)):
            # Every series' samples take the same bytes (the usual batch): cut them all in C.
            chunk = _CHUNKS.get(size)
            if chunk is None:
                chunk = _CHUNKS[size] = struct.Struct(f"{size}s")
            parts[1::2] = map(_FIRST, chunk.iter_unpack(self.samples))
        else:
            view = memoryview(self.samples)
            parts[1::2] = map(view.__getitem__, map(slice, offsets, islice(offsets, 1, None)))
        return b"".join(parts)

    def slice(self, lo: int, hi: int) -> PackedSeries:
        """Series lo..hi-1 (sharing nothing mutable with this one)."""
        start, end = self.offsets[lo], self.offsets[hi]
        return PackedSeries(self.labels[lo:hi], self.heads[lo:hi], self.counts[lo:hi],
                            self.samples[start:end],
                            [o - start for o in self.offsets[lo:hi + 1]])

    @classmethod
    def concat(cls, items: list[PackedSeries]) -> PackedSeries:
        if len(items) == 1:
            return items[0]
        offsets = [0]
        base = 0
        for item in items:
            offsets += map(base.__add__, islice(item.offsets, 1, None))
            base += item.offsets[-1]
        return cls(list(chain.from_iterable(i.labels for i in items)),
                   list(chain.from_iterable(i.heads for i in items)),
                   list(chain.from_iterable(i.counts for i in items)),
                   b"".join(i.samples for i in items), offsets)


def pack_series(series: list[SeriesOut]) -> PackedSeries:
    """Pack sorted, validated `SeriesOut` (the general path; the fast ingest path packs straight
    from the agents' wire bytes)."""
    samples, offsets = encode_samples(series)
    label_bytes = _LABELS.get
    heads = [series_head(label_bytes(s.labels), b - a)
             for s, (a, b) in zip(series, pairwise(offsets), strict=True)]
    return PackedSeries([s.labels for s in series], heads, [len(s.timestamps) for s in series],
                        samples, offsets)

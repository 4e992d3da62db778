"""`logproto.PushRequest` bytes written directly, a column at a time.

Building one upb `EntryAdapter` and `Timestamp` per log line costs several microseconds; here
each piece of every entry (tags, lengths, the timestamp's varints, the UTF-8 line) is made by a
C-level `map` over the whole stream and the pieces are joined once. The output is byte-identical
to upb's serialization (tests compare them); entries with a zero seconds or nanos field or an empty
line (which proto3 leaves out) take the upb path.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate, islice, repeat
from operator import add, floordiv, mod

from google.protobuf import timestamp_pb2

from aifb.collector.packed import varint
from aifb.v1 import telemetry_pb2
from aifb.wire import logproto_pb2

__all__ = ["encode_entries", "encode_push_request"]

_NS = 1_000_000_000
_varint = lru_cache(maxsize=65536)(varint)


def _packed_varints(values: list[int]) -> list[bytes]:
    """Each value's varint, via one packed serialization split at the computed lengths."""
    packed = telemetry_pb2.MetricSeries(timestamps_ms=values).SerializeToString()
    lengths = list(map(floordiv, map(add, map(int.bit_length, values), repeat(6)), repeat(7)))
    body = packed[len(packed) - sum(lengths):]
    offsets = list(accumulate(lengths, initial=0))
    return list(map(body.__getitem__, map(slice, offsets, islice(offsets, 1, None))))


def _entries_upb(stamps: list[int], lines: list[str]) -> bytes:
    stream = logproto_pb2.StreamAdapter()
    Timestamp, Entry = timestamp_pb2.Timestamp, logproto_pb2.EntryAdapter
    stream.entries.extend(
        Entry(timestamp=Timestamp(seconds=ts // _NS, nanos=ts % _NS), line=line)
        for ts, line in zip(stamps, lines, strict=True))
    return stream.SerializeToString()


def encode_entries(stamps: list[int], lines: list[str]) -> bytes:
    """The `repeated EntryAdapter entries = 2` field of a StreamAdapter (ns timestamps)."""
    n = len(stamps)
    if not n:
        return b""
    seconds = list(map(floordiv, stamps, repeat(_NS)))
    nanos = list(map(mod, stamps, repeat(_NS)))
    if 0 in nanos or min(seconds) <= 0:
        return _entries_upb(stamps, lines)
    sec_v = list(map(_varint, seconds))
    nano_v = _packed_varints(nanos)
    # Timestamp message: 0x08 <seconds> 0x10 <nanos> (at most 16 bytes: its length is 1 byte).
    ts_len = list(map((2).__add__, map(add, map(len, sec_v), map(len, nano_v))))
    encoded = list(map(str.encode, lines))
    line_len = list(map(len, encoded))
    if 0 in line_len:  # an empty line is left out too
        return _entries_upb(stamps, lines)
    line_len_v = list(map(_varint, line_len))
    # Entry: 0x0a <ts_len> <timestamp> 0x12 <line_len> <line>
    entry_len = map((3).__add__, map(add, map(add, ts_len, line_len), map(len, line_len_v)))
    parts: list[bytes] = [b""] * (11 * n)
    parts[0::11] = repeat(b"\x12", n)
    parts[1::11] = map(_varint, entry_len)
    parts[2::11] = repeat(b"\x0a", n)
    parts[3::11] = map(_varint, ts_len)
    parts[4::11] = repeat(b"\x08", n)
    parts[5::11] = sec_v
    parts[6::11] = repeat(b"\x10", n)
    parts[7::11] = nano_v
    parts[8::11] = repeat(b"\x12", n)
    parts[9::11] = line_len_v
    parts[10::11] = encoded
    return b"".join(parts)


def encode_push_request(streams: list[tuple[str, list[int], list[str]]]) -> bytes:
    """A serialized PushRequest from (rendered labels, ns timestamps, lines) per stream."""
    out: list[bytes] = []
    for labels, stamps, lines in streams:
        label_bytes = labels.encode()
        body = b"\x0a" + varint(len(label_bytes)) + label_bytes + encode_entries(stamps, lines)
        out += (b"\x0a", varint(len(body)), body)
    return b"".join(out)

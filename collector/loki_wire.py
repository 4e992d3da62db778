"""`logproto.PushRequest` bytes written directly, a column at a time.

Building one upb `EntryAdapter` and `Timestamp` per log line costs several microseconds; here
each piece of every entry (tags, lengths, the timestamp's varints, the UTF-8 line) is made by a
C-level `map` over the whole stream and the pieces are joined once. A run of entries sharing one
timestamp (agents stamp a whole read of a file at once) costs less still: everything before a
line depends only on the line's length, so it is one cached lookup per line. The output is
byte-identical to upb's serialization (tests compare them); lines may be `str` or UTF-8 `bytes`.
Entries with a zero seconds or nanos field or an empty line (which proto3 leaves out) take the
upb path, unless they sit in a run.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
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
# A stream whose runs of equal timestamps average fewer lines than this is encoded column-wise.
_MIN_RUN = 16

Lines = Sequence[str] | Sequence[bytes]


class _RunHeads(dict[int, bytes]):
    """line length -> the bytes of an entry before its line, for one timestamp."""

    def __init__(self, ns: int) -> None:
        super().__init__()
        seconds, nanos = divmod(ns, _NS)
        stamp = ((b"\x08" + varint(seconds) if seconds else b"")
                 + (b"\x10" + varint(nanos) if nanos else b""))
        self.stamp = b"\x0a" + varint(len(stamp)) + stamp

    def __missing__(self, length: int) -> bytes:
        line = b"\x12" + varint(length) if length else b""
        head = b"\x12" + varint(len(self.stamp) + len(line) + length) + self.stamp + line
        self[length] = head
        return head


_HEADS: dict[int, _RunHeads] = {}


def _run_heads(ns: int) -> _RunHeads:
    heads = _HEADS.get(ns)
    if heads is None:
        if len(_HEADS) >= 64:
            _HEADS.clear()
        heads = _HEADS[ns] = _RunHeads(ns)
    return heads


def _as_bytes(lines: Lines) -> list[bytes]:
    if lines and isinstance(lines[0], bytes):
        return list(lines)  # type: ignore[arg-type]
    return list(map(str.encode, lines))  # type: ignore[arg-type]


def _entries_runs(stamps: Sequence[int], lines: Lines) -> bytes | None:
    """Ascending `stamps` in long runs of one value: each run's entries from cached heads.
    None when the runs are short (the column-wise path is cheaper then)."""
    n = len(stamps)
    encoded = _as_bytes(lines)
    parts: list[bytes] = [b""] * (2 * n)
    parts[1::2] = encoded
    start = runs = 0
    while start < n:
        ns = stamps[start]
        end = bisect_right(stamps, ns, start) if stamps[n - 1] != ns else n
        runs += 1
        if runs * _MIN_RUN > n or ns < 0:
            return None
        heads = _run_heads(ns)
        parts[2 * start:2 * end:2] = map(heads.__getitem__, map(len, encoded[start:end]))
        start = end
    return b"".join(parts)


def _packed_varints(values: list[int]) -> list[bytes]:
    """Each value's varint, via one packed serialization split at the computed lengths."""
    packed = telemetry_pb2.MetricSeries(timestamps_ms=values).SerializeToString()
    lengths = list(map(floordiv, map(add, map(int.bit_length, values), repeat(6)), repeat(7)))
    body = packed[len(packed) - sum(lengths):]
    offsets = list(accumulate(lengths, initial=0))
    return list(map(body.__getitem__, map(slice, offsets, islice(offsets, 1, None))))


def _entries_upb(stamps: Sequence[int], lines: Lines) -> bytes:
    stream = logproto_pb2.StreamAdapter()
    Timestamp, Entry = timestamp_pb2.Timestamp, logproto_pb2.EntryAdapter
    texts = [line.decode() if isinstance(line, bytes) else str(line) for line in lines]
    stream.entries.extend(
        Entry(timestamp=Timestamp(seconds=ts // _NS, nanos=ts % _NS), line=line)
        for ts, line in zip(stamps, texts, strict=True))
    return stream.SerializeToString()


def encode_entries(stamps: Sequence[int], lines: Lines, *, ordered: bool = False) -> bytes:
    """The `repeated EntryAdapter entries = 2` field of a StreamAdapter (ns timestamps, in any
    order: entries are written as given; `ordered` says the caller knows they ascend)."""
    n = len(stamps)
    if not n:
        return b""
    if (n >= _MIN_RUN and stamps[0] <= stamps[-1] and stamps[n // 2] == stamps[n // 2 - 1]
            and (ordered or all(map(int.__le__, stamps, islice(stamps, 1, None))))
            and (runs := _entries_runs(stamps, lines)) is not None):
        return runs
    seconds = list(map(floordiv, stamps, repeat(_NS)))
    nanos = list(map(mod, stamps, repeat(_NS)))
    if 0 in nanos or min(seconds) <= 0:
        return _entries_upb(stamps, lines)
    sec_v = list(map(_varint, seconds))
    nano_v = _packed_varints(nanos)
    # Timestamp message: 0x08 <seconds> 0x10 <nanos> (at most 16 bytes: its length is 1 byte).
    ts_len = list(map((2).__add__, map(add, map(len, sec_v), map(len, nano_v))))
    encoded = _as_bytes(lines)
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


def encode_push_request(streams: Sequence[tuple[str, Sequence[int], Lines]], *,
                        ordered: bool = False) -> bytes:
    """A serialized PushRequest from (rendered labels, ns timestamps, lines) per stream
    (`ordered`: every stream's timestamps are known to ascend)."""
    out: list[bytes] = []
    for labels, stamps, lines in streams:
        label_bytes = labels.encode()
        entries = encode_entries(stamps, lines, ordered=ordered)
        body = b"\x0a" + varint(len(label_bytes)) + label_bytes + entries
        out += (b"\x0a", varint(len(body)), body)
    return b"".join(out)

"""`aifb.v1.LogBatch` bytes built a block of records at a time, for `BatchSender` as a RawBatch.

A stream (one file's labels plus a level) collects, per block, its packed timestamps (one
timestamp repeated) and the pieces of its lines field (tag and length, then the UTF-8 line, for
each line); sealing joins the resource, each stream's labels once and the collected pieces in
one pass, so a batch's bytes are copied once. A block's line lengths come from its end offsets,
and the tag-and-length pieces of lines shorter than `_HEADS` are picked from a table by numpy
at once. The bytes parse as the same LogBatch a message built line by line would be (tests
compare them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from aifb.logger.levels import LEVEL_NAMES
from aifb.logger.tailer import Position, Record, RecordBlock
from aifb.mesh.protowire import field as wire_field
from aifb.mesh.protowire import string_pairs, varint
from aifb.mesh.push import RawBatch

__all__ = ["LogBatchBuilder"]


@lru_cache(maxsize=65536)
def _line_head(length: int) -> bytes:
    """`lines` (field 3) tag and length."""
    return b"\x1a" + varint(length)


# The tag-and-length pieces of lines up to 4 KiB, indexable by a numpy array of lengths.
_HEADS = np.empty(4096, dtype=object)
_HEADS[:] = [_line_head(n) for n in range(len(_HEADS))]


def _labels(labels: Mapping[str, str]) -> bytes:
    """A `map<string, string>` field 1 (LogStream.labels, TelemetryResource.attributes)."""
    return string_pairs(sorted(labels.items()))


@dataclass
class _Stream:
    labels: bytes
    stamps: list[bytes] = field(default_factory=list)
    stamps_size: int = 0
    lines: list[bytes] = field(default_factory=list)  # tag and length, line, tag and length, ...
    lines_size: int = 0

    def add(self, stamps: bytes, lines: list[bytes],
            lengths: npt.NDArray[np.int64]) -> int:
        """Appends lines whose byte lengths are `lengths`; returns the bytes they add."""
        n = len(lines)
        if int(lengths.max()) < len(_HEADS):
            heads = _HEADS[lengths].tolist()
            size = int(lengths.sum()) + 2 * n + int(np.count_nonzero(lengths >= 128))
        else:
            heads = list(map(_line_head, lengths.tolist()))
            size = int(lengths.sum()) + sum(map(len, heads))
        parts: list[bytes] = [b""] * (2 * n)
        parts[0::2] = heads
        parts[1::2] = lines
        self.lines += parts
        self.lines_size += size
        self.stamps.append(stamps)
        self.stamps_size += len(stamps)
        return size

    def add_one(self, stamp: bytes, line: bytes) -> int:
        head = _line_head(len(line))
        self.lines += (head, line)
        self.lines_size += len(head) + len(line)
        self.stamps.append(stamp)
        self.stamps_size += len(stamp)
        return len(head) + len(line)

    def pieces(self, out: list[bytes]) -> None:
        """The LogStream (field 4 of LogBatch) as pieces appended to `out`."""
        stamps = varint(self.stamps_size)
        size = len(self.labels) + 1 + len(stamps) + self.stamps_size + self.lines_size
        out += (b"\x22", varint(size), self.labels, b"\x12", stamps)
        out += self.stamps
        out += self.lines


class LogBatchBuilder:
    """Collects records of several files into LogBatch bytes; `seal()` hands one over."""

    def __init__(self, resource: Mapping[str, str]) -> None:
        self._resource = wire_field(0x1A, _labels(resource))
        self._label_bytes: dict[tuple[str, int], bytes] = {}
        self._streams: dict[tuple[str, int], _Stream] = {}
        self.positions: dict[str, Position] = {}
        self.lines = 0
        self.size = 0

    def _stream(self, path: str, labels: Mapping[str, str], level: int) -> _Stream:
        key = (path, level)
        stream = self._streams.get(key)
        if stream is None:
            head = self._label_bytes.get(key)
            if head is None:
                head = self._label_bytes[key] = _labels(
                    {**labels, "level": LEVEL_NAMES[level]})
            stream = self._streams[key] = _Stream(head)
        return stream

    def add_block(self, path: str, labels: Mapping[str, str], block: RecordBlock) -> None:
        lines, levels, ends = block.lines, block.levels, block.ends
        n = len(lines)
        lengths = np.empty(n, dtype=np.int64)  # the lines are consecutive in the file
        lengths[0] = len(lines[0])
        np.subtract(ends[1:], ends[:-1] + 1, out=lengths[1:])
        stamp = varint(block.time_ns)
        first = int(levels[0])
        if not (levels != first).any():
            self.size += self._stream(path, labels, first).add(stamp * n, lines, lengths)
        else:
            order = np.argsort(levels, kind="stable")
            ordered = list(map(lines.__getitem__, order.tolist()))
            counts = np.bincount(levels, minlength=len(LEVEL_NAMES)).tolist()
            at = 0
            for level, count in enumerate(counts):
                if count:
                    take = order[at:at + count]
                    self.size += self._stream(path, labels, level).add(
                        stamp * count, ordered[at:at + count], lengths[take])
                    at += count
        self.lines += n
        self.positions[path] = block.position

    def add_record(self, path: str, labels: Mapping[str, str], record: Record) -> None:
        stream = self._stream(path, labels, LEVEL_NAMES.index(record.level))
        self.size += stream.add_one(varint(record.time_ns), record.text.encode())
        self.lines += 1
        self.positions[path] = record.position

    def seal(self) -> tuple[RawBatch, dict[str, Position]] | None:
        """The batch so far and the positions after it (None when empty); starts a new one."""
        if not self.lines:
            return None
        pieces = [self._resource]
        for stream in self._streams.values():
            stream.pieces(pieces)
        out = RawBatch(b"".join(pieces), self.lines), self.positions
        self._streams, self.positions, self.lines, self.size = {}, {}, 0, 0
        return out

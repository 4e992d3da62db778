"""`aifb.v1.LogBatch` bytes built a block of records at a time, for `BatchSender` as a RawBatch.

A stream (one file's labels plus a level) collects, per block, its packed timestamps (one
timestamp repeated) and its lines field (tag, length, UTF-8 line for each line, joined once);
sealing writes the resource, each stream's labels once and the collected pieces. The bytes
parse as the same LogBatch a message built line by line would be (tests compare them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

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


def _labels(labels: Mapping[str, str]) -> bytes:
    """A `map<string, string>` field 1 (LogStream.labels, TelemetryResource.attributes)."""
    return string_pairs(sorted(labels.items()))


@dataclass
class _Stream:
    labels: bytes
    stamps: list[bytes] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        stamps = b"".join(self.stamps)
        return self.labels + wire_field(0x12, stamps) + b"".join(self.lines)


def _lines_field(lines: list[bytes]) -> bytes:
    parts: list[bytes] = [b""] * (2 * len(lines))
    parts[0::2] = map(_line_head, map(len, lines))
    parts[1::2] = lines
    return b"".join(parts)


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
        lines, levels = block.lines, block.levels
        stamp = varint(block.time_ns)
        first = int(levels[0])
        if not (levels != first).any():
            groups = [(first, lines)]
        else:
            order = np.argsort(levels, kind="stable")
            ordered = list(map(lines.__getitem__, order.tolist()))
            counts = np.bincount(levels, minlength=len(LEVEL_NAMES)).tolist()
            groups, at = [], 0
            for level, count in enumerate(counts):
                if count:
                    groups.append((level, ordered[at:at + count]))
                    at += count
        for level, group in groups:
            stream = self._stream(path, labels, level)
            stream.stamps.append(stamp * len(group))
            body = _lines_field(group)
            stream.lines.append(body)
            self.size += len(body)
        self.lines += len(lines)
        self.positions[path] = block.position

    def add_record(self, path: str, labels: Mapping[str, str], record: Record) -> None:
        stream = self._stream(path, labels, LEVEL_NAMES.index(record.level))
        line = record.text.encode()
        stream.stamps.append(varint(record.time_ns))
        stream.lines.append(_line_head(len(line)) + line)
        self.lines += 1
        self.size += len(line) + 2
        self.positions[path] = record.position

    def seal(self) -> tuple[RawBatch, dict[str, Position]] | None:
        """The batch so far and the positions after it (None when empty); starts a new one."""
        if not self.lines:
            return None
        body = self._resource + b"".join(wire_field(0x22, s.encode())
                                         for s in self._streams.values())
        out = RawBatch(body, self.lines), self.positions
        self._streams, self.positions, self.lines, self.size = {}, {}, 0, 0
        return out

"""Follows one log file by (device, inode) and offset, through rotation, truncation and absence.

Rotation (rename, then a new file at the path): the old file is read to its end and its last
record finished, then the new file is read from 0. Truncation (copytruncate: same inode, now
smaller than what was read): reading restarts at 0. A missing file is opened when it appears.
A start `Position` whose inode no longer sits at the path (rotated while the agent was down) is
looked up among the path's siblings, finished, and then the new file follows.
Every `Record` carries the position just after it: checkpoint that, and a restart resumes with
the next record, neither losing nor repeating one. A read of plain one-line records comes out of
`poll_chunks` as one `RecordBlock` (the lines as bytes, their levels as codes, their end offsets
as an array) rather than as a `Record` each.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import numpy.typing as npt

from aifb.logger.levels import LEVEL_NAMES, detect_levels
from aifb.logger.records import Joiner, detect_level

__all__ = ["FileTailer", "Position", "Record", "RecordBlock"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Text that makes a read leave the bulk path: CR, traceback sections. (Blank and indented lines
# are found by the check of every line's first byte.)
_NOT_PLAIN = (b"\r", b"Traceback (", b"During handling", b"The above exception")


class Position(NamedTuple):
    """Where a record ends: the file (device, inode) and the offset after its last line.
    (A named tuple: one is made per record, and tuples are several times cheaper to make.)"""

    dev: int
    ino: int
    offset: int

    def to_json(self) -> dict[str, int]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Position:
        return cls(int(data["dev"]), int(data["ino"]), int(data["offset"]))


class Record(NamedTuple):
    time_ns: int
    text: str
    level: str
    position: Position


class RecordBlock(NamedTuple):
    """One-line records read together: the same time, each line's UTF-8 bytes (no newline),
    its level code (an index into `LEVEL_NAMES`) and the file offset after its newline."""

    time_ns: int
    lines: list[bytes]
    levels: npt.NDArray[np.int8]
    ends: npt.NDArray[np.int64]
    dev: int
    ino: int

    @property
    def position(self) -> Position:
        return Position(self.dev, self.ino, int(self.ends[-1]))

    def split(self, count: int) -> tuple[RecordBlock, RecordBlock]:
        """The first `count` records, and the rest."""
        head = self._replace(lines=self.lines[:count], levels=self.levels[:count],
                             ends=self.ends[:count])
        tail = self._replace(lines=self.lines[count:], levels=self.levels[count:],
                             ends=self.ends[count:])
        return head, tail

    def records(self) -> list[Record]:
        return [Record(self.time_ns, line.decode(), LEVEL_NAMES[level],
                       Position(self.dev, self.ino, end))
                for line, level, end in zip(self.lines, self.levels.tolist(),
                                            self.ends.tolist(), strict=True)]


Chunk = Record | RecordBlock


class FileTailer:
    """Call `poll()` repeatedly; it returns the records completed since the last call."""

    def __init__(self, path: str | Path, *, start: Position | None = None,
                 max_line_bytes: int = 256 * 1024, idle_flush_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.idle_flush_seconds = idle_flush_seconds
        self.rotations = 0
        self.truncations = 0
        self.bytes_read = 0
        self._clock = clock
        self._fh: BinaryIO | None = None
        self._ident = (0, 0)
        self._buf = b""
        self._buf_start = 0  # file offset of _buf[0]
        self._joiner = Joiner()
        self._last_data = clock()
        self.committed: Position | None = start
        self._open_start(start)

    # -- opening ---------------------------------------------------------------------------

    def _open(self, path: Path, offset: int) -> bool:
        try:
            fh = path.open("rb")
        except OSError:
            return False
        st = os.fstat(fh.fileno())
        if offset > st.st_size:
            self.truncations += 1
            offset = 0
        fh.seek(offset)
        self._fh = fh
        self._ident = (st.st_dev, st.st_ino)
        self._buf = b""
        self._buf_start = offset
        self._joiner = Joiner()
        return True

    def _open_start(self, start: Position | None) -> None:
        if start is None:
            self._open(self.path, 0)
            return
        try:
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == (start.dev, start.ino):
                self._open(self.path, start.offset)
                return
        except OSError:
            pass
        old = self._find_inode(start)
        if old is not None and self._open(old, start.offset):
            log.info("%s: resuming the rotated file %s at %d", self.path, old, start.offset)
            return
        if start.offset:
            log.warning("%s: the checkpointed file (inode %d) is gone; reading the new file "
                        "from its start", self.path, start.ino)
        self._open(self.path, 0)

    def _find_inode(self, pos: Position) -> Path | None:
        try:
            siblings = list(self.path.parent.iterdir())
        except OSError:
            return None
        for candidate in siblings:
            if candidate.name.startswith(self.path.name):
                try:
                    st = candidate.stat()
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (pos.dev, pos.ino):
                    return candidate
        return None

    def __enter__(self) -> FileTailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def read_offset(self) -> int:
        return self._buf_start + len(self._buf)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def poll(self, max_bytes: int = 1 << 20) -> list[Record]:
        """The records completed since the last call, one by one."""
        out: list[Record] = []
        for chunk in self.poll_chunks(max_bytes):
            if isinstance(chunk, RecordBlock):
                out += chunk.records()
            else:
                out.append(chunk)
        return out

    def poll_chunks(self, max_bytes: int = 1 << 20) -> list[Chunk]:
        """Like `poll`, with each read of plain one-line records as one `RecordBlock`."""
        out: list[Chunk] = []
        if self._fh is None and not self._open(self.path, 0):
            return out
        self._read(out, max_bytes)
        try:
            st: os.stat_result | None = self.path.stat()
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) != self._ident:
            self._read(out, 1 << 62)  # the rest of the old file, then its last record
            self._finish(out)
            self.close()
            self.rotations += 1
            if self._open(self.path, 0):
                self._read(out, max_bytes)
        elif st is not None and st.st_size < self.read_offset:
            self._finish(out)
            self.truncations += 1
            log.info("%s was truncated; reading from the start", self.path)
            assert self._fh is not None
            self._fh.seek(0)
            self._buf, self._buf_start = b"", 0
            self._read(out, max_bytes)
        elif self._joiner.has_pending and self._clock() - self._last_data > self.idle_flush_seconds:
            self._emit(out, self._joiner.flush())
        return out

    def _read(self, out: list[Chunk], max_bytes: int) -> None:
        assert self._fh is not None
        budget = max_bytes
        while budget > 0:
            chunk = self._fh.read(min(_CHUNK, budget))
            if not chunk:
                return
            budget -= len(chunk)
            self.bytes_read += len(chunk)
            self._last_data = self._clock()
            self._buf += chunk
            self._split(out)

    def _split(self, out: list[Chunk]) -> None:
        buf = self._buf
        start = self._split_plain(out, buf)
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                if len(buf) - start >= self.max_line_bytes:  # an endless line: cut it
                    nl = start + self.max_line_bytes - 1
                    self._line(out, buf[start:nl + 1], self._buf_start + nl + 1)
                    start = nl + 1
                    continue
                break
            self._line(out, buf[start:nl], self._buf_start + nl + 1)
            start = nl + 1
        self._buf = buf[start:]
        self._buf_start += start

    def _split_plain(self, out: list[Chunk], buf: bytes) -> int:
        """The common case in bulk: when no complete line in `buf` can join another (none is
        blank, indented, non-ASCII at its start, part of a traceback, or too long), each line is
        its own record and needs no look at the next: they become one `RecordBlock`. Returns
        how far `buf` was consumed (0: not this case; `_split` then goes line by line)."""
        last_nl = buf.rfind(b"\n")
        if last_nl < 0 or (self._joiner.has_pending and not self._joiner.can_end_pending):
            return 0
        region = buf[:last_nl]
        for marker in _NOT_PLAIN:
            if marker in region:
                return 0
        if not region.isascii():
            try:
                region.decode("utf-8")
            except UnicodeDecodeError:
                return 0  # the line by line path replaces what is not UTF-8
        a = np.frombuffer(buf, dtype=np.uint8, count=last_nl + 1)
        ends = np.flatnonzero(a == 10)
        if len(ends) < 2:
            return 0
        starts = np.empty(len(ends), dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        # Printable ASCII, not a space, at every line's start; no line too long.
        if (np.subtract(a[starts], 0x21, dtype=np.uint8) >= 0x7F - 0x21).any() \
                or int((ends - starts).max()) >= self.max_line_bytes:
            return 0
        lines = region.split(b"\n")
        done = self._joiner.flush()
        if done is not None:
            self._emit(out, done)
        dev, ino = self._ident
        base = self._buf_start
        block = RecordBlock(time.time_ns(), lines[:-1], detect_levels(buf, ends[:-1]),
                            ends[:-1] + (base + 1), dev, ino)
        self.committed = block.position
        out.append(block)
        # The last line stays pending, like any last line: the next may continue it.
        self._joiner.feed(lines[-1].decode(), base + last_nl + 1)
        return last_nl + 1

    def _line(self, out: list[Chunk], raw: bytes, end: int) -> None:
        text = raw[:self.max_line_bytes].decode("utf-8", errors="replace").rstrip("\r")
        self._emit(out, self._joiner.feed(text, end))

    def _finish(self, out: list[Chunk]) -> None:
        """End of this file for good: a last line without newline counts, then the record."""
        if self._buf:
            end = self.read_offset
            self._line(out, self._buf, end)
            self._buf, self._buf_start = b"", end
        self._emit(out, self._joiner.flush())

    def _emit(self, out: list[Chunk], done: tuple[str, int] | None) -> None:
        if done is None:
            return
        text, end = done
        position = Position(self._ident[0], self._ident[1], end)
        self.committed = position
        out.append(Record(time.time_ns(), text, detect_level(text), position))

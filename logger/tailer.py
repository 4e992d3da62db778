"""Follows one log file by (device, inode) and offset, through rotation, truncation and absence.

Rotation (rename, then a new file at the path): the old file is read to its end and its last
record finished, then the new file is read from 0. Truncation (copytruncate: same inode, now
smaller than what was read): reading restarts at 0. A missing file is opened when it appears.
A start `Position` whose inode no longer sits at the path (rotated while the agent was down) is
looked up among the path's siblings, finished, and then the new file follows.
Every `Record` carries the position just after it: checkpoint that, and a restart resumes with
the next record, neither losing nor repeating one. A run of plain one-line records in a read
comes out of `poll_chunks` as one `RecordBlock` (the lines as bytes, their levels as codes, their
end offsets as an array) rather than as a `Record` each; the lines around one that may join
another (a traceback, an indented line) go one by one, and the runs before and after it still
go as blocks. A poll reads its whole budget at once.
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

from aifb.logger.levels import LEVEL_NAMES, detect_levels, words_at
from aifb.logger.records import Joiner, detect_level

__all__ = ["FileTailer", "Position", "Record", "RecordBlock"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024  # one read of a poll's whole budget: a block's fixed cost is paid once
# Between lines that go one by one, a run of plain lines shorter than this goes one by one
# too: a block's fixed cost (some dozen numpy calls) is about that many lines'.
_MIN_RUN = 32
# The first 8 bytes of the lines that begin a traceback section (`records._TRACEBACK_START`);
# a line starting with one of them goes one by one (a superset: the line by line path decides).
_TRACEBACK_HEADS = [int.from_bytes(head[:8], "little")
                    for head in (b"Traceback (", b"During handling", b"The above exception")]


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


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
    """One-line records read together, consecutive in the file: the same time, each line's
    UTF-8 bytes (no newline), its level code (an index into `LEVEL_NAMES`) and the file offset
    after its newline (so each line's length follows from the offsets)."""

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
            self._whole_line(out, buf[start:nl], self._buf_start + nl + 1)
            start = nl + 1
        self._buf = buf[start:]
        self._buf_start += start

    def _split_plain(self, out: list[Chunk], buf: bytes) -> int:
        """The complete lines of `buf` in bulk: a run of lines none of which can join another
        (none is blank, indented, non-ASCII at its start, a traceback section's first line,
        holds a CR, is not UTF-8 or is too long) needs no look at the next line, so each is its
        own record and the run becomes one `RecordBlock`; the lines between runs go one by one.
        Returns how far `buf` was consumed (0: nothing was plain; `_split` then goes line by
        line)."""
        last_nl = buf.rfind(b"\n")
        if last_nl < 0:
            return 0
        a = np.frombuffer(buf, dtype=np.uint8, count=last_nl + 1)
        ends = np.flatnonzero(a == 10)
        n = len(ends)
        if n < 2:
            return 0
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        lines = buf.split(b"\n")  # one more than `ends`: the unfinished rest
        odd = self._not_plain(buf, a, lines, starts, ends)
        if len(odd) >= n - 1:
            return 0
        shortest = 2 if not len(odd) else _MIN_RUN
        base = self._buf_start
        at = i = 0
        joiner = self._joiner
        while i < n:
            while at < len(odd) and odd[at] < i:
                at += 1
            j = int(odd[at]) if at < len(odd) else n  # the next line that is not plain
            if j - i >= shortest and (not joiner.has_pending or joiner.can_end_pending):
                done = joiner.flush()
                if done is not None:
                    self._emit(out, done)
                dev, ino = self._ident
                block_ends = ends[i:j - 1]
                block = RecordBlock(time.time_ns(), lines[i:j - 1],
                                    detect_levels(buf, block_ends, int(starts[i])),
                                    block_ends + (base + 1), dev, ino)
                self.committed = block.position
                out.append(block)
                # The run's last line stays pending, like any last line: the next may join it.
                joiner.feed(lines[j - 1].decode(), base + int(ends[j - 1]) + 1)
                i = j
            else:
                self._whole_line(out, lines[i], base + int(ends[i]) + 1)
                i += 1
        return last_nl + 1

    def _not_plain(self, buf: bytes, a: npt.NDArray[np.uint8], lines: list[bytes],
                   starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
                   ) -> npt.NDArray[np.int64]:
        """Indexes (ascending) of the lines that may join another or need the line by line
        decoding: not printable ASCII at the start (blank, indented, non-ASCII), the first
        8 bytes of a traceback section's first line, a CR, too long, or not UTF-8."""
        stop = len(a)
        odd = [np.flatnonzero(np.subtract(a[starts], 0x21, dtype=np.uint8) >= 0x7F - 0x21),
               np.flatnonzero(ends - starts >= self.max_line_bytes)]
        heads = words_at(buf, starts)
        odd.append(np.flatnonzero((heads == _TRACEBACK_HEADS[0]) | (heads == _TRACEBACK_HEADS[1])
                                  | (heads == _TRACEBACK_HEADS[2])))
        if buf.find(b"\r", 0, stop) >= 0:
            odd.append(np.searchsorted(ends, np.flatnonzero(a == 13)))
        if not buf.isascii():
            try:
                str(memoryview(buf)[:stop], "utf-8")
            except UnicodeDecodeError:
                wide = np.unique(np.searchsorted(ends, np.flatnonzero(a >= 128))).tolist()
                odd.append(np.array([k for k in wide if not _is_utf8(lines[k])], dtype=np.int64))
        return np.unique(np.concatenate(odd))

    def _whole_line(self, out: list[Chunk], raw: bytes, end: int) -> None:
        """A line read with its newline (`end`: the offset after the newline). One longer than
        `max_line_bytes` is cut into pieces of that size first, as an endless line is (so a
        long line gives the same records whether it arrived in one read or in many)."""
        limit = self.max_line_bytes
        if len(raw) > limit:
            first = end - 1 - len(raw)
            cut = 0
            while len(raw) - cut > limit:
                self._line(out, raw[cut:cut + limit], first + cut + limit)
                cut += limit
            raw = raw[cut:]
        self._line(out, raw, end)

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

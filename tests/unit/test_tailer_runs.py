"""A read that mixes plain lines with lines that may join others: the plain runs still go as
blocks, the rest line by line, and the records equal those of a line by line reading; a line
longer than the limit gives the same records whether it came in one read or in many."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifb.logger.tailer import Chunk, FileTailer, Record, RecordBlock

pytestmark = pytest.mark.unit


class _LineByLine(FileTailer):
    def _split_plain(self, out: list[Chunk], buf: bytes) -> int:
        return 0


def _plain(tag: str, n: int) -> list[bytes]:
    return [f"2026-11-28T12:00:00Z INFO {tag} request {i} done".encode() for i in range(n)]


def _read_all(cls: type[FileTailer], path: Path, step: int = 1 << 20,
              max_line_bytes: int = 256 * 1024) -> tuple[list[Chunk], list[Record]]:
    clock = [0.0]
    tailer = cls(path, max_line_bytes=max_line_bytes, clock=lambda: clock[0])
    chunks: list[Chunk] = []
    try:
        size = path.stat().st_size
        while tailer.read_offset < size:
            chunks += tailer.poll_chunks(step)
        clock[0] = 10.0  # idle: the last record is finished
        chunks += tailer.poll_chunks(step)
    finally:
        tailer.close()
    records: list[Record] = []
    for chunk in chunks:
        records += chunk.records() if isinstance(chunk, RecordBlock) else [chunk]
    return chunks, records


def _same_as_line_by_line(path: Path, **kwargs: int) -> list[Chunk]:
    chunks, got = _read_all(FileTailer, path, **kwargs)
    _, expected = _read_all(_LineByLine, path, **kwargs)
    assert [(r.text, r.level, r.position.offset) for r in got] == \
        [(r.text, r.level, r.position.offset) for r in expected]
    return chunks


def _block_lines(chunks: list[Chunk]) -> list[int]:
    return [len(c.lines) for c in chunks if isinstance(c, RecordBlock)]


def test_lines_before_and_after_a_traceback_in_one_read_still_go_as_blocks(
        tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    traceback = [b"Traceback (most recent call last):", b'  File "x.py", line 1, in <module>',
                 b"ValueError: bad"]
    path.write_bytes(b"\n".join([*_plain("a", 200), *traceback, *_plain("b", 200),
                                 *traceback, *_plain("c", 5)]) + b"\n")
    chunks = _same_as_line_by_line(path)
    blocks = _block_lines(chunks)
    # The line before each traceback is joined with it, so it is not in a block.
    assert blocks[:2] == [199, 199], blocks
    records = [c for c in chunks if isinstance(c, Record)]
    assert [r.text.count("\n") for r in records if "Traceback" in r.text] == [3, 3]


def test_a_line_that_is_not_utf8_goes_alone_and_its_neighbours_as_blocks(
        tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"\n".join([*_plain("a", 100), b"bad \xff\xfe bytes ERROR",
                                 *_plain("b", 100), "x é ünïcode INFO".encode(),
                                 *_plain("c", 100)]) + b"\n")
    chunks = _same_as_line_by_line(path)
    # The line before the odd one waits (it could be joined); a UTF-8 line stays in its block.
    assert _block_lines(chunks) == [99, 200], _block_lines(chunks)
    assert any(isinstance(c, Record) and "\ufffd" in c.text for c in chunks)


def test_crlf_and_indented_lines_match_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"\n".join([*_plain("a", 50), b"dos line\r", b"    indented", b"",
                                 b"next", *_plain("b", 50)]) + b"\n")
    _same_as_line_by_line(path)


@pytest.mark.parametrize("length", [1000, 1024, 1025, 3000, 4096])
def test_a_long_line_gives_the_same_records_in_one_read_or_in_many(
        tmp_path: Path, length: int) -> None:
    path = tmp_path / "job.out"
    path.write_bytes(b"start\n" + b"x" * length + b"\nend\n")
    _, whole = _read_all(FileTailer, path, max_line_bytes=1024)
    _, pieces = _read_all(FileTailer, path, step=100, max_line_bytes=1024)
    assert [r.text for r in whole] == [r.text for r in pieces]
    assert [len(r.text) for r in whole] == \
        [5] + [1024] * ((length - 1) // 1024) + [length - 1024 * ((length - 1) // 1024), 3]

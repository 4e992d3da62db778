"""The tailer: rotation, truncation, late files, multi-line records, levels, checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifb.logger.checkpoint import CheckpointStore
from aifb.logger.records import Joiner, detect_level
from aifb.logger.tailer import FileTailer, Position, Record

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _close_tailers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every tailer a test opened (unclosed files are errors under filterwarnings)."""
    opened: list[FileTailer] = []
    original = FileTailer.__init__

    def init(self: FileTailer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(FileTailer, "__init__", init)
    yield
    for t in opened:
        t.close()


def texts(records: list[Record]) -> list[str]:
    return [r.text for r in records]


def write(path: Path, text: str, mode: str = "a") -> None:
    with path.open(mode) as fh:
        fh.write(text)


def drain(tailer: FileTailer, clock: Clock) -> list[Record]:
    """Poll, then let the idle timeout finish the last pending record."""
    out = tailer.poll()
    clock.now += 10
    return out + tailer.poll()


def test_reads_complete_lines_only_and_waits_for_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    write(log, "one\ntw")
    clock = Clock()
    t = FileTailer(log, clock=clock)
    assert texts(drain(t, clock)) == ["one"]
    write(log, "o\nthree\n")
    assert texts(drain(t, clock)) == ["two", "three"]


def test_rotation_finishes_old_file_then_reads_new_from_start(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "a1\na2\n")
    clock = Clock()
    t = FileTailer(log, clock=clock)
    assert texts(drain(t, clock)) == ["a1", "a2"]
    write(log, "a3\n")  # written before the rename, not read yet
    log.rename(tmp_path / "app.log.1")
    write(log, "b1\nb2\n", "w")
    records = drain(t, clock)
    assert texts(records) == ["a3", "b1", "b2"]
    assert t.rotations == 1
    assert records[0].position.ino != records[-1].position.ino


def test_copytruncate_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "x1\nx2\nx3\n")
    clock = Clock()
    t = FileTailer(log, clock=clock)
    assert len(drain(t, clock)) == 3
    os.truncate(log, 0)
    write(log, "y1\n")
    assert texts(drain(t, clock)) == ["y1"]
    assert t.truncations == 1


def test_file_appearing_later_is_read_from_start(tmp_path: Path) -> None:
    log = tmp_path / "late.log"
    clock = Clock()
    t = FileTailer(log, clock=clock)
    assert drain(t, clock) == []
    write(log, "hello\n")
    assert texts(drain(t, clock)) == ["hello"]


TRACEBACK = (
    "INFO starting\n"
    "ERROR request failed\n"
    "Traceback (most recent call last):\n"
    '  File "app.py", line 3, in <module>\n'
    "    main()\n"
    "ValueError: boom\n"
    "\n"
    "During handling of the above exception, another exception occurred:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "app.py", line 5, in <module>\n'
    "KeyError: 'x'\n"
    "WARNING after\n"
)


def test_traceback_with_chained_exception_is_one_error_record(tmp_path: Path) -> None:
    log = tmp_path / "err.log"
    write(log, TRACEBACK)
    clock = Clock()
    records = drain(FileTailer(log, clock=clock), clock)
    assert [r.level for r in records] == ["info", "error", "warning"]
    assert records[1].text.startswith("ERROR request failed\nTraceback")
    assert records[1].text.endswith("KeyError: 'x'")
    assert records[1].text.count("\n") == 10


def test_pending_record_is_not_committed_until_finished(tmp_path: Path) -> None:
    log = tmp_path / "err.log"
    write(log, "ERROR x\n  detail\n")
    clock = Clock()
    t = FileTailer(log, clock=clock)
    assert t.poll() == []  # the record may still continue
    clock.now += 10
    (rec,) = t.poll()
    assert rec.text == "ERROR x\n  detail"
    assert rec.position.offset == log.stat().st_size


@pytest.mark.parametrize(("line", "level"), [
    ("2024-01-01 12:00:00 ERROR worker died", "error"),
    ("CRITICAL disk", "error"),
    ('{"level": "error", "msg": "x"}', "error"),
    ("WARNING: deprecated", "warning"),
    ("[warn] slow", "warning"),
    ("level=info msg=ok", "info"),
    ("INFO:     Uvicorn running", "info"),
    ("DEBUG cache miss", "debug"),
    ("INFO retry after ERROR", "info"),
    ("plain text", "unknown"),
    ("Traceback (most recent call last):\n  File x\nValueError", "error"),
])
def test_level_is_detected_from_the_earliest_marker(line: str, level: str) -> None:
    assert detect_level(line) == level


def test_joiner_skips_blank_lines_outside_tracebacks() -> None:
    j = Joiner()
    assert j.feed("a", 2) is None
    assert j.feed("", 3) == ("a", 2)
    assert j.feed("b", 5) is None
    assert j.flush() == ("b", 5)


def test_restart_from_checkpoint_neither_loses_nor_repeats(tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    write(log, "".join(f"line {i}\n" for i in range(10)))
    clock = Clock()
    first = drain(FileTailer(log, clock=clock), clock)
    store = CheckpointStore(tmp_path / "state" / "checkpoint.json")
    store.update({str(log): first[4].position})  # acknowledged up to line 4
    write(log, "line 10\n")
    again = CheckpointStore(tmp_path / "state" / "checkpoint.json")
    resumed = drain(FileTailer(log, start=again.positions[str(log)], clock=clock), clock)
    assert texts(first[:5] + resumed) == [f"line {i}" for i in range(11)]


def test_restart_during_rotation_finishes_the_rotated_file_first(tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    write(log, "a0\na1\na2\n")
    clock = Clock()
    records = drain(FileTailer(log, clock=clock), clock)
    checkpoint = records[0].position  # only a0 was acknowledged before the crash
    log.rename(tmp_path / "job.out.1")
    write(log, "b0\n", "w")
    resumed = drain(FileTailer(log, start=checkpoint, clock=clock), clock)
    assert texts(resumed) == ["a1", "a2", "b0"]


def test_checkpoint_of_a_truncated_file_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    write(log, "old old old\n")
    st = log.stat()
    os.truncate(log, 0)
    write(log, "new\n")
    clock = Clock()
    t = FileTailer(log, start=Position(st.st_dev, st.st_ino, st.st_size), clock=clock)
    assert texts(drain(t, clock)) == ["new"]


def test_checkpoint_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    store = CheckpointStore(path)
    store.update({"/a": Position(1, 2, 3)})
    store.update({"/b": Position(1, 5, 6)})
    assert not path.with_name("checkpoint.json.tmp").exists()
    assert CheckpointStore(path).positions == {"/a": Position(1, 2, 3), "/b": Position(1, 5, 6)}


def test_endless_line_is_cut_at_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    write(log, "x" * 5000)
    clock = Clock()
    records = drain(FileTailer(log, max_line_bytes=1024, clock=clock), clock)
    assert [len(r.text) for r in records] == [1024, 1024, 1024, 1024]

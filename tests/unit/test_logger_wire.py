"""The logger's block paths give the answers of the line-by-line ones: levels for a whole block
equal `detect_level` line by line, and LogBatch bytes built a block at a time parse as the
batch built line by line (streams per file and level, lines in order, positions after them)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from aifb.logger.levels import LEVEL_NAMES, detect_levels
from aifb.logger.records import detect_level
from aifb.logger.tailer import FileTailer, Record, RecordBlock
from aifb.logger.wire import LogBatchBuilder
from aifb.v1 import telemetry_pb2

pytestmark = pytest.mark.unit

_PIECES = ["ERROR", "ERR", "ERRORS", "XERROR", "WARN", "WARNING", "INFO", "INFOS", "DEBUG",
           "TRACE", "CRITICAL", "FATAL", "PANIC", "info", "[error]", "level=warn", "_INFO",
           "INFO_", "é", "ÉRROR", "ABC", "x", "1", " ", ":", "=", '"level": "info"', "T12",
           "ZZZZZZZZZ", "INFO1", "trace", "Panic"]


def _block(lines: list[str]) -> tuple[bytes, np.ndarray]:
    block = b"".join(line.encode() + b"\n" for line in lines)
    return block, np.flatnonzero(np.frombuffer(block, np.uint8) == 10)


@pytest.mark.parametrize("seed", range(4))
def test_block_levels_equal_detect_level_line_by_line(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        lines = ["".join(rng.choice(_PIECES) + rng.choice(["", " ", ":", "x", "9"])
                         for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 60))]
        if rng.random() < 0.2:
            lines.append("x" * 600 + " ERROR")  # a marker past the 512 characters looked at
        block, ends = _block(lines)
        got = [LEVEL_NAMES[c] for c in detect_levels(block, ends)]
        assert got == [detect_level(line) for line in lines]


def _message_batch(items: list[tuple[str, dict[str, str], Record]]) -> telemetry_pb2.LogBatch:
    batch = telemetry_pb2.LogBatch(resource=telemetry_pb2.TelemetryResource(
        attributes={"node": "n1", "agent": "logger@n1"}))
    streams: dict[tuple[str, str], telemetry_pb2.LogStream] = {}
    for path, labels, rec in items:
        stream = streams.get((path, rec.level))
        if stream is None:
            stream = streams[(path, rec.level)] = batch.streams.add(
                labels={**labels, "level": rec.level})
        stream.timestamps_ns.append(rec.time_ns)
        stream.lines.append(rec.text)
    return batch


def _canonical(batch: telemetry_pb2.LogBatch) -> list[tuple[object, ...]]:
    return sorted((tuple(sorted(s.labels.items())), list(s.timestamps_ns), list(s.lines))
                  for s in batch.streams)


def test_block_built_batches_parse_as_line_by_line_batches(tmp_path: Path) -> None:
    rng = random.Random(7)
    files, texts = {}, {}
    for name in ("a.log", "b.log"):
        path = tmp_path / name
        lines = [f"2026-01-01 {rng.choice(['INFO', 'ERROR', 'WARN', 'DEBUG', 'x'])} {name} {i} "
                 + "é" * rng.randint(0, 3) for i in range(500)]
        lines[100:100] = ["Traceback (most recent call last):", '  File "x.py", line 1',
                          "ValueError: bad"]
        files[str(path)] = {"service": "s", "job_id": "1", "node": "n1", "stream": "stdout",
                            "file": name}
        texts[str(path)] = ["\n".join(lines[:100]) + "\n", "\n".join(lines[100:104]) + "\n",
                            "\n".join(lines[104:]) + "\nlast\n"]
    builder = LogBatchBuilder({"node": "n1", "agent": "logger@n1"})
    expected: list[tuple[str, dict[str, str], Record]] = []
    blocks = 0
    for path, labels in files.items():
        Path(path).write_bytes(b"")
        tailer = FileTailer(path, idle_flush_seconds=0.0)
        chunks = []
        for text in texts[path]:  # plain lines, a traceback, plain lines
            with open(path, "a") as fh:
                fh.write(text)
            chunks += tailer.poll_chunks()
        chunks += tailer.poll_chunks()
        tailer.close()
        for chunk in chunks:
            if isinstance(chunk, RecordBlock):
                blocks += 1
                head, tail = chunk.split(len(chunk.lines) // 3)
                builder.add_block(path, labels, head)
                builder.add_block(path, labels, tail)
                expected += [(path, labels, r) for r in chunk.records()]
            else:
                builder.add_record(path, labels, chunk)
                expected.append((path, labels, chunk))
    sealed = builder.seal()
    assert sealed is not None and builder.seal() is None
    raw, positions = sealed
    raw.agent_id, raw.sequence = "logger@n1", 12345
    got = telemetry_pb2.LogBatch.FromString(raw.SerializeToString())
    assert blocks >= 2 and raw.items == len(expected) == 2 * 502  # a traceback: 3 lines
    assert (got.agent_id, got.sequence) == ("logger@n1", 12345)
    assert dict(got.resource.attributes) == {"node": "n1", "agent": "logger@n1"}
    assert _canonical(got) == _canonical(_message_batch(expected))
    assert {p: pos.offset for p, pos in positions.items()} == {
        p: Path(p).stat().st_size for p in files}

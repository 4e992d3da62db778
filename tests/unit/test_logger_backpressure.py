"""The logger reads no more than its sender may buffer: while the collector does not answer, a
long file stays in the file rather than in batches the sender would drop; and a long read goes
out in full batches (the rest of a batch waits for the next, immediate, poll)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from aifb.logger.agent import LoggerAgent
from aifb.logger.config import LoggerConfig
from aifb.mesh.discovery import TargetSpec

pytestmark = pytest.mark.unit


def _never_connects() -> grpc.aio.Channel:
    raise AssertionError("the sender is not started in these tests")


def _close(agent: LoggerAgent) -> None:
    for src in agent.sources.values():
        src.tailer.close()


def _agent(tmp_path: Path, lines: int, **config: int) -> tuple[LoggerAgent, Path]:
    log = tmp_path / "job.out"
    log.write_bytes(b"".join(b"2026-11-28T12:00:00Z INFO line %d " % i + b"x" * 70 + b"\n"
                             for i in range(lines)))
    agent = LoggerAgent(LoggerConfig(
        node="n1", state_dir=str(tmp_path / "state"),
        targets=[TargetSpec(service="services/s", job_id="1", stdout_path=str(log))],
        **config), collector=_never_connects)
    return agent, log


def test_reading_pauses_before_the_sender_would_drop_a_batch(tmp_path: Path) -> None:
    agent, log = _agent(tmp_path, 40_000, max_batch_bytes=64 * 1024, buffer_bytes=1 << 20,
                        buffer_batches=1000)

    async def polls() -> None:
        for _ in range(100):
            await agent.poll_once()

    try:
        asyncio.run(polls())
    finally:
        _close(agent)
    assert agent.sender is not None
    stats = agent.sender.stats
    assert stats.dropped_batches == 0
    assert 0 < stats.buffered_bytes <= 1 << 20
    assert 0 < agent.lines_read < 40_000  # the rest waits in the file
    assert stats.buffered_bytes < log.stat().st_size


def test_a_long_read_goes_out_in_full_batches(tmp_path: Path) -> None:
    agent, _ = _agent(tmp_path, 20_000, max_batch_bytes=256 * 1024)

    async def polls() -> None:
        agent._more = True
        while agent._more:
            agent._more = False
            await agent.poll_once()
        await agent.poll_once()  # reads nothing: what was held goes out

    try:
        asyncio.run(polls())
    finally:
        _close(agent)
    assert agent.sender is not None
    batches = [p.items for p in agent.sender._buffer.values()]
    # The last line waits for the idle flush (the next line could continue it).
    assert sum(batches) == agent.lines_read == 19_999
    # 256 KiB of 100-byte lines is about 2,600 lines: every batch is full but the last.
    assert min(batches[:-1]) >= 0.95 * max(batches) and batches[-1] <= max(batches)
    assert len(batches) == -(-20_000 // max(batches))

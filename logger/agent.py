"""The logger agent: tails each service's files, pushes LogBatches, checkpoints after the ack.

`aifb.logger.app.build_logger` assembles it with its LoggerService binding; `aifb up`, `aifb
logger serve` and a job's sidecars run it (the process entry points are in `aifb.cli`).
Exactly once across restarts: a batch is spooled (with the positions after it) before it is
sent, the checkpoint moves only when the collector acknowledges it, and a restarted agent
resends the spool with the same sequence numbers and resumes reading after it. Acknowledgements
are committed together (one checkpoint write every `checkpoint_interval_seconds` at most, before
the acknowledged batches leave the spool). Reads of plain lines travel as blocks: batches are
written as bytes a block at a time (`aifb.logger.wire`), and the live tail keeps blocks too,
making a per-line event only for a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aifb.logger.checkpoint import CheckpointStore
from aifb.logger.config import LoggerConfig
from aifb.logger.levels import LEVEL_NAMES
from aifb.logger.tailer import Chunk, FileTailer, Position, Record, RecordBlock
from aifb.logger.wire import LogBatchBuilder
from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery, Target
from aifb.mesh.push import BatchSender, RawBatch

__all__ = ["LogSourceState", "LoggerAgent", "SourceStatus", "TailEvent"]

log = logging.getLogger(__name__)

_MIN_READ = 4096  # a poll whose reads would be smaller than this waits for acks instead


@dataclass(frozen=True)
class TailEvent:
    labels: dict[str, str]
    time_ns: int
    text: str


@dataclass(frozen=True)
class SourceStatus:
    """One followed file as ListLogSources shows it."""

    path: str
    labels: dict[str, str]
    offset: int  # acknowledged (checkpointed) position
    size_bytes: int
    rotations: int
    truncations: int


@dataclass
class LogSourceState:
    path: str
    labels: dict[str, str]
    tailer: FileTailer
    recent: deque[Chunk]  # the newest records, as read (about `recent_records` of them)
    removed_at: float | None = None
    recent_count: int = 0
    level_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def labels_with(self, level: str) -> dict[str, str]:
        found = self.level_labels.get(level)
        if found is None:
            found = self.level_labels[level] = {**self.labels, "level": level}
        return found

    def events(self, chunk: Chunk) -> list[TailEvent]:
        if isinstance(chunk, Record):
            return [TailEvent(self.labels_with(chunk.level), chunk.time_ns, chunk.text)]
        with_level = [self.labels_with(name) for name in LEVEL_NAMES]
        return [TailEvent(with_level[level], chunk.time_ns, line.decode())
                for line, level in zip(chunk.lines, chunk.levels.tolist(), strict=True)]

    def remember(self, chunk: Chunk, keep: int) -> None:
        if keep <= 0:
            return
        self.recent.append(chunk)
        self.recent_count += _count(chunk)
        while self.recent_count - _count(self.recent[0]) >= keep:
            self.recent_count -= _count(self.recent.popleft())


def _count(chunk: Chunk) -> int:
    return len(chunk.lines) if isinstance(chunk, RecordBlock) else 1


@dataclass
class _Subscriber:
    matcher: dict[str, str]
    queue: asyncio.Queue[TailEvent] = field(default_factory=lambda: asyncio.Queue(10000))
    dropped: int = 0


def _matches(labels: Mapping[str, str], matcher: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in matcher.items())


class LoggerAgent:
    """Owns the tailers, the checkpoint and the sender."""

    def __init__(self, config: LoggerConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None) -> None:
        self.config = config
        self.node = config.node_name
        state = Path(config.state_dir).expanduser()
        self.checkpoint = CheckpointStore(state / "checkpoint.json")
        self.sender = (BatchSender("logs", config.agent_name, collector,
                                   max_batches=config.buffer_batches,
                                   max_bytes=config.buffer_bytes, window=config.window,
                                   spool_dir=state / "spool", on_ack=self._on_ack,
                                   on_commit=self._commit,
                                   commit_interval=config.checkpoint_interval_seconds)
                       if collector is not None else None)
        self._builder = LogBatchBuilder({"node": self.node, "agent": config.agent_name})
        self._checkpoint_dirty = False
        self._acked_seq: dict[str, int] = {}
        self._resume: dict[str, Position] = dict(self.checkpoint.positions)
        if self.sender is not None:  # batches sent but never acknowledged are resent first
            for _seq, meta in self.sender.pending():
                for path, pos in meta.get("positions", {}).items():
                    self._resume[path] = Position.from_json(pos)
        self.sources: dict[str, LogSourceState] = {}
        self.lines_read = 0
        self._more = False
        self._subscribers: list[_Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self.discovery = discovery or ServiceDiscovery(None, node=self.node,
                                                       all_nodes=config.all_nodes)
        self.discovery.set_static([t.to_target() for t in config.targets])
        self.discovery.add_listener(self._on_targets)

    # -- sources ---------------------------------------------------------------------------

    def _on_targets(self, targets: Mapping[str, Target]) -> None:
        wanted: set[str] = set()
        for target in targets.values():
            for path, stream in target.log_sources():
                wanted.add(path)
                src = self.sources.get(path)
                if src is not None:
                    src.removed_at = None
                    continue
                labels = {"service": target.service, "job_id": target.job_id,
                          "node": self.node, "stream": stream}
                tailer = FileTailer(path, start=self._resume.get(path),
                                    max_line_bytes=self.config.max_line_bytes,
                                    idle_flush_seconds=self.config.idle_flush_seconds)
                self.sources[path] = LogSourceState(path, labels, tailer, deque())
        now = time.monotonic()
        for path, src in self.sources.items():
            if path not in wanted and src.removed_at is None:
                src.removed_at = now

    # -- reading and delivery --------------------------------------------------------------

    def _read(self, sources: list[LogSourceState], budget: int
              ) -> list[tuple[LogSourceState, list[Chunk]]]:
        """Runs in a worker thread: only the tailers are touched."""
        return [(src, src.tailer.poll_chunks(budget)) for src in sources]

    def _budget(self) -> int:
        """Bytes to read from each file in this poll: `max_batch_bytes`, less when the batches
        of these reads and of the lines held from the last poll (twice their size, for the
        batches' framing) would not fit the room the sender has left; 0: leave the lines in
        the files for now."""
        budget = self.config.max_batch_bytes
        if self.sender is None:
            return budget
        if self.sender.room() <= self.config.buffer_batches // 4:
            return 0  # the collector is behind
        left = (self.config.buffer_bytes - self.sender.stats.buffered_bytes
                - 2 * self._builder.size)
        smallest = min(budget, _MIN_READ)
        budget = min(budget, left // (2 * max(1, len(self.sources))))
        return budget if budget >= smallest else 0

    def _batches(self, results: list[tuple[LogSourceState, list[Chunk]]]
                 ) -> list[tuple[RawBatch, dict[str, Position]]]:
        """Batches of at most `max_batch_lines` lines and about `max_batch_bytes` bytes. When a
        file was read up to the budget (`_more`: the next poll follows at once) the lines that
        did not fill a batch stay in the builder for it, so a long read goes out in full
        batches rather than a full one and a small rest per poll. (Held lines are not yet
        submitted, so their positions are not checkpointed: a restart reads them again.)"""
        out: list[tuple[RawBatch, dict[str, Position]]] = []
        builder = self._builder
        max_lines, max_bytes = self.config.max_batch_lines, self.config.max_batch_bytes

        def seal() -> None:
            sealed = builder.seal()
            if sealed is not None:
                out.append(sealed)

        for src, chunks in results:
            for chunk in chunks:
                src.remember(chunk, self.config.recent_records)
                if self._subscribers:
                    for event in src.events(chunk):
                        self._publish(event)
                if isinstance(chunk, Record):
                    if builder.lines + 1 > max_lines or builder.size + len(chunk.text) > max_bytes:
                        seal()
                    builder.add_record(src.path, src.labels, chunk)
                    continue
                block: RecordBlock | None = chunk
                while block is not None:
                    take = self._fits(block, max_lines - builder.lines, max_bytes - builder.size)
                    if take == 0 and builder.lines:
                        seal()
                        continue
                    take = max(take, 1)
                    if take < len(block.lines):
                        head, rest = block.split(take)
                        builder.add_block(src.path, src.labels, head)
                        seal()
                        block = rest
                    else:
                        builder.add_block(src.path, src.labels, block)
                        block = None
        if not self._more:
            seal()
        return out

    @staticmethod
    def _fits(block: RecordBlock, lines: int, size: int) -> int:
        """How many of the block's records fit in `lines` lines and `size` bytes."""
        n = len(block.lines)
        if n <= lines and int(block.ends[-1] - block.ends[0]) + len(block.lines[0]) + 2 * n \
                <= size:
            return n
        if lines <= 0 or size <= 0:
            return 0
        widths = np.diff(block.ends[:lines], prepend=block.ends[0] - len(block.lines[0]) - 1)
        return int(np.searchsorted(np.cumsum(widths + 1), size, side="right"))

    async def poll_once(self) -> int:
        """Read what is new in every file and submit it; returns the records read."""
        budget = self._budget()
        if not budget:
            return 0
        sources = list(self.sources.values())
        before = [src.tailer.bytes_read for src in sources]
        results = await asyncio.to_thread(self._read, sources, budget)
        self._more = any(src.tailer.bytes_read - b >= budget
                         for src, b in zip(sources, before, strict=True))
        count = sum(_count(c) for _, chunks in results for c in chunks)
        self.lines_read += count
        for batch, positions in self._batches(results):
            if self.sender is None:
                self.checkpoint.update(positions)
            else:
                self.sender.submit(batch, {"positions": {
                    p: pos.to_json() for p, pos in positions.items()}})
        self._expire(results)
        return count

    def _expire(self, results: list[tuple[LogSourceState, list[Chunk]]]) -> None:
        now = time.monotonic()
        for src, records in results:
            if (src.removed_at is not None and not records
                    and now - src.removed_at >= self.config.linger_seconds):
                src.tailer.close()
                self.sources.pop(src.path, None)

    def _on_ack(self, seq: int, meta: Mapping[str, Any]) -> None:
        update: dict[str, Position] = {}
        for path, pos in meta.get("positions", {}).items():
            if seq > self._acked_seq.get(path, 0):
                self._acked_seq[path] = seq
                update[path] = Position.from_json(pos)
        if update:  # written at the next commit, before these batches leave the spool
            self.checkpoint.positions.update(update)
            self._checkpoint_dirty = True

    def _commit(self) -> None:
        if self._checkpoint_dirty:
            self._checkpoint_dirty = False
            self.checkpoint.save()

    # -- live tail -------------------------------------------------------------------------

    def _publish(self, event: TailEvent) -> None:
        for sub in self._subscribers:
            if _matches(event.labels, sub.matcher):
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.dropped += 1

    def recent(self, matcher: Mapping[str, str], count: int) -> list[TailEvent]:
        events = [e for s in self.sources.values() for c in s.recent for e in s.events(c)
                  if _matches(e.labels, matcher)]
        events.sort(key=lambda e: e.time_ns)
        return events[-count:] if count > 0 else []

    def statuses(self) -> list[SourceStatus]:
        out = []
        for src in list(self.sources.values()):
            pos = self.checkpoint.positions.get(src.path)
            out.append(SourceStatus(src.path, src.labels, pos.offset if pos else 0,
                                    src.tailer.size(), src.tailer.rotations,
                                    src.tailer.truncations))
        return out

    async def tail(self, matcher: Mapping[str, str], initial: int, *, follow: bool
                   ) -> AsyncIterator[TailEvent]:
        """The newest `initial` records that match, then (with `follow`) each new one."""
        sub = self.subscribe(matcher) if follow else None
        try:
            for event in self.recent(matcher, initial):
                yield event
            while sub is not None:
                yield await sub.queue.get()
        finally:
            if sub is not None:
                self.unsubscribe(sub)

    def subscribe(self, matcher: Mapping[str, str]) -> _Subscriber:
        sub = _Subscriber(dict(matcher))
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.discovery.start()
        if self.sender is not None:
            self.sender.start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="logger")

    async def _loop(self) -> None:
        while True:
            self._more = False
            try:
                await self.poll_once()
            except Exception:
                log.exception("log tailing failed")
            # A file read up to the budget has more: read on once acks had their turn.
            await asyncio.sleep(0 if self._more else self.config.poll_interval_seconds)

    async def stop(self, flush_timeout: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.discovery.close()
        if self.sender is not None:
            await self.sender.close(flush_timeout)
        for src in self.sources.values():
            src.tailer.close()

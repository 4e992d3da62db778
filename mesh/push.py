"""Agents' delivery to the collector: a bounded, acknowledged, resending batch stream.

A `BatchSender` owns one bidirectional `CollectorService.PushMetrics` or `PushLogs` stream.
`submit()` numbers a batch (1 request per batch, `agent_id` + ascending `sequence`) and keeps it
in a bounded buffer until the collector acknowledges that sequence. At most `window` batches are
unacknowledged on the wire at once. When the stream fails, a fresh channel is opened after a
jittered exponential backoff and every unacknowledged batch is resent with its original
sequence number (the collector drops duplicates). When the buffer overflows, the oldest batches
are dropped and counted (`stats`), with one warning per overflow episode. With a spool
directory every buffered batch is also a file, so a restarted agent resends what was never
acknowledged. Sequences start at the current Unix time in microseconds (or after the highest
spooled one), so a restarted agent never reuses a number the collector has already seen.

An agent that serializes its batches itself submits a `RawBatch` (the bytes of every field but
`agent_id` and `sequence`); it goes on the wire as it is. With `commit_interval`, acknowledged
batches are committed together: `on_commit` runs (the agent writes its checkpoint once), and only
then are their spool files removed, so a crash in between resends them (as duplicates, which the
collector drops) rather than losing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import grpc

from aifb.mesh.backoff import Backoff
from aifb.mesh.private import private_dir
from aifb.mesh.protowire import varint
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2

__all__ = ["AGENT_ID_HEADER", "AGENT_INSTANCE_HEADER", "INSTANCE", "RETRYABLE_CODES", "Backoff",
           "BatchSender", "PushStats", "RawBatch", "batch_items", "default_agent_id"]

log = logging.getLogger(__name__)

# Stream headers: the agent id every batch of the stream carries, and this process's
# instance (the collector refuses a second process streaming as the same agent).
AGENT_ID_HEADER = "aifb-agent-id"
AGENT_INSTANCE_HEADER = "aifb-agent-instance"
INSTANCE = uuid.uuid4().hex[:16]


def default_agent_id(role: str, node: str, listen: str = "") -> str:
    """`<role>@<node>:<port>` for an agent serving on a fixed port (stable across restarts,
    unique per host); `<role>@<node>/<pid>` for one that serves on no fixed port."""
    port = listen.rsplit(":", 1)[-1] if ":" in listen else ""
    if port.isdigit() and int(port) > 0:
        return f"{role}@{node}:{port}"
    return f"{role}@{node}/{os.getpid()}"



class RawBatch:
    """A MetricBatch or LogBatch the agent serialized itself, without `agent_id` (field 1) and
    `sequence` (field 2), which `submit` sets; `items` is its sample or line count."""

    __slots__ = ("agent_id", "body", "items", "sequence")

    def __init__(self, body: bytes, items: int) -> None:
        self.body = body
        self.items = items
        self.agent_id = ""
        self.sequence = 0

    def SerializeToString(self) -> bytes:
        agent = self.agent_id.encode()
        head = (b"\x0a" + varint(len(agent)) + agent) if agent else b""
        if self.sequence:
            head += b"\x10" + varint(self.sequence)
        return head + self.body

    def ByteSize(self) -> int:
        return len(self.body) + len(self.agent_id.encode()) + 13


def _request_bytes(request: Any) -> bytes:
    """PushMetricsRequest / PushLogsRequest bytes: a message, or a raw batch's wrapped bytes."""
    if isinstance(request, bytes):
        return request
    return bytes(request.SerializeToString())


Batch = telemetry_pb2.MetricBatch | telemetry_pb2.LogBatch | RawBatch
Kind = Literal["metrics", "logs"]
ChannelFactory = Callable[[], grpc.aio.Channel]
AckCallback = Callable[[int, Mapping[str, Any]], None]

# Codes after which reconnecting may help (as OTLP exporters name them); others are logged as
# errors and retried at the longest backoff, since an agent must never stop delivering.
RETRYABLE_CODES = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
_HEADER = struct.Struct(">I")
# Sequence numbers reserved at once in the spool's sequence file (restarts skip the unused rest;
# numbers are Unix microseconds, so a restart moves past far more than this anyway).
_SEQUENCE_BLOCK = 1024
_VALUES, _LINES = attrgetter("values"), attrgetter("lines")


def batch_items(batch: Batch) -> int:
    """Samples in a metric batch, lines in a log batch."""
    if isinstance(batch, RawBatch):
        return batch.items
    if isinstance(batch, telemetry_pb2.MetricBatch):
        return sum(map(len, map(_VALUES, batch.series)))
    return sum(map(len, map(_LINES, batch.streams)))


@dataclass
class PushStats:
    """Counters since the sender started (all monotonic except `buffered_*`)."""

    submitted_batches: int = 0
    acked_batches: int = 0
    duplicate_batches: int = 0
    resent_batches: int = 0
    rejected_items: int = 0
    dropped_batches: int = 0
    dropped_items: int = 0
    overflow_episodes: int = 0
    reconnects: int = 0
    buffered_batches: int = 0
    buffered_bytes: int = 0


@dataclass
class _Pending:
    batch: Batch
    size: int
    items: int
    meta: dict[str, Any]
    sent_generation: int = -1
    sent_at: float = 0.0


class BatchSender:
    """Streams batches to the collector; see the module docstring for the guarantees."""

    def __init__(self, kind: Kind, agent_id: str, connect: ChannelFactory, *,
                 max_batches: int = 1000, max_bytes: int = 64 * 1024 * 1024, window: int = 16,
                 spool_dir: Path | None = None, backoff: Backoff | None = None,
                 ack_timeout: float = 30.0, connect_timeout: float = 5.0,
                 on_ack: AckCallback | None = None, on_commit: Callable[[], None] | None = None,
                 commit_interval: float = 0.0) -> None:
        if max_batches < 1 or window < 1:
            raise ValueError("max_batches and window must be at least 1")
        self.kind: Kind = kind
        self.agent_id = agent_id
        self.stats = PushStats()
        self._connect = connect
        self._max_batches = max_batches
        self._max_bytes = max_bytes
        # Fewer on the wire than the buffer holds, so overflow can drop a batch not yet sent.
        self._window = min(window, max(1, max_batches - 1))
        self._connect_timeout = connect_timeout
        self._spool = spool_dir
        self._backoff = backoff or Backoff()
        self._ack_timeout = ack_timeout
        self._on_ack = on_ack
        self._on_commit = on_commit
        self._commit_interval = commit_interval if on_commit is not None else 0.0
        self._uncommitted: list[int] = []
        self._commit_timer: asyncio.TimerHandle | None = None
        self._buffer: OrderedDict[int, _Pending] = OrderedDict()
        self._changed = asyncio.Event()
        self._generation = 0
        self._overflowing = False
        self._episode_drops = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        highest = self._load_spool()
        self._next_sequence = max(time.time_ns() // 1000, highest + 1, self._last_used() + 1)
        self._reserved = 0  # numbers up to this one are recorded as used (see _remember_sequence)

    # -- public API ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def room(self) -> int:
        """How many more batches fit before the buffer drops the oldest."""
        return self._max_batches - len(self._buffer)

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        """Unacknowledged (sequence, meta) pairs, oldest first (includes ones loaded from spool)."""
        return [(seq, p.meta) for seq, p in self._buffer.items()]

    def submit(self, batch: Batch, meta: Mapping[str, Any] | None = None) -> int:
        """Number the batch, buffer (and spool) it, and return its sequence. Never blocks."""
        seq = self._next_sequence
        self._next_sequence += 1
        batch.agent_id = self.agent_id
        batch.sequence = seq
        pending = _Pending(batch=batch, size=batch.ByteSize(), items=batch_items(batch),
                           meta=dict(meta or {}))
        if self._spool is not None:
            self._write_spool(seq, pending)
            if seq > self._reserved:
                self._remember_sequence(seq + _SEQUENCE_BLOCK)
        self._buffer[seq] = pending
        self.stats.submitted_batches += 1
        self.stats.buffered_bytes += pending.size
        self._enforce_bounds()
        self._sync_gauges()
        self._notify()
        return seq

    def start(self) -> None:
        """Start delivering in the background (on the running event loop)."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=f"push-{self.kind}")

    async def flush(self, timeout: float) -> bool:
        """Wait until every buffered batch is acknowledged; False when the timeout came first."""
        deadline = time.monotonic() + timeout
        while self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, 0.5))
        return True

    async def close(self, flush_timeout: float = 0.0) -> None:
        """Optionally flush, then stop. Unacknowledged batches stay in the spool, if any."""
        if flush_timeout > 0:
            await self.flush(flush_timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.commit()

    def commit(self) -> None:
        """Run `on_commit` for the batches acknowledged since the last commit, then remove
        their spool files (a no-op without `commit_interval`)."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
            self._commit_timer = None
        if not self._uncommitted:
            return
        done, self._uncommitted = self._uncommitted, []
        try:
            if self._on_commit is not None:
                self._on_commit()
        except Exception:
            log.exception("commit callback failed for %d %s batches", len(done), self.kind)
            return  # their spool files stay: a restart resends them as duplicates
        for seq in done:
            self._unlink_spool(seq)

    # -- buffer ----------------------------------------------------------------------------

    def _enforce_bounds(self) -> None:
        while self._buffer and (len(self._buffer) > self._max_batches
                                or self.stats.buffered_bytes > self._max_bytes):
            seq = self._victim()
            dropped = self._buffer.pop(seq)
            self.stats.buffered_bytes -= dropped.size
            self.stats.dropped_batches += 1
            self.stats.dropped_items += dropped.items
            self._episode_drops += 1
            self._unlink_spool(seq)
            if not self._overflowing:
                self._overflowing = True
                self.stats.overflow_episodes += 1
                log.warning("%s buffer full (%d batches, %d bytes): dropping the oldest batches "
                            "until the collector catches up", self.kind, self._max_batches,
                            self._max_bytes)

    def _victim(self) -> int:
        """The oldest batch not on the wire now (one on the wire may still be acknowledged, and
        dropping it would count a batch that was delivered); the oldest if all are."""
        for seq, pending in self._buffer.items():
            if pending.sent_generation != self._generation or not self._connected:
                return seq
        return next(iter(self._buffer))

    def _end_overflow_if_drained(self) -> None:
        if self._overflowing and len(self._buffer) <= self._max_batches // 2:
            log.warning("%s buffer drained: %d batches were dropped in this overflow episode",
                        self.kind, self._episode_drops)
            self._overflowing = False
            self._episode_drops = 0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _sync_gauges(self) -> None:
        self.stats.buffered_batches = len(self._buffer)

    def _acknowledge(self, seq: int, duplicate: bool, rejected: int, error: str) -> None:
        pending = self._buffer.pop(seq, None)
        if pending is None:
            return  # dropped meanwhile, or an ack repeated after a resend
        self.stats.buffered_bytes -= pending.size
        self.stats.acked_batches += 1
        self.stats.duplicate_batches += int(duplicate)
        if rejected:
            self.stats.rejected_items += rejected
            log.warning("collector rejected %d of %d %s items of batch %d: %s", rejected,
                        pending.items, self.kind, seq, error)
        if self._on_ack is not None:
            try:
                self._on_ack(seq, pending.meta)
            except Exception:
                log.exception("ack callback failed for %s batch %d", self.kind, seq)
        if self._commit_interval > 0:
            self._uncommitted.append(seq)
            if self._commit_timer is None:
                self._commit_timer = asyncio.get_running_loop().call_later(
                    self._commit_interval, self.commit)
        else:
            self._unlink_spool(seq)
        self._sync_gauges()
        self._end_overflow_if_drained()
        self._notify()

    # -- spool -----------------------------------------------------------------------------

    def _spool_path(self, seq: int) -> Path:
        assert self._spool is not None
        return self._spool / f"{seq:020d}.{self.kind}.batch"

    def _write_spool(self, seq: int, pending: _Pending) -> None:
        assert self._spool is not None
        meta = json.dumps(pending.meta).encode()
        path = self._spool_path(seq)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(_HEADER.pack(len(meta)) + meta + pending.batch.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _last_used(self) -> int:
        """The last sequence a previous run used (a clock stepped back must not reuse one)."""
        if self._spool is None:
            return 0
        try:
            return int((self._spool / f"{self.kind}.sequence").read_text())
        except (OSError, ValueError):
            return 0

    def _remember_sequence(self, seq: int) -> None:
        """Record every number up to `seq` as used (before any of them is), so that the file is
        written once per `_SEQUENCE_BLOCK` batches; a restart starts after the whole block."""
        assert self._spool is not None
        path = self._spool / f"{self.kind}.sequence"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(seq))
        os.replace(tmp, path)
        self._reserved = seq

    def _unlink_spool(self, seq: int) -> None:
        if self._spool is not None:
            with contextlib.suppress(FileNotFoundError):
                self._spool_path(seq).unlink()

    def _load_spool(self) -> int:
        if self._spool is None:
            return 0
        private_dir(self._spool)
        cls = telemetry_pb2.MetricBatch if self.kind == "metrics" else telemetry_pb2.LogBatch
        highest = 0
        for path in sorted(self._spool.glob(f"*.{self.kind}.batch")):
            try:
                data = path.read_bytes()
                (length,) = _HEADER.unpack_from(data)
                meta = json.loads(data[4:4 + length])
                batch = cls.FromString(data[4 + length:])
            except (OSError, ValueError, struct.error) as exc:
                log.warning("ignoring unreadable spool file %s: %s", path, exc)
                continue
            seq = batch.sequence
            highest = max(highest, seq)
            # Ours now, whatever id the run that spooled it had (streams name one agent).
            batch.agent_id = self.agent_id
            self._buffer[seq] = _Pending(batch=batch, size=batch.ByteSize(),
                                         items=batch_items(batch), meta=meta)
            self.stats.buffered_bytes += batch.ByteSize()
        if self._buffer:
            log.info("resending %d %s batches from spool %s", len(self._buffer), self.kind,
                     self._spool)
        self._sync_gauges()
        return highest

    # -- the stream ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._generation += 1
            failure = await self._session(self._generation)
            self._connected = False
            self.stats.reconnects += 1
            if failure is not None and failure not in RETRYABLE_CODES:
                self._backoff.attempt = 64  # a permanent-looking error: retry at the slowest
            delay = self._backoff.next_delay()
            log.info("%s stream ended (%s); reconnecting in %.2fs", self.kind,
                     failure.name if failure else "closed", delay)
            await asyncio.sleep(delay)

    async def _session(self, generation: int) -> grpc.StatusCode | None:
        channel = self._connect()
        try:  # no stream before the channel is up: writes must not queue in a call that waits
            await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            await channel.close(None)
            return grpc.StatusCode.UNAVAILABLE
        self._connected = True
        stub = collector_pb2_grpc.CollectorServiceStub(channel)
        headers = ((AGENT_ID_HEADER, self.agent_id), (AGENT_INSTANCE_HEADER, INSTANCE))
        if self.kind == "metrics":
            call: Any = stub.PushMetrics(metadata=headers)
        else:  # requests may be messages or the bytes of a RawBatch's request
            push_logs: Any = channel.stream_stream(
                "/aifb.v1.CollectorService/PushLogs", request_serializer=_request_bytes,
                response_deserializer=collector_pb2.PushLogsResponse.FromString)
            call = push_logs(metadata=headers)
        reader = asyncio.ensure_future(self._read_acks(call))
        writer = asyncio.ensure_future(self._write_batches(call, generation))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, grpc.aio.AioRpcError):
                    code: grpc.StatusCode = exc.code()
                    if code not in RETRYABLE_CODES:
                        log.error("collector refused the %s stream: %s %s", self.kind,
                                  code.name, exc.details())
                    return code
                if exc is not None:
                    log.warning("%s stream failed: %r", self.kind, exc)
            return None
        finally:
            for task in (reader, writer):
                task.cancel()
            call.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await channel.close(None)

    async def _read_acks(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            self._backoff.reset()
            if self.kind == "metrics":
                self._acknowledge(response.sequence, response.duplicate,
                                  response.rejected_samples, response.error_message)
            else:
                self._acknowledge(response.sequence, response.duplicate,
                                  response.rejected_lines, response.error_message)

    async def _write_batches(self, call: Any, generation: int) -> None:
        while True:
            changed = self._changed
            in_flight = 0
            oldest_sent: float | None = None
            to_send: tuple[int, _Pending] | None = None
            # Sent batches form a prefix of the buffer: send in order, append at the end.
            for seq, pending in self._buffer.items():
                if pending.sent_generation != generation:
                    to_send = (seq, pending)
                    break
                in_flight += 1
                if oldest_sent is None:
                    oldest_sent = pending.sent_at
            now = time.monotonic()
            if oldest_sent is not None and now - oldest_sent > self._ack_timeout:
                log.warning("no %s ack for %.0fs: reconnecting", self.kind, self._ack_timeout)
                return
            if to_send is None or in_flight >= self._window:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 1.0)
                continue
            seq, pending = to_send
            if pending.sent_generation >= 0:
                self.stats.resent_batches += 1
            pending.sent_generation = generation
            pending.sent_at = now
            batch = pending.batch
            request: Any
            if isinstance(batch, RawBatch):
                data = batch.SerializeToString()
                request = b"\x0a" + varint(len(data)) + data
            elif isinstance(batch, telemetry_pb2.MetricBatch):
                request = collector_pb2.PushMetricsRequest(batch=batch)
            else:
                request = collector_pb2.PushLogsRequest(batch=batch)
            await call.write(request)

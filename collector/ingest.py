"""Ingest: per-agent dedup, validation, the bounded forwarding queues and their workers.

"Durably accepted" means: validated, written to the local stores, and placed in the bounded
in-memory forwarding queue (or, with no forwarding target, kept locally). From then on the
collector owns the batch: it is forwarded, or counted as rejected or dropped; stop() drains the
queues for `drain_seconds`. There is no on-disk WAL: a crash loses what is queued, which the
agents' own unacknowledged-batch buffers cannot replay. When a queue is full the push waits
(gRPC flow control reaches the agent), and after `enqueue_timeout_seconds` answers
RESOURCE_EXHAUSTED, which agents retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from aifb.collector.config import CollectorConfig
from aifb.collector.convert import metric_batch_from_wire
from aifb.collector.fast_logs import log_batch_from_wire, prepare_logs, read_log_view
from aifb.collector.fast_metrics import FastMetrics, read_metric_view
from aifb.collector.loki import LokiForwarder
from aifb.collector.model import Labels, LogBatchIn, MetricBatchIn, PushOutcome
from aifb.collector.packed import PackedSeries, pack_series
from aifb.collector.raw_metrics import RawMetrics, read_raw_batch
from aifb.collector.remote_write import RemoteWriter
from aifb.collector.stats import Stats
from aifb.collector.stores import LatestStore, LogStore, TraceStore
from aifb.collector.validate import PreparedLogs, Validator
from aifb.mesh.access import job_may_push, operator_name
from aifb.mesh.auth import Principal
from aifb.mesh.errors import InvalidArgument, PermissionDenied, ResourceExhausted

__all__ = ["Ingest", "SequenceWindow"]

log = logging.getLogger(__name__)


@dataclass
class _AgentWindow:
    highest: int = 0
    seen: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SequenceWindow:
    """Which sequence numbers each agent has had accepted (the last `size` of them).

    A number already accepted, or older than the window, is a duplicate (a resend)."""

    def __init__(self, size: int, max_agents: int = 50_000) -> None:
        self.size = size
        self.max_agents = max_agents
        self.agents: dict[str, _AgentWindow] = {}

    def agent(self, agent_id: str) -> _AgentWindow:
        found = self.agents.get(agent_id)
        if found is None:
            found = self.agents[agent_id] = _AgentWindow()
            if len(self.agents) > self.max_agents:  # the longest-known agent that is idle
                oldest = next((k for k, w in self.agents.items() if not w.lock.locked()), None)
                if oldest is not None and oldest != agent_id:
                    del self.agents[oldest]
        return found

    def forget_if_unused(self, agent_id: str) -> None:
        """Drop the window of an agent none of whose batches was accepted (a refused batch
        must not leave state behind: hostile ids would grow the map without end)."""
        window = self.agents.get(agent_id)
        if window is not None and window.highest == 0 and not window.seen:
            del self.agents[agent_id]

    def is_duplicate(self, agent: _AgentWindow, sequence: int) -> bool:
        # 0 is no sequence number: never a resend, so validation refuses it (INVALID_ARGUMENT).
        return sequence > 0 and (sequence in agent.seen or sequence <= agent.highest - self.size)

    def mark(self, agent: _AgentWindow, sequence: int) -> None:
        agent.seen.add(sequence)
        agent.highest = max(agent.highest, sequence)
        if len(agent.seen) > 2 * self.size:
            floor = agent.highest - self.size
            agent.seen = {s for s in agent.seen if s > floor}


@dataclass(slots=True)
class _Ready:
    """A validated metric batch: what to forward, the counts for the ack, and the local store
    update to run once it is accepted."""

    packed: PackedSeries | None
    received: int
    accepted: int
    rejected: int
    clamped: int
    reasons: list[str]
    update_latest: Callable[[], None]
    # Every accepted series' labels, for the job-token check (built only when asked).
    label_sets: Callable[[], list[Labels]]


def _agent_key(agent_id: str, who: Principal | None) -> str:
    """Sequence numbers are per pushing identity: another user reusing an agent's id (with
    high numbers) would otherwise make that agent's next batches look like resends."""
    return agent_id if who is None else f"{who.user}/{who.service}/{agent_id}"


def _message(reasons: list[str]) -> str:
    text = "; ".join(reasons[:5])
    return text + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")


class Ingest:
    """Accepts agent batches and feeds the stores and forwarders; knows nothing of gRPC."""

    def __init__(self, config: CollectorConfig, stats: Stats, *,
                 remote: RemoteWriter | None = None, loki: LokiForwarder | None = None) -> None:
        self.config = config
        self.stats = stats
        self.remote = remote
        self.loki = loki
        self.validator = Validator(config)
        self.fast = FastMetrics(self.validator)
        self.raw = RawMetrics(self.validator)
        self.latest = LatestStore(config.latest_max_series)
        self.logs = LogStore(config.log_store_max_lines)
        self.traces = TraceStore(config.trace_store_max_spans)
        self.metric_seqs = SequenceWindow(config.dedup_window)
        self.log_seqs = SequenceWindow(config.dedup_window)
        per_worker = max(1, config.queue_max_batches // config.forward_workers)
        self._metric_queues: list[asyncio.Queue[PackedSeries]] = (
            [asyncio.Queue(per_worker) for _ in range(config.forward_workers)] if remote else [])
        self._log_queue: asyncio.Queue[list[tuple[tuple[tuple[str, str], ...], list[int],
                                                  list[str] | list[bytes]]]] = asyncio.Queue(
                                                      per_worker)
        stats.queue_capacity = per_worker * (len(self._metric_queues) + (1 if loki else 0))
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def start(self) -> None:
        for queue in self._metric_queues:
            self._tasks.append(asyncio.create_task(self._metric_worker(queue)))
        if self.loki is not None:
            self._tasks.append(asyncio.create_task(self._log_worker(self.loki)))

    def queue_depth(self) -> int:
        depth = sum(q.qsize() for q in self._metric_queues)
        return depth + (self._log_queue.qsize() if self.loki else 0)

    async def _enqueue(self, queue: asyncio.Queue[object], item: object) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(queue.put(item), self.config.enqueue_timeout_seconds)
            except TimeoutError:
                raise ResourceExhausted(
                    f"collector queue full for {self.config.enqueue_timeout_seconds:g}s "
                    "(forwarding is behind); retry later") from None

    def _general(self, batch: MetricBatchIn) -> _Ready:
        prepared = self.validator.metrics(batch)
        packed = pack_series(prepared.series) if prepared.series and self._metric_queues \
            else None
        return _Ready(packed, prepared.received, prepared.accepted, prepared.rejected,
                      prepared.clamped, prepared.reasons,
                      lambda: self.latest.update(prepared.series),
                      lambda: [s.labels for s in prepared.series])

    async def push_metrics(self, batch: MetricBatchIn, who: Principal | None = None
                           ) -> PushOutcome:
        return await self._push_metrics(batch.agent_id, batch.sequence,
                                        lambda: self._general(batch), who)

    async def push_metrics_wire(self, data: bytes, who: Principal | None = None
                                ) -> PushOutcome:
        """A serialized PushMetricsRequest: the raw path (`RawMetrics`) when every series
        has the same sample count, the view path (`FastMetrics`) for other regular batches,
        else the general one; whichever it is, the same checks, counts and answers."""
        raw = read_raw_batch(data)
        if raw is None:
            return await self.push_metrics(metric_batch_from_wire(data), who)

        def prepare() -> _Ready:
            fast = self.raw.prepare(raw)  # the usual batch; then the view path, then general
            if fast is None:
                view = read_metric_view(data)
                fast = self.fast.prepare(view) if view is not None else None
            if fast is None:
                return self._general(metric_batch_from_wire(data))
            done = fast
            return _Ready(done.packed if self._metric_queues else None, done.received,
                          done.received, 0, 0, [],
                          lambda: self.latest.update_packed(done.keys, done.packed.labels,
                                                            done.last_timestamps,
                                                            done.last_values, done.series),
                          lambda: done.packed.labels)
        return await self._push_metrics(raw.agent_id, raw.sequence, prepare, who)

    async def _push_metrics(self, agent_id: str, sequence: int,
                            prepare: Callable[[], _Ready], who: Principal | None) -> PushOutcome:
        stats = self.stats
        stats.metric_batches_received += 1
        agent = self.metric_seqs.agent(_agent_key(agent_id, who))
        async with agent.lock:
            if self.metric_seqs.is_duplicate(agent, sequence):
                stats.metric_batches_duplicate += 1
                return PushOutcome(sequence, duplicate=True)
            try:
                ready = prepare()
                if who is not None and who.is_job:
                    job_may_push(who, ready.label_sets())
            except (InvalidArgument, PermissionDenied):
                stats.metric_batches_invalid += 1
                self.metric_seqs.forget_if_unused(_agent_key(agent_id, who))
                raise
            if ready.packed is not None:
                shard = zlib.crc32(agent_id.encode()) % len(self._metric_queues)
                await self._enqueue(self._metric_queues[shard],  # type: ignore[arg-type]
                                    ready.packed)
            self.metric_seqs.mark(agent, sequence)
            stats.note_agent(agent_id, agent.highest)
        ready.update_latest()
        stats.metric_samples_received += ready.received
        stats.metric_samples_accepted += ready.accepted
        stats.metric_samples_rejected += ready.rejected
        stats.metric_samples_clamped += ready.clamped
        return PushOutcome(sequence, accepted=ready.accepted, rejected=ready.rejected,
                           error_message=_message(ready.reasons))

    async def push_logs(self, batch: LogBatchIn, who: Principal | None = None) -> PushOutcome:
        return await self._push_logs(batch.agent_id, batch.sequence,
                                     lambda: self.validator.logs(batch), who)

    async def push_logs_wire(self, data: bytes, who: Principal | None = None) -> PushOutcome:
        """A serialized PushLogsRequest: the fast path (`fast_logs`, lines kept as bytes) when
        the view reads it exactly, else the general one; the same checks, counts and answers."""
        try:
            view = read_log_view(data)
            batch = log_batch_from_wire(data) if view is None else None
        except InvalidArgument:  # not decodable: counted as an invalid batch
            self.stats.log_batches_received += 1
            self.stats.log_batches_invalid += 1
            raise
        if view is None:
            assert batch is not None
            return await self.push_logs(batch, who)

        def prepare() -> PreparedLogs:
            prepared = prepare_logs(self.validator, view)
            return self.validator.logs(log_batch_from_wire(data)) if prepared is None \
                else prepared
        return await self._push_logs(view.agent_id, view.sequence, prepare, who)

    async def _push_logs(self, agent_id: str, sequence: int,
                         prepare: Callable[[], PreparedLogs], who: Principal | None
                         ) -> PushOutcome:
        stats = self.stats
        stats.log_batches_received += 1
        agent = self.log_seqs.agent(_agent_key(agent_id, who))
        async with agent.lock:
            if self.log_seqs.is_duplicate(agent, sequence):
                stats.log_batches_duplicate += 1
                return PushOutcome(sequence, duplicate=True)
            try:
                prepared = prepare()
                job_may_push(who, (labels for labels, _, _ in prepared.streams))
            except (InvalidArgument, PermissionDenied):
                stats.log_batches_invalid += 1
                self.log_seqs.forget_if_unused(_agent_key(agent_id, who))
                raise
            if prepared.streams and self.loki is not None:
                await self._enqueue(self._log_queue, prepared.streams)  # type: ignore[arg-type]
            self.log_seqs.mark(agent, sequence)
        owner = who.user if who is not None else operator_name()
        for labels, stamps, lines in prepared.streams:
            self.logs.add_stream(labels, stamps, lines, owner)
        stats.log_lines_received += prepared.received
        stats.log_lines_accepted += prepared.accepted
        stats.log_lines_rejected += prepared.rejected
        return PushOutcome(sequence, accepted=prepared.accepted,
                           rejected=prepared.rejected, error_message=_message(prepared.reasons))

    async def _metric_worker(self, queue: asyncio.Queue[PackedSeries]) -> None:
        assert self.remote is not None
        limit = self.config.remote_write_max_samples
        while True:
            items = [await queue.get()]
            samples = items[0].sample_count
            while samples < limit and not queue.empty():
                more = queue.get_nowait()
                items.append(more)
                samples += more.sample_count
            taken = len(items)
            try:
                await self.remote.write_packed(PackedSeries.concat(items))
            except Exception:  # a bug must not kill the worker: count and go on
                log.exception("remote write failed unexpectedly; %d samples dropped", samples)
                self.stats.metric_samples_dropped += samples
            finally:
                for _ in range(taken):
                    queue.task_done()

    async def _log_worker(self, loki: LokiForwarder) -> None:
        queue = self._log_queue
        while True:
            due = loki.due_in()
            try:
                item = await (queue.get() if due is None else asyncio.wait_for(queue.get(), due))
            except TimeoutError:
                await self._flush_logs(loki)
                continue
            loki.add(item)
            queue.task_done()
            if loki.due_in() == 0.0:
                await self._flush_logs(loki)

    async def _flush_logs(self, loki: LokiForwarder) -> None:
        try:
            await loki.flush(self._stop)
        except Exception:
            log.exception("loki push failed unexpectedly")

    async def stop(self) -> None:
        """Drain the queues for up to `drain_seconds`, then end the workers."""
        queues: list[asyncio.Queue[object]] = [*self._metric_queues]  # type: ignore[list-item]
        if self.loki is not None:
            queues.append(self._log_queue)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in queues)),
                                   self.config.drain_seconds)
        except TimeoutError:
            log.warning("collector stopping with %d batches still queued", self.queue_depth())
        self._stop.set()
        if self.remote is not None:
            # Retries now give up at once (counting what they hold as dropped); let them.
            self.remote.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in queues)),
                                       self.config.remote_write_timeout_seconds)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.loki is not None:
            await self._flush_logs(self.loki)
        for queue in self._metric_queues:
            while not queue.empty():
                self.stats.metric_samples_dropped += queue.get_nowait().sample_count

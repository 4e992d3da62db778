"""Ingest: per-agent dedup, validation, the bounded forwarding queues and their workers.

An acknowledgement means the batch is where it is going: a batch is acknowledged when Prometheus
(remote write) or Loki has accepted it, or refused it for good (the ack says how many items and
why), or, for a kind with no forwarding target, when it is in the local stores. Until then the
agent keeps it (bounded, spooled) and resends it after a reconnect; there is no collector-side
WAL (see docs/telemetry.md, "Delivery"). `accept_*` validates a batch and queues it, returning a
future of its acknowledgement, so a stream has many batches in flight at once.

Resends are dropped by sequence number per pushing identity and agent: a sequence already
delivered is answered "duplicate" at once, one still in flight is answered when that delivery
settles. When a queue is full the push waits (gRPC flow control reaches the agent), and after
`enqueue_timeout_seconds` answers RESOURCE_EXHAUSTED, which agents retry. `stop()` refuses new
batches (UNAVAILABLE), forwards what was accepted for up to `drain_seconds`, and fails the rest
with `NotDelivered`: unacknowledged, their agents resend them to the next collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aifb.collector.agents import AgentRegistry
from aifb.collector.config import CollectorConfig
from aifb.collector.convert import metric_batch_from_wire
from aifb.collector.fast_logs import log_batch_from_wire, prepare_logs, read_log_view
from aifb.collector.fast_metrics import FastMetrics, read_metric_view
from aifb.collector.loki import LokiForwarder
from aifb.collector.model import (
    Labels,
    LogBatchIn,
    MetricBatchIn,
    NotDelivered,
    PushOutcome,
    Settled,
)
from aifb.collector.packed import PackedSeries, pack_series
from aifb.collector.raw_metrics import RawMetrics, read_raw_batch
from aifb.collector.remote_write import RemoteWriter
from aifb.collector.sequences import Ack, AgentWindow, SequenceWindow, observed, resend
from aifb.collector.stats import Stats
from aifb.collector.stores import LatestStore, LogStore, TraceStore
from aifb.collector.validate import PreparedLogs, Validator
from aifb.mesh.access import job_may_push, operator_name
from aifb.mesh.auth import Principal
from aifb.mesh.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unavailable

__all__ = ["Ack", "Ingest", "SequenceWindow"]

log = logging.getLogger(__name__)

@dataclass(slots=True)
class _Ready:
    """A validated metric batch: what to forward, the counts for the ack, and the local store
    update to run once it is delivered."""

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


def _not_the_streams_agent(agent_id: str, expected: str) -> InvalidArgument:
    return InvalidArgument(f"batch agent_id {agent_id[:256]!r} is not the agent this stream "
                           f"named at its start ({expected!r})", field="batch.agent_id")


@dataclass
class DrainReport:
    """What a stop did: batches and items delivered while draining, left with their agents
    (not delivered, not acknowledged), and refused because the collector was stopping."""

    delivered_batches: int = 0
    returned_batches: int = 0
    returned_samples: int = 0
    returned_lines: int = 0
    refused_batches: int = 0


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
        self._metric_queues: list[asyncio.Queue[tuple[PackedSeries, asyncio.Future[Settled]]]] \
            = [asyncio.Queue(per_worker) for _ in range(config.forward_workers)] if remote else []
        self._log_queue: asyncio.Queue[tuple[list[tuple[tuple[tuple[str, str], ...], list[int],
                                                        list[str] | list[bytes]]],
                                             asyncio.Future[Settled], int]] = asyncio.Queue(
                                                 per_worker)
        stats.queue_capacity = per_worker * (len(self._metric_queues) + (1 if loki else 0))
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        # Deliveries not yet settled, with their kind and item count (for the stop report).
        self._unsettled: dict[asyncio.Future[Settled], tuple[str, int]] = {}
        self.agents = AgentRegistry()
        self.closing = False
        self.drain = DrainReport()

    def start(self) -> None:
        for queue in self._metric_queues:
            self._tasks.append(asyncio.create_task(self._metric_worker(queue)))
        if self.loki is not None:
            self._tasks.append(asyncio.create_task(self._log_worker(self.loki)))

    def queue_depth(self) -> int:
        depth = sum(q.qsize() for q in self._metric_queues)
        return depth + (self._log_queue.qsize() if self.loki else 0)

    def _admit(self, seqs: SequenceWindow, agent_id: str, who: Principal | None,
               expect_agent: str) -> tuple[str, AgentWindow]:
        """The agent's window for a new batch: refused while stopping (UNAVAILABLE) or when it
        names another agent than its stream did (INVALID_ARGUMENT)."""
        if self.closing:
            self.drain.refused_batches += 1
            raise Unavailable("the collector is stopping: resend to its successor")
        if expect_agent and agent_id != expect_agent:
            raise _not_the_streams_agent(agent_id, expect_agent)
        key = _agent_key(agent_id, who)
        return key, seqs.agent(key)

    async def _enqueue(self, queue: asyncio.Queue[Any], item: object) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            try:
                await asyncio.wait_for(queue.put(item), self.config.enqueue_timeout_seconds)
            except TimeoutError:
                raise ResourceExhausted(
                    f"collector queue full for {self.config.enqueue_timeout_seconds:g}s "
                    "(forwarding is behind); retry later") from None

    async def _hand_over(self, queue: asyncio.Queue[Any], item: object,
                         delivery: asyncio.Future[Settled], agent: AgentWindow, sequence: int,
                         ack: Ack, settle: Callable[[asyncio.Future[Settled]], None]) -> None:
        """Queue a batch for its forwarder; from then on it is in flight, and `settle` answers
        its ack. Not queued (full, or the stream went away): its delivery is cancelled."""
        try:
            await self._enqueue(queue, item)
        except BaseException:
            delivery.cancel()
            raise
        agent.inflight[sequence] = ack
        delivery.add_done_callback(settle)

    def _delivery(self, kind: str, items: int) -> asyncio.Future[Settled]:
        """A future settled when the forwarder is done with `items` samples or lines; they
        count as held until then. Cancelled: they were never queued."""
        delivery: asyncio.Future[Settled] = asyncio.get_running_loop().create_future()
        self._unsettled[delivery] = (kind, items)
        if kind == "metrics":
            self.stats.metric_samples_held += items
        else:
            self.stats.log_lines_held += items
        delivery.add_done_callback(self._settled)
        return delivery

    def _settled(self, delivery: asyncio.Future[Settled]) -> None:
        kind, items = self._unsettled.pop(delivery, ("", 0))
        if kind == "metrics":
            self.stats.metric_samples_held -= items
        elif kind == "logs":
            self.stats.log_lines_held -= items
        if delivery.cancelled():
            return
        failed = delivery.exception() is not None
        if self.closing:
            if failed:
                self.drain.returned_batches += 1
                if kind == "metrics":
                    self.drain.returned_samples += items
                else:
                    self.drain.returned_lines += items
            else:
                self.drain.delivered_batches += 1
        if failed:
            if kind == "metrics":
                self.stats.metric_samples_returned += items
            else:
                self.stats.log_lines_returned += items

    def _general(self, batch: MetricBatchIn) -> _Ready:
        prepared = self.validator.metrics(batch)
        packed = pack_series(prepared.series) if prepared.series and self._metric_queues \
            else None
        return _Ready(packed, prepared.received, prepared.accepted, prepared.rejected,
                      prepared.clamped, prepared.reasons,
                      lambda: self.latest.update(prepared.series),
                      lambda: [s.labels for s in prepared.series])

    # -- metrics ---------------------------------------------------------------------------

    async def push_metrics(self, batch: MetricBatchIn, who: Principal | None = None
                           ) -> PushOutcome:
        """Accept one batch and wait for its acknowledgement."""
        return await (await self.accept_metrics(batch, who))

    async def push_metrics_wire(self, data: bytes, who: Principal | None = None
                                ) -> PushOutcome:
        return await (await self.accept_metrics_wire(data, who))

    async def accept_metrics(self, batch: MetricBatchIn, who: Principal | None = None, *,
                             expect_agent: str = "") -> Ack:
        """Validate and queue one batch; the future is its acknowledgement. `expect_agent`:
        the agent id the stream named at its start (every batch must carry it)."""
        return await self._accept_metrics(batch.agent_id, batch.sequence,
                                          lambda: self._general(batch), who, expect_agent)

    async def accept_metrics_wire(self, data: bytes, who: Principal | None = None, *,
                                  expect_agent: str = "") -> Ack:
        """A serialized PushMetricsRequest: the raw path (`RawMetrics`) when every series
        has the same sample count, the view path (`FastMetrics`) for other regular batches,
        else the general one; whichever it is, the same checks, counts and answers."""
        raw = read_raw_batch(data)
        if raw is None:
            return await self.accept_metrics(metric_batch_from_wire(data), who,
                                             expect_agent=expect_agent)

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
        return await self._accept_metrics(raw.agent_id, raw.sequence, prepare, who,
                                          expect_agent)

    async def _accept_metrics(self, agent_id: str, sequence: int,
                              prepare: Callable[[], _Ready], who: Principal | None,
                              expect_agent: str) -> Ack:
        stats = self.stats
        stats.metric_batches_received += 1
        try:
            key, agent = self._admit(self.metric_seqs, agent_id, who, expect_agent)
        except InvalidArgument:
            stats.metric_batches_invalid += 1
            raise
        async with agent.lock:
            if (resent := resend(self.metric_seqs, agent, sequence)) is not None:
                stats.metric_batches_duplicate += 1
                return resent
            try:
                ready = prepare()
                if who is not None and who.is_job:
                    job_may_push(who, ready.label_sets())
            except (InvalidArgument, PermissionDenied):
                stats.metric_batches_invalid += 1
                self.metric_seqs.forget_if_unused(key)
                raise
            stats.metric_samples_received += ready.received
            stats.metric_samples_accepted += ready.accepted
            stats.metric_samples_rejected += ready.rejected
            stats.metric_samples_clamped += ready.clamped
            ack: Ack = asyncio.get_running_loop().create_future()
            ack.add_done_callback(observed)

            def settle(delivery: asyncio.Future[Settled] | None) -> None:
                agent.inflight.pop(sequence, None)
                if delivery is not None and (delivery.cancelled() or delivery.exception()):
                    if not ack.done():
                        ack.set_exception(delivery.exception() or NotDelivered("cancelled"))
                    return
                self.metric_seqs.mark(agent, sequence)
                stats.note_agent(agent_id, agent.highest)
                ready.update_latest()
                if not ack.done():
                    ack.set_result(PushOutcome(sequence, accepted=ready.accepted,
                                               rejected=ready.rejected,
                                               error_message=_message(ready.reasons)))

            if ready.packed is None:
                settle(None)
                return ack
            delivery = self._delivery("metrics", ready.packed.sample_count)
            shard = zlib.crc32(agent_id.encode()) % len(self._metric_queues)
            await self._hand_over(self._metric_queues[shard], (ready.packed, delivery),
                                  delivery, agent, sequence, ack, settle)
        return ack

    # -- logs ------------------------------------------------------------------------------

    async def push_logs(self, batch: LogBatchIn, who: Principal | None = None) -> PushOutcome:
        """Accept one batch and wait for its acknowledgement."""
        return await (await self.accept_logs(batch, who))

    async def push_logs_wire(self, data: bytes, who: Principal | None = None) -> PushOutcome:
        return await (await self.accept_logs_wire(data, who))

    async def accept_logs(self, batch: LogBatchIn, who: Principal | None = None, *,
                          expect_agent: str = "") -> Ack:
        """Validate and queue one batch; the future is its acknowledgement."""
        return await self._accept_logs(batch.agent_id, batch.sequence,
                                        lambda: self.validator.logs(batch), who, expect_agent)

    async def accept_logs_wire(self, data: bytes, who: Principal | None = None, *,
                               expect_agent: str = "") -> Ack:
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
            return await self.accept_logs(batch, who, expect_agent=expect_agent)

        def prepare() -> PreparedLogs:
            prepared = prepare_logs(self.validator, view)
            return self.validator.logs(log_batch_from_wire(data)) if prepared is None \
                else prepared
        return await self._accept_logs(view.agent_id, view.sequence, prepare, who,
                                       expect_agent)

    async def _accept_logs(self, agent_id: str, sequence: int,
                           prepare: Callable[[], PreparedLogs], who: Principal | None,
                           expect_agent: str) -> Ack:
        stats = self.stats
        stats.log_batches_received += 1
        try:
            key, agent = self._admit(self.log_seqs, agent_id, who, expect_agent)
        except InvalidArgument:
            stats.log_batches_invalid += 1
            raise
        async with agent.lock:
            if (resent := resend(self.log_seqs, agent, sequence)) is not None:
                stats.log_batches_duplicate += 1
                return resent
            try:
                prepared = prepare()
                job_may_push(who, (labels for labels, _, _ in prepared.streams))
            except (InvalidArgument, PermissionDenied):
                stats.log_batches_invalid += 1
                self.log_seqs.forget_if_unused(key)
                raise
            stats.log_lines_received += prepared.received
            stats.log_lines_accepted += prepared.accepted
            stats.log_lines_rejected += prepared.rejected
            owner = who.user if who is not None else operator_name()
            ack: Ack = asyncio.get_running_loop().create_future()
            ack.add_done_callback(observed)

            def settle(delivery: asyncio.Future[Settled] | None) -> None:
                agent.inflight.pop(sequence, None)
                remote = Settled()
                if delivery is not None:
                    if delivery.cancelled() or delivery.exception():
                        if not ack.done():
                            ack.set_exception(delivery.exception() or NotDelivered("cancelled"))
                        return
                    remote = delivery.result()
                self.log_seqs.mark(agent, sequence)
                for labels, stamps, lines in prepared.streams:
                    self.logs.add_stream(labels, stamps, lines, owner)
                reasons = [*prepared.reasons, *([remote.message] if remote.message else [])]
                if not ack.done():
                    ack.set_result(PushOutcome(
                        sequence, accepted=prepared.accepted - remote.rejected,
                        rejected=prepared.rejected + remote.rejected,
                        error_message=_message(reasons)))

            if not prepared.streams or self.loki is None:
                settle(None)
                return ack
            delivery = self._delivery("logs", prepared.accepted)
            await self._hand_over(self._log_queue, (prepared.streams, delivery,
                                                     prepared.accepted),
                                  delivery, agent, sequence, ack, settle)
        return ack

    # -- forwarding ------------------------------------------------------------------------

    async def _metric_worker(self,
                             queue: asyncio.Queue[tuple[PackedSeries, asyncio.Future[Settled]]]
                             ) -> None:
        assert self.remote is not None
        limit = self.config.remote_write_max_samples
        while True:
            items = [await queue.get()]
            samples = items[0][0].sample_count
            while samples < limit and not queue.empty():
                more = queue.get_nowait()
                items.append(more)
                samples += more[0].sample_count
            error: NotDelivered | None = None
            try:
                await self.remote.write_packed(PackedSeries.concat([p for p, _ in items]))
            except NotDelivered as exc:
                error = exc
            except asyncio.CancelledError:
                error = NotDelivered("the collector stopped while writing them")
                raise
            except Exception as exc:  # a bug must not kill the worker: the agents resend
                log.exception("remote write failed unexpectedly; %d samples not acknowledged",
                              samples)
                error = NotDelivered(f"remote write failed: {exc!r}")
            finally:
                for _, delivery in items:
                    if not delivery.done():
                        if error is None:
                            delivery.set_result(Settled())
                        else:
                            delivery.set_exception(NotDelivered(str(error)))
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
            streams, delivery, lines = item
            loki.add(streams, (delivery, lines))
            queue.task_done()
            if loki.due_in() == 0.0:
                await self._flush_logs(loki)

    async def _flush_logs(self, loki: LokiForwarder) -> None:
        try:
            await loki.flush(self._stop)
        except NotDelivered as exc:
            log.warning("%s", exc)
        except Exception:
            log.exception("loki push failed unexpectedly")

    async def stop(self) -> DrainReport:
        """Refuse new batches, forward what was accepted for up to `drain_seconds`, then end
        the workers; what is still not forwarded is not acknowledged (`NotDelivered`)."""
        self.closing = True
        if self.loki is not None:
            self.loki.draining = True
        if self._unsettled:
            log.info("collector draining: %d accepted batches to forward (up to %gs)",
                     len(self._unsettled), self.config.drain_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_settled(), self.config.drain_seconds)
        if self._unsettled:
            log.warning("collector stopping with %d batches not forwarded; they stay with "
                        "their agents", len(self._unsettled))
        self._stop.set()
        if self.remote is not None:
            self.remote.stop.set()  # retries end at once: their batches are NotDelivered
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_settled(), 1.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for delivery in list(self._unsettled):
            if not delivery.done():
                delivery.set_exception(NotDelivered("the collector stopped before forwarding "
                                                    "them"))
        # Let the settle callbacks run (they answer the streams still open).
        await asyncio.sleep(0)
        return self.drain

    async def _all_settled(self) -> None:
        while self._unsettled:
            await asyncio.wait(list(self._unsettled))

"""BatchSender: bounded buffer with exact drop counters, resend with the same sequences, window.

Also holds `FakeCollector`, a CollectorService that follows the contract (acks each batch by
sequence once stored, drops duplicates), can be stopped and restarted on the same port, told to
stop acknowledging, or gated; the integration tests reuse it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from aifb.mesh.discovery import ServiceDiscovery, channel_factory, expand_hostlist
from aifb.mesh.push import Backoff, BatchSender, batch_items
from aifb.v1 import collector_pb2, collector_pb2_grpc, server_pb2, telemetry_pb2

pytestmark = pytest.mark.unit


class FakeCollector(collector_pb2_grpc.CollectorServiceServicer):  # type: ignore[misc]
    """Stores batches by (agent_id, sequence); the store outlives server restarts."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[str, int], telemetry_pb2.MetricBatch] = {}
        self.logs: dict[tuple[str, int], telemetry_pb2.LogBatch] = {}
        self.received: list[int] = []  # every sequence read, resends included
        self.duplicates = 0
        self.acks_sent = 0
        self.max_outstanding = 0
        self.ack = True  # False: store, but never acknowledge (the ack is "lost")
        self.gate = asyncio.Event()
        self.gate.set()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        collector_pb2_grpc.add_CollectorServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, "could not bind"
        await server.start()
        self.server = server
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    async def _serve(self, request_iterator: Any, store: dict[Any, Any], make: Any) -> Any:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        outstanding = 0

        async def read() -> None:
            nonlocal outstanding
            async for request in request_iterator:
                self.received.append(request.batch.sequence)
                outstanding += 1
                self.max_outstanding = max(self.max_outstanding, outstanding)
                await queue.put(request.batch)
            await queue.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (batch := await queue.get()) is not None:
                await self.gate.wait()
                key = (batch.agent_id, batch.sequence)
                duplicate = key in store
                self.duplicates += int(duplicate)
                store.setdefault(key, batch)
                outstanding -= 1
                if self.ack:
                    self.acks_sent += 1
                    yield make(batch, duplicate)
        finally:
            reader.cancel()

    async def PushMetrics(self, request_iterator: Any, context: Any) -> Any:
        async for ack in self._serve(request_iterator, self.metrics, lambda b, d: (
                collector_pb2.PushMetricsResponse(sequence=b.sequence, duplicate=d,
                                                  accepted_samples=0 if d else batch_items(b)))):
            yield ack

    async def PushLogs(self, request_iterator: Any, context: Any) -> Any:
        async for ack in self._serve(request_iterator, self.logs, lambda b, d: (
                collector_pb2.PushLogsResponse(sequence=b.sequence, duplicate=d,
                                               accepted_lines=0 if d else batch_items(b)))):
            yield ack


async def wait_until(check: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 25))


def metric_batch(samples: int) -> telemetry_pb2.MetricBatch:
    return telemetry_pb2.MetricBatch(series=[telemetry_pb2.MetricSeries(
        name="aifb_test", timestamps_ms=list(range(samples)), values=[1.0] * samples)])


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, maximum=0.1)


def test_overflow_drops_oldest_and_counters_equal_what_was_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        sender = BatchSender("metrics", "m@test", channel_factory("127.0.0.1:1"), max_batches=5)
        sizes = [i + 1 for i in range(12)]
        seqs = [sender.submit(metric_batch(n)) for n in sizes]
        assert sender.stats.dropped_batches == 7
        assert sender.stats.dropped_items == sum(sizes[:7])
        assert sender.stats.overflow_episodes == 1
        assert [s for s, _ in sender.pending()] == seqs[7:]
        collector = FakeCollector()
        port = await collector.start()
        sender._connect = channel_factory(f"127.0.0.1:{port}")
        sender.start()
        assert await sender.flush(10)
        assert sorted(s for _, s in collector.metrics) == seqs[7:]
        await sender.close()
        await collector.stop()

    with caplog.at_level(logging.WARNING, logger="aifb.mesh.push"):
        run(scenario)
    starts = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(starts) == 1  # one warning per overflow episode, not one per batch


def test_resend_after_reconnect_keeps_sequence_numbers_and_collector_drops_duplicates() -> None:
    async def scenario() -> None:
        collector = FakeCollector()
        port = await collector.start()
        sender = BatchSender("metrics", "m@test", channel_factory(f"127.0.0.1:{port}"),
                             backoff=fast_backoff())
        sender.start()
        acked = [sender.submit(metric_batch(3)) for _ in range(2)]
        assert await sender.flush(10)
        collector.ack = False  # stored, but the acks never reach the agent
        seqs = [sender.submit(metric_batch(3)) for _ in range(4)]
        await wait_until(lambda: len(collector.metrics) == 6, what="6 batches stored")
        await collector.stop()
        collector.ack = True
        await collector.start(port)
        assert await sender.flush(10)
        assert collector.received == acked + seqs + seqs  # resent in order, same numbers
        assert collector.duplicates == 4
        assert sorted(s for _, s in collector.metrics) == acked + seqs
        assert sender.stats.reconnects >= 1
        assert sender.stats.resent_batches == 4
        assert sender.stats.duplicate_batches == 4
        assert sender.stats.dropped_batches == 0
        await sender.close()
        await collector.stop()

    run(scenario)


def test_window_bounds_unacknowledged_batches_on_the_wire() -> None:
    async def scenario() -> None:
        collector = FakeCollector()
        port = await collector.start()
        sender = BatchSender("metrics", "m@test", channel_factory(f"127.0.0.1:{port}"),
                             window=3, backoff=fast_backoff())
        sender.start()
        collector.gate.clear()  # the collector reads but does not acknowledge yet
        for _ in range(10):
            sender.submit(metric_batch(1))
        await wait_until(lambda: len(collector.received) >= 3, what="3 batches received")
        collector.gate.set()
        assert await sender.flush(10)
        assert len(collector.metrics) == 10
        assert collector.max_outstanding == 3
        await sender.close()
        await collector.stop()

    run(scenario)


def test_spool_lets_a_restarted_agent_resend_with_the_same_sequences(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = tmp_path / "spool"
        first = BatchSender("logs", "l@test", channel_factory("127.0.0.1:1"), spool_dir=spool)
        batch = telemetry_pb2.LogBatch(streams=[telemetry_pb2.LogStream(
            labels={"a": "b"}, timestamps_ns=[1, 2], lines=["x", "y"])])
        seqs = [first.submit(batch, {"positions": {"f": i}}) for i in range(3)]
        await first.close()
        collector = FakeCollector()
        port = await collector.start()
        acked: list[tuple[int, Any]] = []
        second = BatchSender("logs", "l@test", channel_factory(f"127.0.0.1:{port}"),
                             spool_dir=spool, on_ack=lambda s, m: acked.append((s, dict(m))))
        assert [s for s, _ in second.pending()] == seqs
        newer = second.submit(telemetry_pb2.LogBatch())
        assert newer > seqs[-1]
        second.start()
        assert await second.flush(10)
        assert sorted(s for _, s in collector.logs) == [*seqs, newer]
        assert acked[:3] == [(s, {"positions": {"f": i}}) for i, s in enumerate(seqs)]
        assert [p.name for p in spool.iterdir()] == ["logs.sequence"]
        await second.close()
        await collector.stop()

    run(scenario)


def test_the_sequence_file_reserves_a_block_and_a_restart_starts_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aifb.mesh.push as push

    spool = tmp_path / "spool"
    monkeypatch.setattr(push.time, "time_ns", lambda: 5_000_000_000)  # a clock stuck in 1970
    first = BatchSender("logs", "l@test", channel_factory("127.0.0.1:1"), spool_dir=spool)
    seqs = [first.submit(telemetry_pb2.LogBatch()) for _ in range(5)]
    assert seqs == list(range(5_000_000, 5_000_005))
    # Written once, before the first number of the block was used.
    assert (spool / "logs.sequence").read_text() == str(5_000_000 + push._SEQUENCE_BLOCK)
    for path in spool.glob("*.batch"):
        path.unlink()  # every batch acknowledged: only the sequence file is left
    second = BatchSender("logs", "l@test", channel_factory("127.0.0.1:1"), spool_dir=spool)
    assert second.submit(telemetry_pb2.LogBatch()) == 5_000_001 + push._SEQUENCE_BLOCK
    monkeypatch.undo()


def test_backoff_is_jittered_exponential_and_capped() -> None:
    import random

    b = Backoff(initial=0.1, maximum=1.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(8)]
    caps = [min(1.0, 0.1 * 2 ** i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == 8
    b.reset()
    assert b.next_delay() <= 0.1


def test_hostlist_expansion() -> None:
    assert expand_hostlist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7",
                                                       "login1"]
    assert expand_hostlist("n1") == ["n1"]
    assert expand_hostlist("") == []


def test_discovery_keeps_running_services_on_this_node_only() -> None:
    async def scenario() -> None:
        d = ServiceDiscovery(None, node="gpu02.cluster")
        seen: list[set[str]] = []
        d.add_listener(lambda t: seen.append(set(t)))
        running = server_pb2.Service(
            name="services/a", state=server_pb2.SERVICE_STATE_READY,
            endpoint={"host": "gpu02", "port": 8000},
            metrics={"port": 8000, "path": "/metrics", "url": "http://gpu02:8000/metrics"},
            job=server_pb2.SchedulerJob(job_id="7", nodes="gpu[01-03]", scheduler="slurm",
                                        stdout_path="/o", stderr_path="/e"))
        elsewhere = server_pb2.Service(name="services/b", state=server_pb2.SERVICE_STATE_READY,
                                       job=server_pb2.SchedulerJob(job_id="8", nodes="gpu09"))
        assert d.apply(running)
        assert not d.apply(elsewhere)
        target = d.targets["services/a"]
        assert target.metrics_url == "http://gpu02:8000/metrics"
        assert target.log_sources() == [("/o", "stdout"), ("/e", "stderr")]
        stopped = server_pb2.Service()
        stopped.CopyFrom(running)
        stopped.state = server_pb2.SERVICE_STATE_STOPPED
        assert d.apply(stopped)
        assert seen == [set(), {"services/a"}, set()]

    run(scenario)

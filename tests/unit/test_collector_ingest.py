"""Ingest: dedup by sequence, validation errors, backpressure, split-on-400 end to end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import cramjam
import grpc
import httpx
import pytest

from aifb.collector import CollectorConfig, RetryConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.collector.model import MetricBatchIn, NotDelivered, SeriesIn
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.errors import InvalidArgument, ResourceExhausted, Unavailable
from aifb.mesh.push import AGENT_ID_HEADER, AGENT_INSTANCE_HEADER
from aifb.mesh.server import create_server
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from aifb.wire import prompb_pb2

pytestmark = pytest.mark.unit

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _batch(agent: str, seq: int, n_series: int = 2, name: str = "aifb_test_gauge",
           labels: dict[str, str] | None = None) -> MetricBatchIn:
    now = _now_ms()
    return MetricBatchIn(agent, seq, {"node": "n1"}, [
        SeriesIn(name, {"i": str(i), **(labels or {})}, [now - 1000, now], [1.0, float(i)])
        for i in range(n_series)])


async def _collector(handler: Handler | None = None, **cfg: Any) -> CollectorApp:
    config = CollectorConfig(remote_write_url="http://prom.test/api/v1/write" if handler else "",
                             metrics_listen="", retry=RetryConfig(initial_seconds=0.001,
                                                                  max_seconds=0.002), **cfg)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler)) if handler else None
    return await start_collector(config, client=client)


def test_a_resent_batch_is_acknowledged_as_duplicate_and_not_stored_twice() -> None:
    stored: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = bytes(cramjam.snappy.decompress_raw(request.content))
        stored.append(sum(len(t.samples) for t in prompb_pb2.WriteRequest.FromString(
            body).timeseries))
        return httpx.Response(204)

    async def main() -> None:
        app = await _collector(handler)
        first = await app.ingest.push_metrics(_batch("a", 1))
        again = await app.ingest.push_metrics(_batch("a", 1))
        other = await app.ingest.push_metrics(_batch("b", 1))
        await app.stop()
        assert (first.duplicate, first.accepted) == (False, 4)
        assert (again.duplicate, again.accepted) == (True, 0)
        assert other.duplicate is False
        assert app.stats.metric_batches_duplicate == 1
        assert app.stats.metric_samples_forwarded == 8 and sum(stored) == 8

    asyncio.run(main())


@pytest.mark.parametrize(("batch", "field"), [
    (MetricBatchIn("a", 0, {}, []), "batch.sequence"),
    (MetricBatchIn("", 1, {}, []), "batch.agent_id"),
    (MetricBatchIn("a" * 257, 1, {}, []), "batch.agent_id"),
    (MetricBatchIn("a\x00b", 1, {}, []), "batch.agent_id"),
    (MetricBatchIn("a", 2**64 - 1, {}, []), "batch.sequence"),  # made GetCollectorStats fail
    (MetricBatchIn("a", 1, {}, [SeriesIn("m", {}, [1, 2], [1.0])]), "batch.series[0].values"),
    (MetricBatchIn("a", 1, {}, [SeriesIn("", {}, [], [])]), "batch.series[0].name"),
    (MetricBatchIn("a", 1, {}, [SeriesIn("bad-name", {}, [], [])]), "batch.series[0].name"),
    (MetricBatchIn("a", 1, {}, [SeriesIn("m", {"__x": "1"}, [], [])]), "batch.series[0].labels"),
    (MetricBatchIn("a", 1, {"0bad": "v"}, []), "batch.resource.attributes"),
    (MetricBatchIn("a", 1, {}, [SeriesIn("m", {f"l{i}": "v" for i in range(5)}, [], [])]),
     "batch.series[0].labels"),
    (MetricBatchIn("a", 1, {}, [SeriesIn("m", {"i": str(i)}, [], []) for i in range(4)]),
     "batch.series"),
])
def test_invalid_batches_are_refused_naming_the_field(batch: MetricBatchIn, field: str) -> None:
    async def main() -> None:
        app = await _collector(max_series_per_batch=3, max_labels_per_series=5)
        with pytest.raises(InvalidArgument) as err:
            await app.ingest.push_metrics(batch)
        await app.stop()
        assert err.value.field == field
        assert app.stats.metric_batches_invalid == 1

    asyncio.run(main())


def test_out_of_range_timestamps_are_partial_rejections_in_the_ack() -> None:
    async def main() -> None:
        app = await _collector()
        now = _now_ms()
        out = await app.ingest.push_metrics(MetricBatchIn("a", 1, {}, [
            SeriesIn("m", {}, [now - 7_200_000, now, now + 7_200_000], [1.0, 2.0, 3.0])]))
        await app.stop()
        assert (out.accepted, out.rejected) == (1, 2)
        assert "future" in out.error_message and "older" in out.error_message

    asyncio.run(main())


def test_a_batch_is_acknowledged_only_once_forwarded_and_a_full_queue_pushes_back() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(204)

    async def main() -> None:
        app = await _collector(handler, queue_max_batches=1, forward_workers=1,
                               enqueue_timeout_seconds=0.2)
        first = await app.ingest.accept_metrics(_batch("a", 1))  # the worker: blocked in HTTP
        while app.ingest.queue_depth():  # poll until the worker holds it
            await asyncio.sleep(0.005)
        second = await app.ingest.accept_metrics(_batch("a", 2))  # fills the queue
        with pytest.raises(ResourceExhausted):
            await app.ingest.accept_metrics(_batch("a", 3))
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()  # Prometheus has not answered yet
        assert app.stats.metric_samples_held == 8
        resent = await app.ingest.accept_metrics(_batch("a", 1))  # in flight: waits for it
        release.set()
        assert (await first).accepted == 4 and (await second).accepted == 4
        assert (await resent).duplicate is True
        again = await app.ingest.push_metrics(_batch("a", 3))  # not marked seen: accepted now
        await app.stop()
        assert again.duplicate is False
        assert app.stats.metric_samples_forwarded == 12
        assert app.stats.metric_samples_held == 0

    asyncio.run(main())


def test_a_stop_before_prometheus_answers_leaves_the_batch_unacknowledged() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down")

    async def main() -> None:
        app = await _collector(handler, drain_seconds=0.2)
        ack = await app.ingest.accept_metrics(_batch("a", 1))
        drain = await app.ingest.stop()
        with pytest.raises(NotDelivered):
            await ack
        with pytest.raises(Unavailable, match="stopping"):
            await app.ingest.accept_metrics(_batch("a", 2))
        assert (drain.returned_batches, drain.returned_samples, drain.refused_batches) == (
            1, 4, 1)
        assert app.stats.metric_samples_returned == 4 and app.stats.metric_samples_held == 0
        assert app.ingest.metric_seqs.agents["a"].seen == set()  # a resend will be taken

    asyncio.run(main())


def test_split_on_400_through_ingest_stores_good_series_and_counts_the_bad() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = prompb_pb2.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(
            request.content)))
        bad = any(lb.name == "i" and lb.value == "3" for t in body.timeseries for lb in t.labels)
        return httpx.Response(400, text="out of order sample") if bad else httpx.Response(204)

    async def main() -> None:
        app = await _collector(handler)
        await app.ingest.push_metrics(_batch("a", 1, n_series=10))
        await app.stop()
        assert app.stats.metric_samples_forwarded == 18
        assert app.stats.metric_samples_remote_rejected == 2
        assert app.stats.remote_write_splits >= 1

    asyncio.run(main())


async def _requests(batches: list[telemetry_pb2.MetricBatch]
                    ) -> AsyncIterator[collector_pb2.PushMetricsRequest]:
    for b in batches:
        yield collector_pb2.PushMetricsRequest(batch=b)


def _proto(agent: str, seq: int, name: str = "m") -> telemetry_pb2.MetricBatch:
    now = _now_ms()
    return telemetry_pb2.MetricBatch(agent_id=agent, sequence=seq, series=[
        telemetry_pb2.MetricSeries(name=name, labels={"a": agent}, timestamps_ms=[now],
                                   values=[1.0])])


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[grpc.aio.Channel]:
    """A collector served on a loopback port (no auth) and a channel to it."""
    app = await _collector()
    mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                               authenticator=Authenticator(None, enabled=False),
                               listen="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
            yield channel
    finally:
        await mesh.stop(0)
        await app.stop()


def _request(agent: str, seq: int) -> collector_pb2.PushMetricsRequest:
    return collector_pb2.PushMetricsRequest(batch=_proto(agent, seq))


def test_a_second_process_with_the_same_agent_id_is_refused_at_the_streams_start() -> None:
    async def main() -> None:
        async with _served() as channel:
            stub = collector_pb2_grpc.CollectorServiceStub(channel)

            def headers(instance: str) -> tuple[tuple[str, str], ...]:
                return ((AGENT_ID_HEADER, "monitor@n1"), (AGENT_INSTANCE_HEADER, instance))

            first_open = asyncio.Event()
            release = asyncio.Event()

            async def first_requests() -> AsyncIterator[collector_pb2.PushMetricsRequest]:
                yield _request("monitor@n1", 1)
                first_open.set()
                await release.wait()

            first = stub.PushMetrics(first_requests(), metadata=headers("process-a"))
            assert (await first.read()).sequence == 1
            await first_open.wait()
            # Another process, same id: refused before any batch of it is read.
            other = stub.PushMetrics(iter([_request("monitor@n1", 2)]),
                                     metadata=headers("process-b"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await other.read()
            # The same process reconnecting (a second stream) is no collision.
            again = [r async for r in stub.PushMetrics(
                iter([_request("monitor@n1", 3)]), metadata=headers("process-a"))]
            # A batch naming another agent than its stream did is refused.
            wrong = stub.PushMetrics(iter([_request("monitor@n2", 4)]),
                                     metadata=headers("process-a"))
            with pytest.raises(grpc.aio.AioRpcError) as mismatch:
                await wrong.read()
            release.set()
            assert await first.read() == grpc.aio.EOF  # its stream ends (the server saw it)
            # Once the first process's stream is gone, the id is free again.
            after = [r async for r in stub.PushMetrics(
                iter([_request("monitor@n1", 5)]), metadata=headers("process-b"))]
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "'monitor@n1' is already pushing metrics from another process" in (
            refused.value.details() or "")
        assert "AIFB_MONITOR__AGENT_ID" in (refused.value.details() or "")
        assert [r.sequence for r in again] == [3]
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'monitor@n2' is not the agent this stream named" in (mismatch.value.details() or "")
        assert [r.sequence for r in after] == [5]

    asyncio.run(main())


def test_grpc_stream_acks_in_order_and_a_bad_batch_fails_only_its_own_stream() -> None:
    async def main() -> None:
        async with _served() as channel:
            stub = collector_pb2_grpc.CollectorServiceStub(channel)
            good = [r async for r in stub.PushMetrics(
                _requests([_proto("good", s) for s in (1, 2, 2, 3)]))]
            bad_call = stub.PushMetrics(_requests([_proto("bad", 1), _proto("bad", 0)]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in bad_call]
            after = [r async for r in stub.PushMetrics(_requests([_proto("good", 4)]))]
            stats = await stub.GetCollectorStats(collector_pb2.GetCollectorStatsRequest())
        assert [(r.sequence, r.duplicate) for r in good] == [(1, False), (2, False), (2, True),
                                                            (3, False)]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch.sequence" in (err.value.details() or "")
        assert [(r.sequence, r.accepted_samples) for r in after] == [(4, 1)]
        assert stats.stats.agents_last_sequence == {"good": 4, "bad": 1}
        assert stats.stats.metric_batches_duplicate == 1

    asyncio.run(main())


def test_otlp_spans_come_back_by_trace_id_and_logs_are_queryable_locally() -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    trace_id = bytes(range(16))
    export = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[common_pb2.KeyValue(
            key="service.name", value=common_pb2.AnyValue(string_value="aifb-server"))]),
        scope_spans=[trace_pb2.ScopeSpans(spans=[
            trace_pb2.Span(trace_id=trace_id, span_id=bytes([1] * 8), name="child",
                           parent_span_id=bytes([2] * 8), start_time_unix_nano=20,
                           end_time_unix_nano=30, status=trace_pb2.Status(code=2)),
            trace_pb2.Span(trace_id=trace_id, span_id=bytes([2] * 8), name="root",
                           start_time_unix_nano=10, end_time_unix_nano=40, attributes=[
                               common_pb2.KeyValue(key="n", value=common_pb2.AnyValue(
                                   int_value=3))])])])])
    now = time.time_ns()
    logs = telemetry_pb2.LogBatch(agent_id="l", sequence=1, streams=[telemetry_pb2.LogStream(
        labels={"service": "s1"}, timestamps_ns=[now, now + 1], lines=["hello", "world"])])

    async def main() -> None:
        async with _served() as channel:
            await trace_service_pb2_grpc.TraceServiceStub(channel).Export(export)
            stub = collector_pb2_grpc.CollectorServiceStub(channel)
            trace = await stub.GetTrace(collector_pb2.GetTraceRequest(trace_id=trace_id.hex()))
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetTrace(collector_pb2.GetTraceRequest(trace_id="0" * 32))

            async def reqs() -> AsyncIterator[collector_pb2.PushLogsRequest]:
                yield collector_pb2.PushLogsRequest(batch=logs)

            acks = [a async for a in stub.PushLogs(reqs())]
            found = await stub.QueryLogs(collector_pb2.QueryLogsRequest(
                labels={"service": "s1"}, contains="wor"))
        assert [(s.name, s.service_name, s.status) for s in trace.spans] == [
            ("root", "aifb-server", "UNSET"), ("child", "aifb-server", "ERROR")]
        assert trace.spans[0].attributes == {"n": "3"}
        assert trace.spans[1].parent_span_id == "02" * 8
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert [(a.sequence, a.accepted_lines) for a in acks] == [(1, 2)]
        assert [(e.line, dict(e.labels)) for e in found.entries] == [("world", {"service": "s1"})]

    asyncio.run(main())


def test_a_refused_batch_leaves_no_agent_state_behind() -> None:
    """Hostile agent ids in refused batches grew the per-agent windows without end."""
    async def main() -> None:
        app = await _collector()
        for i in range(100):
            with pytest.raises(InvalidArgument):
                await app.ingest.push_metrics(MetricBatchIn(f"hostile-{i}", 0, {}, []))
        assert app.ingest.metric_seqs.agents == {}
        await app.ingest.push_metrics(_batch("real", 1))
        assert list(app.ingest.metric_seqs.agents) == ["real"]
        await app.stop()

    asyncio.run(main())

"""Bad input to the collector over real gRPC, while a well-behaved agent keeps pushing.

What a misbehaving agent gets is decided and tabled in docs/metrics.md ("What the collector
answers a misbehaving agent"): INVALID_ARGUMENT with a BadRequest naming the field for
structurally wrong batches (undecodable bytes, no agent id, sequence 0, bad names, unequal
lengths, per-batch label explosion); RESOURCE_EXHAUSTED from gRPC above 16 MiB; OK with
`duplicate: true` for resent or too-old sequence numbers, OK for late or skipped ones; OK with a
partial rejection for samples or lines out of range; and a local /metrics store bounded at
`latest_max_series` against label explosion over time.

Unit tests (tests/unit/test_collector_ingest.py) cover the same rules on the domain object;
these prove them on the wire, and that none of it disturbs another agent's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from tests.integration.telemetry_pipeline import Collector, collector

pytestmark = pytest.mark.integration

LIMITS = {"max_series_per_batch": 1000, "max_samples_per_batch": 50_000,
          "max_labels_per_series": 16, "max_label_value_bytes": 256, "latest_max_series": 5000,
          "dedup_window": 8, "max_line_bytes": 1024}
GAUGE = telemetry_pb2.METRIC_TYPE_GAUGE


def _now_ms() -> int:
    return int(time.time() * 1000)


def series(name: str = "aifb_it_bad", labels: dict[str, str] | None = None, points: int = 1,
           values: int | None = None) -> telemetry_pb2.MetricSeries:
    now = _now_ms()
    ts = [now - points + i for i in range(points)]
    return telemetry_pb2.MetricSeries(name=name, labels=labels or {}, type=GAUGE,
                                      timestamps_ms=ts,
                                      values=[1.0] * (points if values is None else values))


def batch(agent: str, seq: int, *items: telemetry_pb2.MetricSeries,
          resource: dict[str, str] | None = None) -> telemetry_pb2.MetricBatch:
    return telemetry_pb2.MetricBatch(
        agent_id=agent, sequence=seq, series=list(items) or [series()],
        resource=telemetry_pb2.TelemetryResource(attributes=resource or {"node": "n1"}))


async def _requests(batches: Sequence[telemetry_pb2.MetricBatch]
                    ) -> AsyncIterator[collector_pb2.PushMetricsRequest]:
    for b in batches:
        yield collector_pb2.PushMetricsRequest(batch=b)


async def push(stub: collector_pb2_grpc.CollectorServiceStub,
               *batches: telemetry_pb2.MetricBatch) -> list[collector_pb2.PushMetricsResponse]:
    return [r async for r in stub.PushMetrics(_requests(batches), timeout=30)]


async def refused(stub: collector_pb2_grpc.CollectorServiceStub,
                  *batches: telemetry_pb2.MetricBatch) -> tuple[grpc.StatusCode, str, str]:
    """Push; the call must fail: (code, details, the BadRequest field or '')."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await push(stub, *batches)
    err = info.value
    return err.code(), err.details() or "", bad_request_field(err)


def bad_request_field(err: grpc.aio.AioRpcError) -> str:
    """The field a google.rpc.BadRequest detail names ('' without one)."""
    metadata: Any = err.trailing_metadata() or ()  # (key, value) pairs
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            for detail in status_pb2.Status.FromString(value).details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return str(bad.field_violations[0].field)
    return ""


@dataclass
class GoodAgent:
    """Pushes one small batch every 20 ms on one long stream until told to stop."""

    stub: collector_pb2_grpc.CollectorServiceStub
    acks: list[collector_pb2.PushMetricsResponse] = field(default_factory=list)
    sent: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _batches(self) -> AsyncIterator[collector_pb2.PushMetricsRequest]:
        while not self.stop.is_set():
            self.sent += 1
            yield collector_pb2.PushMetricsRequest(batch=batch(
                "good", self.sent, *(series("aifb_it_good", {"i": str(i)}) for i in range(5))))
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        async for ack in self.stub.PushMetrics(self._batches()):
            self.acks.append(ack)


def _field_cases() -> list[tuple[str, telemetry_pb2.MetricBatch, str, str]]:
    many_labels = {f"l{i}": "v" for i in range(20)}
    return [
        ("no agent id", batch("", 1), "batch.agent_id", "empty"),
        ("sequence zero", batch("bad", 0), "batch.sequence", "1 or more"),
        ("bad metric name", batch("bad", 1, series("not-a-name")), "batch.series[0].name",
         "invalid metric name"),
        ("reserved label name", batch("bad", 1, series(labels={"__x": "1"})),
         "batch.series[0].labels", "invalid label name"),
        ("bad resource label", batch("bad", 1, resource={"0node": "n"}),
         "batch.resource.attributes", "invalid label name"),
        ("unequal lengths", batch("bad", 1, series(points=3, values=2)),
         "batch.series[0].values", "3 timestamps but 2 values"),
        ("label explosion in one series", batch("bad", 1, series(labels=many_labels)),
         "batch.series[0].labels", "more than the limit 16"),
        ("over-long label value", batch("bad", 1, series(labels={"id": "x" * 300})),
         "batch.series[0].labels", "longer than 256"),
        ("label explosion in one batch", batch("bad", 1, *(series(labels={"id": str(i)})
                                                           for i in range(1001))),
         "batch.series", "1001 series"),
        ("too many samples", batch("bad", 1, *(series(labels={"id": str(i)}, points=100)
                                               for i in range(600))),
         "batch.series", "60000 samples"),
    ]


def test_bad_batches_get_clear_codes_while_another_agent_keeps_being_served() -> None:
    async def main() -> None:
        async with collector(**LIMITS) as coll, grpc.aio.insecure_channel(
                coll.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            stub = collector_pb2_grpc.CollectorServiceStub(channel)
            good = GoodAgent(stub)
            good_task = asyncio.create_task(good.run())
            try:
                await _misbehave(coll, stub, channel)
                while good.sent < 20:  # it kept going through all of that
                    await asyncio.sleep(0.02)
            finally:
                good.stop.set()
                await asyncio.wait_for(good_task, 10)
            stats = (await stub.GetCollectorStats(
                collector_pb2.GetCollectorStatsRequest())).stats
        assert [a.sequence for a in good.acks] == list(range(1, good.sent + 1))
        assert all(not a.duplicate and a.accepted_samples == 5 and a.rejected_samples == 0
                   for a in good.acks)
        assert stats.agents_last_sequence["good"] == good.sent

    asyncio.run(main())


async def _misbehave(coll: Collector, stub: collector_pb2_grpc.CollectorServiceStub,
                     channel: grpc.aio.Channel) -> None:
    stats = coll.app.stats
    # 1. Structurally wrong batches: INVALID_ARGUMENT naming the field; nothing kept.
    for name, bad, field_name, words in _field_cases():
        code, details, got_field = await refused(stub, bad)
        assert (code, got_field) == (grpc.StatusCode.INVALID_ARGUMENT, field_name), name
        assert words in details, (name, details)
    assert stats.metric_batches_invalid == len(_field_cases())
    # 2. Bytes that are no PushMetricsRequest at all: INVALID_ARGUMENT on the field "batch".
    raw = channel.stream_stream("/aifb.v1.CollectorService/PushMetrics",
                                request_serializer=None, response_deserializer=None)

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\x0a\xff\xff\xff\xff\x0f"

    with pytest.raises(grpc.aio.AioRpcError) as undecodable:
        [r async for r in raw(garbage(), timeout=10)]
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid PushMetricsRequest" in (undecodable.value.details() or "")
    # 3. A message over the 16 MiB receive limit: RESOURCE_EXHAUSTED, from gRPC.
    huge = batch("bad", 1, series(points=1_500_000))
    assert huge.ByteSize() > 16 << 20
    code, details, _ = await refused(stub, huge)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    # Nothing of all that got in.
    assert "bad" not in stats.agents_last_sequence
    assert not [labels for labels in coll.app.ingest.latest.series
                if ("__name__", "aifb_it_bad") in labels]

    # 4. Sequence numbers: resends and stale numbers are duplicates, gaps and late ones are fine.
    acks = await push(stub, *(batch("seq", s) for s in (1, 2, 20, 2, 19, 5, 21, 1)))
    assert [(a.sequence, a.duplicate, a.accepted_samples) for a in acks] == [
        (1, False, 1), (2, False, 1), (20, False, 1),
        (2, True, 0),     # already accepted
        (19, False, 1),   # late, not seen, within the window of 8 below 20
        (5, True, 0),     # below 20 - 8: too old to tell, treated as a resend
        (21, False, 1), (1, True, 0)]
    # A bad batch mid-stream ends that stream; what was acknowledged before it stays.
    code, _, got_field = await refused(stub, batch("seq", 22), batch("seq", 0))
    assert (code, got_field) == (grpc.StatusCode.INVALID_ARGUMENT, "batch.sequence")
    (again,) = await push(stub, batch("seq", 22))
    assert again.duplicate  # 22 was accepted before the stream failed
    # 5. Samples outside the time window: OK with a partial rejection, not an error.
    now = _now_ms()
    (partial,) = await push(stub, telemetry_pb2.MetricBatch(
        agent_id="time", sequence=1, series=[telemetry_pb2.MetricSeries(
            name="aifb_it_time", timestamps_ms=[now - 7_200_000, now, now + 7_200_000],
            values=[1.0, 2.0, 3.0])]))
    assert (partial.accepted_samples, partial.rejected_samples) == (1, 2)
    assert "future" in partial.error_message and "older" in partial.error_message
    # 6. Log batches follow the same rules on PushLogs.
    now_ns = time.time_ns()

    def logs(seq: int, *streams: telemetry_pb2.LogStream,
             resource: dict[str, str] | None = None) -> telemetry_pb2.LogBatch:
        return telemetry_pb2.LogBatch(
            agent_id="logs", sequence=seq, streams=list(streams),
            resource=telemetry_pb2.TelemetryResource(attributes=resource or {}))

    def stream(lines: list[str], stamps: int | None = None,
               labels: dict[str, str] | None = None) -> telemetry_pb2.LogStream:
        n = len(lines) if stamps is None else stamps
        return telemetry_pb2.LogStream(labels={"service": "s"} if labels is None else labels,
                                       timestamps_ns=[now_ns + i for i in range(n)], lines=lines)

    async def push_logs(*batches: telemetry_pb2.LogBatch) -> list[collector_pb2.PushLogsResponse]:
        async def reqs() -> AsyncIterator[collector_pb2.PushLogsRequest]:
            for b in batches:
                yield collector_pb2.PushLogsRequest(batch=b)

        return [r async for r in stub.PushLogs(reqs(), timeout=30)]

    for bad_logs, field_name in [(logs(0, stream(["a"])), "batch.sequence"),
                                 (logs(1, stream(["a"], labels={})), "batch.streams[0].labels"),
                                 (logs(1, stream(["a", "b"], stamps=1)), "batch.streams[0].lines"),
                                 (logs(1, stream(["a"], labels={"bad-name": "x"})),
                                  "batch.streams[0].labels")]:
        with pytest.raises(grpc.aio.AioRpcError) as log_err:
            await push_logs(bad_logs)
        assert (log_err.value.code(), bad_request_field(log_err.value)) == (
            grpc.StatusCode.INVALID_ARGUMENT, field_name), log_err.value.details()
    log_acks = await push_logs(logs(1, stream(["short", "x" * 2000])), logs(1, stream(["again"])))
    assert [(a.sequence, a.duplicate, a.accepted_lines, a.rejected_lines) for a in log_acks] == [
        (1, False, 1, 1), (1, True, 0, 0)]
    assert "too long" in log_acks[0].error_message
    # 7. Label explosion over time: accepted, but /metrics keeps at most latest_max_series.
    acks = await push(stub, *(batch("explode", s, *(series("aifb_it_explode", {"id": f"{s}-{i}"})
                                                   for i in range(1000))) for s in range(1, 7)))
    assert [a.accepted_samples for a in acks] == [1000] * 6
    assert coll.app.http is not None
    page = (await asyncio.to_thread(httpx.get, coll.app.http.url, timeout=10)).text
    kept = next(float(line.split()[-1]) for line in page.splitlines()
                if line.startswith("aifb_collector_series_kept "))
    assert kept == LIMITS["latest_max_series"]
    assert page.count("aifb_it_explode{") < LIMITS["latest_max_series"]

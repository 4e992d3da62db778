"""Collector -> strict Loki receiver: labels, order, both wire formats, retries and 400s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from aifb.collector import CollectorConfig, RetryConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.server import create_server
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from tests.fixtures.loki import LokiReceiver, loki_receiver

__all__ = ["loki_receiver"]

pytestmark = pytest.mark.integration

Stub = collector_pb2_grpc.CollectorServiceStub


@asynccontextmanager
async def collector(loki: LokiReceiver, **cfg: Any) -> AsyncIterator[tuple[CollectorApp, Stub]]:
    config = CollectorConfig(loki_url=loki.url, metrics_listen="", loki_batch_wait_seconds=0.05,
                             retry=RetryConfig(initial_seconds=0.02, max_seconds=0.1), **cfg)
    app = await start_collector(config)
    mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                               authenticator=Authenticator(None, enabled=False),
                               listen="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}")
    try:
        yield app, collector_pb2_grpc.CollectorServiceStub(channel)
    finally:
        await channel.close()
        await mesh.stop(0)
        await app.stop()


async def push(stub: collector_pb2_grpc.CollectorServiceStub, *batches: telemetry_pb2.LogBatch
               ) -> list[collector_pb2.PushLogsResponse]:
    async def requests() -> AsyncIterator[collector_pb2.PushLogsRequest]:
        for b in batches:
            yield collector_pb2.PushLogsRequest(batch=b)

    return [r async for r in stub.PushLogs(requests())]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def logs(seq: int, streams: dict[str, list[tuple[int, str]]]) -> telemetry_pb2.LogBatch:
    return telemetry_pb2.LogBatch(
        agent_id="logger@n1", sequence=seq,
        resource=telemetry_pb2.TelemetryResource(attributes={"service": 'svc "a"', "node": "n1"}),
        streams=[telemetry_pb2.LogStream(labels={"stream": name},
                                         timestamps_ns=[t for t, _ in entries],
                                         lines=[line for _, line in entries])
                 for name, entries in streams.items()])


@pytest.mark.parametrize("fmt", ["protobuf", "json", "json+gzip"])
def test_lines_arrive_with_their_labels_in_order_per_stream(loki_receiver: LokiReceiver,
                                                            fmt: str) -> None:
    now = time.time_ns()
    first = {"stdout": [(now + 2, "out-2"), (now, "out-0"), (now + 1, "out-1")],
             "stderr": [(now, "err\twith \"quotes\" and ünïcode")]}
    second = {"stdout": [(now + 3, "out-3")]}

    async def main() -> None:
        async with collector(loki_receiver, loki_format=fmt.split("+")[0],
                             loki_gzip=fmt.endswith("gzip")) as (app, stub):
            acks = await push(stub, logs(1, first), logs(2, second), logs(2, second))
            await until(lambda: app.stats.log_lines_forwarded == 5, "5 lines forwarded")
        assert [(a.sequence, a.duplicate, a.accepted_lines) for a in acks] == [
            (1, False, 4), (2, False, 1), (2, True, 0)]

    asyncio.run(main())
    assert loki_receiver.lines(stream="stdout") == ["out-0", "out-1", "out-2", "out-3"]
    assert loki_receiver.lines(stream="stderr") == ['err\twith "quotes" and ünïcode']
    assert {e.labels["service"] for e in loki_receiver.entries} == {'svc "a"'}
    assert {e.labels["node"] for e in loki_receiver.entries} == {"n1"}
    expected = "application/x-protobuf" if fmt == "protobuf" else "application/json"
    assert set(loki_receiver.requests) == {expected}
    assert loki_receiver.rejected == []


def test_429_and_500_are_retried_until_loki_accepts(loki_receiver: LokiReceiver) -> None:
    now = time.time_ns()
    loki_receiver.fail_next(429, 1)

    async def main() -> None:
        async with collector(loki_receiver) as (app, stub):
            await push(stub, logs(1, {"stdout": [(now, "a"), (now + 1, "b")]}))
            await until(lambda: app.stats.log_lines_forwarded == 2, "first push")
            loki_receiver.fail_next(500, 2)
            await push(stub, logs(2, {"stdout": [(now + 2, "c")]}))
            await until(lambda: app.stats.log_lines_forwarded == 3, "second push")
            assert (app.stats.loki_retries, app.stats.log_lines_returned) == (3, 0)

    asyncio.run(main())
    assert loki_receiver.answered == {429: 1, 500: 2, 204: 2}
    assert loki_receiver.lines() == ["a", "b", "c"]


def test_a_400_is_counted_as_rejected_and_not_retried(loki_receiver: LokiReceiver) -> None:
    now = time.time_ns()

    async def main() -> None:
        async with collector(loki_receiver) as (app, stub):
            await push(stub, logs(1, {"stdout": [(now, "new")]}))
            await until(lambda: app.stats.log_lines_forwarded == 1, "first push")
            # More than an hour older than what the stream holds: "entry too far behind".
            old = now - 2 * 3600 * 10**9
            await push(stub, logs(2, {"stdout": [(old, "old1"), (old + 1, "old2")]}))
            await until(lambda: app.stats.log_lines_remote_rejected == 2, "400 counted")
            assert app.stats.loki_retries == 0

    asyncio.run(main())
    assert loki_receiver.answered == {204: 1, 400: 1}
    assert "too far behind" in loki_receiver.rejected[0]
    assert loki_receiver.lines() == ["new"]

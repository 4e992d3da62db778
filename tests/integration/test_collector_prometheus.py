"""Collector -> real Prometheus 2.42: gRPC push in, remote write out, PromQL back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aifb.collector import CollectorConfig, RetryConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.server import create_server
from aifb.v1 import collector_pb2, collector_pb2_grpc, telemetry_pb2
from tests.fixtures.prometheus import PrometheusServer, start_prometheus

pytestmark = pytest.mark.integration

GAUGE = telemetry_pb2.METRIC_TYPE_GAUGE


@pytest.fixture
def prom(tmp_path: Path) -> Iterator[PrometheusServer]:
    server = start_prometheus(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class Harness:
    def __init__(self, app: CollectorApp, stub: collector_pb2_grpc.CollectorServiceStub,
                 prom: PrometheusServer) -> None:
        self.app, self.stub, self.prom = app, stub, prom
        self.http = httpx.AsyncClient(timeout=5)

    async def push(self, *batches: telemetry_pb2.MetricBatch
                   ) -> list[collector_pb2.PushMetricsResponse]:
        async def requests() -> AsyncIterator[collector_pb2.PushMetricsRequest]:
            for b in batches:
                yield collector_pb2.PushMetricsRequest(batch=b)

        return [r async for r in self.stub.PushMetrics(requests())]

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.app.stats}")
            await asyncio.sleep(0.02)

    async def query(self, promql: str, at_ms: int) -> dict[str, float]:
        """Instant query -> {value of label `i` (or ''): value}."""
        resp = await self.http.get(f"{self.prom.url}/api/v1/query",
                                   params={"query": promql, "time": f"{at_ms / 1000:.3f}"})
        body = resp.json()
        assert body["status"] == "success", body
        return {r["metric"].get("i", ""): float(r["value"][1]) for r in body["data"]["result"]}

    async def query_raw(self, promql: str, at_ms: int) -> list[dict[str, Any]]:
        resp = await self.http.get(f"{self.prom.url}/api/v1/query",
                                   params={"query": promql, "time": f"{at_ms / 1000:.3f}"})
        result: list[dict[str, Any]] = resp.json()["data"]["result"]
        return result


@asynccontextmanager
async def harness(prom: PrometheusServer, **cfg: Any) -> AsyncIterator[Harness]:
    config = CollectorConfig(remote_write_url=prom.write_url, metrics_listen="127.0.0.1:0",
                             retry=RetryConfig(initial_seconds=0.05, max_seconds=0.2), **cfg)
    app = await start_collector(config)
    mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                               authenticator=Authenticator(None, enabled=False),
                               listen="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}")
    h = Harness(app, collector_pb2_grpc.CollectorServiceStub(channel), prom)
    try:
        yield h
    finally:
        await h.http.aclose()
        await channel.close()
        await mesh.stop(0)
        await app.stop()


def batch(agent: str, seq: int, name: str, series: dict[str, list[tuple[int, float]]]
          ) -> telemetry_pb2.MetricBatch:
    return telemetry_pb2.MetricBatch(
        agent_id=agent, sequence=seq,
        resource=telemetry_pb2.TelemetryResource(attributes={"node": "n1", "job_id": "42"}),
        series=[telemetry_pb2.MetricSeries(name=name, labels={"i": i}, type=GAUGE,
                                           timestamps_ms=[t for t, _ in pts],
                                           values=[v for _, v in pts])
                for i, pts in series.items()])


def test_pushed_series_are_queryable_with_resource_labels_and_exact_values(
        prom: PrometheusServer) -> None:
    now = int(time.time() * 1000)

    async def main() -> None:
        async with harness(prom) as h:
            acks = await h.push(
                batch("mon@n1", 1, "aifb_it_gauge", {str(i): [(now - 4000 + k * 1000, i * 10 + k)
                                                              for k in range(3)]
                                                     for i in range(3)}),
                batch("mon@n1", 2, "aifb_it_gauge", {str(i): [(now - 1000 + k * 500, i * 10 + 5)
                                                              for k in range(2)]
                                                     for i in range(3)}))
            assert [(a.sequence, a.accepted_samples, a.rejected_samples) for a in acks] == [
                (1, 9, 0), (2, 6, 0)]
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 15, "15 forwarded")
            last = await h.query("aifb_it_gauge", now)
            counts = await h.query("count_over_time(aifb_it_gauge[1m])", now)
            series = await h.query_raw("aifb_it_gauge", now)
            scrape = (await h.http.get(h.app.http.url if h.app.http else "")).text
        assert last == {"0": 5.0, "1": 15.0, "2": 25.0}
        assert counts == {"0": 5.0, "1": 5.0, "2": 5.0}
        assert {tuple(sorted(s["metric"].items())) for s in series} == {
            (("__name__", "aifb_it_gauge"), ("i", str(i)), ("job_id", "42"), ("node", "n1"))
            for i in range(3)}
        assert 'aifb_it_gauge{i="1",job_id="42",node="n1"} 15.0' in scrape
        assert "aifb_collector_metric_samples_forwarded_total 15.0" in scrape

    asyncio.run(main())


def test_a_future_sample_is_rejected_and_later_writes_still_land(prom: PrometheusServer) -> None:
    now = int(time.time() * 1000)

    async def main() -> None:
        async with harness(prom) as h:
            (ack,) = await h.push(batch("a", 1, "aifb_it_future",
                                        {"0": [(now - 1000, 1.0), (now + 7_200_000, 9.0)]}))
            (ack2,) = await h.push(batch("a", 2, "aifb_it_future", {"0": [(now, 2.0)],
                                                                     "1": [(now, 3.0)]}))
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 3, "3 forwarded")
            values = await h.query("aifb_it_future", now)
            assert h.app.stats.metric_samples_remote_rejected == 0
        assert (ack.accepted_samples, ack.rejected_samples) == (1, 1)
        assert "future" in ack.error_message
        assert (ack2.accepted_samples, ack2.rejected_samples) == (2, 0)
        assert values == {"0": 2.0, "1": 3.0}

    asyncio.run(main())


def test_a_future_sample_is_clamped_to_now_under_the_clamp_policy(
        prom: PrometheusServer) -> None:
    now = int(time.time() * 1000)

    async def main() -> None:
        async with harness(prom, future_policy="clamp") as h:
            (ack,) = await h.push(batch("a", 1, "aifb_it_clamp", {"0": [(now + 7_200_000, 7.0)]}))
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 1, "1 forwarded")
            (ack2,) = await h.push(batch("a", 2, "aifb_it_clamp", {"1": [(now + 1000, 8.0)]}))
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 2, "2 forwarded")
            values = await h.query("aifb_it_clamp", int(time.time() * 1000) + 2000)
        assert (ack.accepted_samples, ack.rejected_samples) == (1, 0)
        assert h.app.stats.metric_samples_clamped == 1
        assert ack2.accepted_samples == 1
        assert values == {"0": 7.0, "1": 8.0}

    asyncio.run(main())


def test_samples_pushed_while_prometheus_is_down_are_acknowledged_once_it_takes_them(
        prom: PrometheusServer) -> None:
    now = int(time.time() * 1000)

    async def main() -> None:
        async with harness(prom) as h:
            prom.stop()
            pushing = asyncio.create_task(h.push(*(
                batch("a", s, "aifb_it_outage", {str(i): [(now - 3000 + s * 1000, float(s))]
                                                 for i in range(4)}) for s in (1, 2, 3))))
            await h.until(lambda: h.app.stats.remote_write_retries >= 2, "retries while down")
            assert not pushing.done()  # no ack while Prometheus has not taken the samples
            assert h.app.stats.metric_samples_forwarded == 0
            assert h.app.stats.metric_samples_held == 12
            prom.start()
            acks = await asyncio.wait_for(pushing, 60)
            assert [a.accepted_samples for a in acks] == [4, 4, 4]
            assert h.app.stats.metric_samples_forwarded == 12
            assert h.app.stats.metric_samples_held == 0
            counts = await h.query("count_over_time(aifb_it_outage[1m])", now)
        assert counts == {str(i): 3.0 for i in range(4)}
        assert h.app.stats.metric_samples_returned == 0

    asyncio.run(main())


def test_a_request_with_one_bad_series_still_stores_the_good_ones(prom: PrometheusServer) -> None:
    now = int(time.time() * 1000)

    async def main() -> None:
        async with harness(prom, forward_workers=1) as h:
            await h.push(batch("a", 1, "aifb_it_split", {"bad": [(now, 1.0)]}))
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 1, "first write")
            good = {str(i): [(now - 500, float(i))] for i in range(6)}
            (ack,) = await h.push(batch("a", 2, "aifb_it_split",
                                        {**good, "bad": [(now - 5000, 2.0)]}))
            await h.until(lambda: h.app.stats.metric_samples_remote_rejected == 1, "1 rejected")
            await h.until(lambda: h.app.stats.metric_samples_forwarded == 7, "7 forwarded")
            values = await h.query("aifb_it_split", now)
        assert ack.accepted_samples == 7  # accepted by the collector; Prometheus refuses one
        assert values == {"bad": 1.0, **{str(i): float(i) for i in range(6)}}
        assert h.app.stats.remote_write_splits >= 1

    asyncio.run(main())

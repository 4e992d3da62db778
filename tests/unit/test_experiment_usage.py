"""What a trial's service used: the collector's latest-value query (LatestStore.matching), and
the probe's figures over a window (CPU cores from the counter's own timestamps, peaks)."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from aifb.collector.model import SeriesOut
from aifb.collector.stores import LatestStore
from aifb.experiment.expand import Configuration
from aifb.experiment.remote import Remote
from aifb.experiment.usage import CPU, GPU_POWER, GPU_UTIL, RSS, UsageProbe, per_unit
from aifb.v1 import collector_pb2 as L

pytestmark = pytest.mark.unit


def _series(name: str, service: str, value: float, ts: int = 1000) -> SeriesOut:
    labels = tuple(sorted({"__name__": name, "service": service, "job_id": "1"}.items()))
    return SeriesOut(labels, [ts], [value])


def test_latest_values_match_every_label_given_and_the_names_asked_for() -> None:
    store = LatestStore(100)
    store.update([_series(CPU, "services/a", 1.5), _series(RSS, "services/a", 2e6),
                  _series(CPU, "services/b", 9.0), _series("other", "services/a", 3.0)])
    found, more = store.matching({"service": "services/a"}, frozenset({CPU, RSS}), 10)
    assert not more
    assert sorted((dict(lbl)["__name__"], v.value) for lbl, v in found) == [(CPU, 1.5),
                                                                              (RSS, 2e6)]
    found, _ = store.matching({"service": "services/a"}, frozenset(), 10)
    assert len(found) == 3  # no names: every series of that service
    found, more = store.matching({"job_id": "1"}, frozenset(), 2)
    assert len(found) == 2 and more  # four matched, two kept, and it says so


def _response(cpu: float, at_s: int, rss: float) -> L.QueryMetricsResponse:
    stamp = Timestamp(seconds=at_s)
    return L.QueryMetricsResponse(samples=[
        L.MetricSample(name=CPU, value=cpu, time=stamp),
        L.MetricSample(name=RSS, value=rss, time=stamp)])


class _Collector(Remote):
    """Answers QueryMetrics from a list, one response per call (no network)."""

    def __init__(self, answers: list[L.QueryMetricsResponse]) -> None:
        super().__init__("127.0.0.1:1")
        self.answers = answers

    def channel(self):  # type: ignore[no-untyped-def, override]
        class Channel:  # what a stub needs to be built; its calls never reach it
            def __getattr__(self, name: str) -> object:
                return lambda *args, **kwargs: None

        return Channel()

    async def call(self, method, request, token, *, timeout=30.0):  # type: ignore[no-untyped-def, override]
        return self.answers.pop(0)


def test_cpu_cores_come_from_the_counters_own_timestamps_and_memory_is_the_peak() -> None:
    probe = UsageProbe(_Collector([_response(10.0, 100, 5e6), _response(10.0, 100, 9e6),
                                   _response(13.0, 106, 7e6)]), "services/a")

    async def three() -> None:
        for _ in range(3):
            await probe.sample()

    asyncio.run(three())
    figures = probe.figures()
    assert figures["cpu_cores"] == pytest.approx(0.5)  # 3 CPU seconds over 6 s of the agent's
    assert figures["memory_rss_bytes"] == 9e6


def test_throughput_per_cpu_core_and_per_gpu_asked_for() -> None:
    config = Configuration(0, "llm", "vllm", resources={"gpus": "2"})
    out = per_unit({"cpu_cores": 0.5}, {"achieved_rate": 100.0,
                                        "output_tokens_per_second": 4000.0}, config)
    assert out["achieved_rate_per_cpu_core"] == 200.0
    assert out["output_tokens_per_second_per_gpu"] == 2000.0
    assert per_unit({}, {"achieved_rate": 100.0}, Configuration(0, "n", "nginx")) == {}


def test_gpu_utilisation_and_power_are_means_over_samples_and_give_throughput_per_watt() -> None:
    def answer(util: list[float], watts: list[float]) -> L.QueryMetricsResponse:
        return L.QueryMetricsResponse(samples=[
            *(L.MetricSample(name=GPU_UTIL, value=u) for u in util),
            *(L.MetricSample(name=GPU_POWER, value=w) for w in watts)])

    # Two GPUs: utilisation is their mean, power their sum; then the mean over samples.
    probe = UsageProbe(_Collector([answer([0.5, 0.7], [200.0, 250.0]),
                                   answer([0.9, 0.9], [300.0, 350.0])]), "services/llm")

    async def two() -> None:
        await probe.sample()
        await probe.sample()

    asyncio.run(two())
    usage = probe.figures()
    assert usage["gpu_utilization"] == pytest.approx(0.75)
    assert usage["gpu_power_watts"] == pytest.approx(550.0)
    out = per_unit(usage, {"output_tokens_per_second": 1100.0}, Configuration(0, "llm", "x"))
    assert out["output_tokens_per_second_per_watt"] == pytest.approx(2.0)

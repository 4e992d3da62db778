"""Remote write: normalisation, byte-exact encoding, and the sender's split/retry rules."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import cramjam
import httpx
import pytest

from aifb.collector.config import CollectorConfig, RetryConfig
from aifb.collector.model import NotDelivered, SeriesOut
from aifb.collector.remote_write import (
    RemoteWriter,
    TimeWindow,
    compress,
    encode_write_request,
    normalize_samples,
)
from aifb.collector.stats import Stats
from aifb.wire import prompb_pb2

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000
WINDOW = TimeWindow(now=NOW, oldest=NOW - 3_600_000, newest=NOW + 300_000, clamp=False)


def _reference(series: list[SeriesOut]) -> bytes:
    request = prompb_pb2.WriteRequest()
    for s in series:
        request.timeseries.add(
            labels=[prompb_pb2.Label(name=n, value=v) for n, v in s.labels],
            samples=[prompb_pb2.Sample(value=v, timestamp=t)
                     for t, v in zip(s.timestamps, s.values, strict=True)])
    return request.SerializeToString()


def _series(i: int, n: int = 3, base: int = NOW) -> SeriesOut:
    return SeriesOut((("__name__", "m"), ("i", str(i)), ("node", "nø\"de")),
                     [base + k * 1000 for k in range(n)], [random.random() * i for _ in range(n)])


def test_encoder_output_is_byte_identical_to_upb_serialization() -> None:
    series = [_series(i + 1, n=i % 4 + 1) for i in range(200)]
    assert encode_write_request(series) == _reference(series)


def test_encoder_writes_zero_values_explicitly_and_they_parse_back_equal() -> None:
    series = [_series(0), _series(1)]  # upb omits value=0.0; we write it, both parse the same
    parsed = prompb_pb2.WriteRequest.FromString(encode_write_request(series))
    assert parsed == prompb_pb2.WriteRequest.FromString(_reference(series))


def test_encoder_falls_back_for_timestamps_outside_six_byte_varints() -> None:
    series = [SeriesOut((("__name__", "old"),), [5, 1 << 36], [1.0, 2.0])]
    assert encode_write_request(series) == _reference(series)


def test_compress_is_snappy_block_format() -> None:
    body = encode_write_request([_series(1)])
    assert bytes(cramjam.snappy.decompress_raw(compress(body))) == body


def test_normalize_keeps_sorted_unique_in_range_samples_untouched() -> None:
    ts, values = [NOW, NOW + 1], [1.0, 2.0]
    assert normalize_samples(ts, values, WINDOW) == (ts, values, 0, 0, 0, "")


def test_normalize_sorts_and_drops_exact_duplicates_and_rejects_conflicts() -> None:
    ts, values, rejected, clamped, dedup, reason = normalize_samples(
        [NOW + 2, NOW, NOW + 2, NOW + 1, NOW + 1], [3.0, 1.0, 3.0, 2.0, 9.0], WINDOW)
    assert (ts, values) == ([NOW, NOW + 1, NOW + 2], [1.0, 2.0, 3.0])
    assert (rejected, clamped, dedup) == (1, 0, 1)
    assert "two values for one timestamp" in reason


def test_normalize_rejects_future_and_too_old_samples() -> None:
    ts, _, rejected, _, _, reason = normalize_samples(
        [NOW - 3_600_001, NOW, NOW + 300_001], [1.0, 2.0, 3.0], WINDOW)
    assert ts == [NOW] and rejected == 2
    assert "future" in reason and "older" in reason


def test_normalize_clamps_future_samples_to_now_when_told() -> None:
    window = TimeWindow(now=NOW, oldest=WINDOW.oldest, newest=WINDOW.newest, clamp=True)
    ts, values, rejected, clamped, _, _ = normalize_samples([NOW - 5, NOW + 7_200_000],
                                                            [1.0, 2.0], window)
    assert (ts, values, rejected, clamped) == ([NOW - 5, NOW], [1.0, 2.0], 0, 1)


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _writer(handler: Handler, **retry: float) -> tuple[RemoteWriter, Stats]:
    stats = Stats()
    config = CollectorConfig(retry=RetryConfig(initial_seconds=0.001, max_seconds=0.002,
                                               **retry))
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RemoteWriter("http://prom.test/api/v1/write", client, stats, config), stats


def _decode(request: httpx.Request) -> prompb_pb2.WriteRequest:
    return prompb_pb2.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(
        request.content)))


def test_sender_sends_the_required_headers_and_counts_204_as_forwarded() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    writer, stats = _writer(handler)
    asyncio.run(writer.write([_series(1), _series(2)]))
    assert len(seen) == 1
    headers = seen[0].headers
    assert headers["content-encoding"] == "snappy"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-prometheus-remote-write-version"] == "0.1.0"
    assert len(_decode(seen[0]).timeseries) == 2
    assert stats.metric_samples_forwarded == 6


def test_sender_bisects_a_400_so_only_the_bad_series_is_rejected() -> None:
    stored: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        names = [dict((lb.name, lb.value) for lb in ts.labels)["i"]
                 for ts in _decode(request).timeseries]
        if "5" in names:
            return httpx.Response(400, text="out of order sample")
        stored.extend(names)
        return httpx.Response(204)

    writer, stats = _writer(handler)
    asyncio.run(writer.write([_series(i) for i in range(8)]))
    assert sorted(stored) == ["0", "1", "2", "3", "4", "6", "7"]
    assert stats.metric_samples_forwarded == 21
    assert stats.metric_samples_remote_rejected == 3
    assert stats.remote_write_retries == 0


def test_sender_treats_500_too_old_sample_as_permanent() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, text="too old sample")

    writer, stats = _writer(handler)
    asyncio.run(writer.write([_series(0)]))
    assert calls == 1
    assert stats.metric_samples_remote_rejected == 3 and stats.remote_write_retries == 0


def test_sender_retries_429_503_and_connection_errors_then_delivers() -> None:
    answers = iter(["refuse", 429, 503])

    async def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers, 204)
        if answer == "refuse":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(int(answer), text="busy")

    writer, stats = _writer(handler)
    asyncio.run(writer.write([_series(0)]))
    assert stats.remote_write_retries == 3
    assert stats.metric_samples_forwarded == 3


def test_sender_retries_past_the_budget_until_stopped_then_says_not_delivered(
        caplog: pytest.LogCaptureFixture) -> None:
    answers: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        answers.append(503)
        return httpx.Response(503, text="unavailable")

    writer, stats = _writer(handler, max_elapsed_seconds=0.05)

    async def main() -> None:
        task = asyncio.create_task(writer.write([_series(0), _series(1)]))
        while len(answers) < 20:  # far past the 0.05 s budget, still retrying
            await asyncio.sleep(0.01)
        assert not task.done()
        writer.stop.set()
        with pytest.raises(NotDelivered, match="6 samples"):
            await task

    asyncio.run(main())
    assert stats.metric_samples_forwarded == 0 and stats.remote_write_retries >= 19
    assert sum("has failed for" in r.message for r in caplog.records) == 1  # logged once

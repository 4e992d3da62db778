"""Loki: label rendering and escaping, both body formats, batching and the retry rules."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import cramjam
import httpx
import pytest

from aifb.collector.config import CollectorConfig, RetryConfig
from aifb.collector.loki import LokiForwarder, encode_json, encode_protobuf, render_labels
from aifb.collector.stats import Stats
from aifb.wire import logproto_pb2
from tests.fixtures.loki import BadPush, parse_labels

pytestmark = pytest.mark.unit

LABELS = (("job", 'we"ird\\\nname'), ("a", "x"))


def test_labels_render_sorted_with_escapes_that_the_strict_parser_reads_back() -> None:
    text = render_labels(LABELS)
    assert text == '{a="x", job="we\\"ird\\\\\\nname"}'
    assert parse_labels(text) == dict(LABELS)


def test_strict_parser_refuses_bad_selectors() -> None:
    for bad in ("{}", "a=\"x\"", '{a="x",,b="y"}', '{1a="x"}', '{a="x", a="y"}', '{a="\\q"}'):
        with pytest.raises(BadPush):
            parse_labels(bad)


def test_protobuf_body_is_snappy_pushrequest_with_entries_in_time_order() -> None:
    body = encode_protobuf([(LABELS, [(3_000_000_001, "c"), (1_000_000_000, "a")])])
    request = logproto_pb2.PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    (stream,) = request.streams
    assert stream.labels == render_labels(LABELS)
    assert [(e.timestamp.seconds, e.timestamp.nanos, e.line) for e in stream.entries] == [
        (1, 0, "a"), (3, 1, "c")]


def test_json_body_has_lokis_shape_with_string_nanoseconds() -> None:
    body = json.loads(encode_json([((("job", "x"),), [(2, "b"), (1, "a")])]))
    assert body == {"streams": [{"stream": {"job": "x"}, "values": [["1", "a"], ["2", "b"]]}]}


def _forwarder(handler: httpx.MockTransport, **cfg: object) -> tuple[LokiForwarder, Stats]:
    stats = Stats()
    config = CollectorConfig(loki_url="http://loki.test", retry=RetryConfig(
        initial_seconds=0.001, max_seconds=0.002, max_elapsed_seconds=1.0), **cfg)  # type: ignore[arg-type]
    return LokiForwarder(config, httpx.AsyncClient(transport=handler), stats), stats


def test_forwarder_retries_429_and_500_then_counts_lines_forwarded() -> None:
    answers = iter([429, 500])
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(next(answers, 204))

    fwd, stats = _forwarder(httpx.MockTransport(handler))
    fwd.add([((("job", "x"),), [time.time_ns()], ["hello"])])
    asyncio.run(fwd.flush())
    assert paths == ["/loki/api/v1/push"] * 3
    assert (stats.loki_retries, stats.log_lines_forwarded) == (2, 1)


def test_forwarder_counts_a_400_as_rejected_without_retrying() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, text="entry too far behind")

    fwd, stats = _forwarder(httpx.MockTransport(handler))
    fwd.add([((("job", "x"),), [1, 2], ["a", "b"])])
    asyncio.run(fwd.flush())
    assert calls == 1 and stats.log_lines_remote_rejected == 2 and stats.loki_retries == 0


def test_forwarder_json_gzip_option_sets_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    fwd, _ = _forwarder(httpx.MockTransport(handler), loki_format="json", loki_gzip=True)
    fwd.add([((("job", "x"),), [5], ["line"])])
    asyncio.run(fwd.flush())
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(seen[0].content))["streams"][0]["values"] == [["5", "line"]]


def test_forwarder_is_due_when_full_and_waits_otherwise() -> None:
    fwd, _ = _forwarder(httpx.MockTransport(lambda r: httpx.Response(204)), loki_batch_bytes=10,
                        loki_batch_wait_seconds=60)
    assert fwd.due_in() is None
    fwd.add([((("job", "x"),), [1], ["12345"])])
    due = fwd.due_in()
    assert due is not None and 59 < due <= 60
    fwd.add([((("job", "x"),), [2], ["67890"])])
    assert fwd.due_in() == 0.0


def test_a_cancelled_flush_keeps_its_lines_buffered_until_a_later_push_is_acknowledged() -> None:
    async def main() -> None:
        release = asyncio.Event()
        bodies: list[bytes] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            await release.wait()  # the push hangs until the test releases it
            bodies.append(request.content)
            return httpx.Response(204)

        fwd, stats = _forwarder(httpx.MockTransport(handler))
        fwd.add([((("job", "x"),), [1_000_000_001, 1_000_000_002], ["a", "b"])])
        flush = asyncio.create_task(fwd.flush())
        await asyncio.sleep(0.05)
        assert fwd.buffered_lines == 2  # in flight still counts as buffered
        fwd.add([((("job", "x"),), [1_000_000_003], [b"c"])])  # arrives during the push
        flush.cancel()  # the collector stops mid-push
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert fwd.buffered_lines == 3 and stats.log_lines_forwarded == 0
        release.set()
        await fwd.flush()
        assert fwd.buffered_lines == 0 and stats.log_lines_forwarded == 3
        (body,) = bodies
        request = logproto_pb2.PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        assert [e.line for s in request.streams for e in s.entries] == ["a", "b", "c"]

    asyncio.run(main())


def test_lines_given_as_bytes_are_pushed_like_str_lines() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(204)

    fwd, stats = _forwarder(httpx.MockTransport(handler))
    now = time.time_ns()
    fwd.add([((("job", "x"),), [now] * 20, [f"é{i}".encode() for i in range(20)])])
    fwd.add([((("job", "y"),), [now + 1], ["plain"])])
    asyncio.run(fwd.flush())
    request = logproto_pb2.PushRequest.FromString(bytes(cramjam.snappy.decompress_raw(seen[0])))
    lines = {s.labels: [e.line for e in s.entries] for s in request.streams}
    assert lines == {'{job="x"}': [f"é{i}" for i in range(20)], '{job="y"}': ["plain"]}
    assert stats.log_lines_forwarded == 21

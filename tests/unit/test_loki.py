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

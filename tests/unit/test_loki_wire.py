"""Loki PushRequest bytes written column-wise equal upb's; the column log store keeps order."""

from __future__ import annotations

import random
import time

import pytest
from google.protobuf import timestamp_pb2

from aifb.collector.loki_wire import encode_push_request
from aifb.collector.stores import LogStore
from aifb.wire import logproto_pb2

pytestmark = pytest.mark.unit


def _reference(streams: list[tuple[str, list[int], list[str]]]) -> bytes:
    request = logproto_pb2.PushRequest()
    for labels, stamps, lines in streams:
        request.streams.add(labels=labels, entries=[logproto_pb2.EntryAdapter(
            timestamp=timestamp_pb2.Timestamp(seconds=t // 10**9, nanos=t % 10**9), line=line)
            for t, line in zip(stamps, lines, strict=True)])
    return request.SerializeToString()


@pytest.mark.parametrize("seed", range(5))
def test_push_request_bytes_are_identical_to_upb_serialization(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        streams = []
        for s in range(rng.randint(1, 4)):
            n = rng.randint(0, 40)
            base = rng.choice([time.time_ns(), 5 * 10**9, 10**9, 0, 2**62])
            stamps = sorted(base + rng.choice([0, 1, 999, 10**6, rng.randrange(10**12)])
                            for _ in range(n))
            lines = ["".join(rng.choice("abcé\"\n😀") for _ in range(rng.choice([0, 1, 100, 300])))
                     for _ in range(n)]
            streams.append((f'{{job="x{s}"}}', stamps, lines))
        assert encode_push_request(streams) == _reference(streams)


@pytest.mark.parametrize("seed", range(4))
def test_runs_of_one_timestamp_and_bytes_lines_give_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        streams, as_bytes = [], []
        for s in range(rng.randint(1, 3)):
            n = rng.choice([0, 1, 15, 16, 17, 40, 200])
            base = rng.choice([time.time_ns(), 5 * 10**9, 10**9, 0, 2**62])
            values = sorted(base + rng.choice([0, 1, 999, 10**6, rng.randrange(10**12)])
                            for _ in range(rng.choice([1, 2, 3, 50])))
            stamps = sorted(rng.choice(values) for _ in range(n))  # runs of equal stamps
            lines = ["".join(rng.choice("abcé\"\n😀") for _ in range(rng.choice([0, 1, 100, 300])))
                     for _ in range(n)]
            streams.append((f'{{job="x{s}"}}', stamps, lines))
            as_bytes.append((f'{{job="x{s}"}}', stamps, [line.encode() for line in lines]))
        reference = _reference(streams)
        assert encode_push_request(streams) == reference
        assert encode_push_request(as_bytes) == reference
        assert encode_push_request(as_bytes, ordered=True) == reference


def test_column_log_store_keeps_the_newest_lines_and_answers_queries_in_order() -> None:
    store = LogStore(5)
    a, b = (("job", "a"),), (("job", "b"),)
    store.add_stream(a, [1, 2, 3], ["a1", "a2", "a3"])
    store.add_stream(b, [4, 5], ["b4", "b5"])
    store.add_stream(a, [6, 7], ["a6", "a7"])  # the two oldest lines go
    assert [(r.timestamp_ns, r.line) for r in store.lines] == [
        (3, "a3"), (4, "b4"), (5, "b5"), (6, "a6"), (7, "a7")]
    assert [r.line for r in store.query({"job": "a"}, 0, 0, 10)] == ["a3", "a6", "a7"]
    assert [r.line for r in store.query({}, 0, 0, 2)] == ["a6", "a7"]
    assert [r.line for r in store.query({}, 4, 7, 10, contains="b")] == ["b4", "b5"]
    store.add_stream(b, list(range(10, 20)), [str(i) for i in range(10, 20)])
    assert [r.line for r in store.lines] == ["15", "16", "17", "18", "19"]

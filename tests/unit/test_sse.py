"""The SSE reader: events from body payload bytes, split anywhere, with their arrival times."""

from __future__ import annotations

import pytest

from aifb.client.workloads.sse import SseError, SseReader

pytestmark = pytest.mark.unit

BODY = (b": keep-alive comment\n\n"
        b"data: {\"a\": 1}\n\n"
        b"event: ignored\r\ndata: line one\r\ndata: line two\r\n\r\n"
        b"data:[DONE]\n\n")
EVENTS = [b'{"a": 1}', b"line one\nline two", b"[DONE]"]


@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_events_come_out_whole_however_the_bytes_are_split(split: int) -> None:
    reader, got = SseReader(), []
    for t, i in enumerate(range(0, len(BODY), split)):
        got += [data for data, _ in reader.feed(BODY[i:i + split], t)]
    assert got == EVENTS


def test_a_stream_whose_first_line_looks_like_a_chunk_size_is_read_as_sse() -> None:
    # "abc" is a field name SSE ignores; the reader must not take it for chunk framing.
    assert SseReader().feed(b"abc\r\ndata: x\r\n\r\n", 1) == [(b"x", 1)]


def test_each_event_carries_the_arrival_time_of_the_bytes_that_completed_it() -> None:
    reader = SseReader()
    assert reader.feed(b"data: x", 10) == []
    assert reader.feed(b"\n\ndata: y\n", 20) == [(b"x", 20)]
    assert reader.feed(b"\n", 30) == [(b"y", 30)]


def test_an_unterminated_last_event_is_not_dispatched() -> None:
    reader = SseReader()
    assert reader.feed(b"data: whole\n\ndata: cut", 1) == [(b"whole", 1)]


def test_a_line_longer_than_the_limit_is_an_error() -> None:
    reader = SseReader()
    with pytest.raises(SseError):
        reader.feed(b"data: " + b"x" * (5 * 1024 * 1024), 1)

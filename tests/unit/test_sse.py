"""The SSE reader: events from raw (chunked or plain) body bytes, split anywhere, with times."""

from __future__ import annotations

import pytest

from aifb.client.sse import SseError, SseReader

pytestmark = pytest.mark.unit

BODY = (b": keep-alive comment\n\n"
        b"data: {\"a\": 1}\n\n"
        b"event: ignored\r\ndata: line one\r\ndata: line two\r\n\r\n"
        b"data:[DONE]\n\n")
EVENTS = [b'{"a": 1}', b"line one\nline two", b"[DONE]"]


def _chunked(payload: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(payload), size):
        piece = payload[i:i + size]
        out += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("split", [1, 3, 7, 1000])
def test_events_come_out_whole_however_the_bytes_are_split(chunked: bool, split: int) -> None:
    raw = _chunked(BODY, 5) if chunked else BODY
    reader, got = SseReader(), []
    for t, i in enumerate(range(0, len(raw), split)):
        got += [data for data, _ in reader.feed(raw[i:i + split], t)]
    assert got == EVENTS
    assert reader.body_done is chunked


def test_each_event_carries_the_arrival_time_of_the_bytes_that_completed_it() -> None:
    reader = SseReader()
    assert reader.feed(b"data: x", 10) == []
    assert reader.feed(b"\n\ndata: y\n", 20) == [(b"x", 20)]
    assert reader.feed(b"\n", 30) == [(b"y", 30)]


def test_an_unterminated_last_event_is_not_dispatched() -> None:
    reader = SseReader()
    assert reader.feed(b"data: whole\n\ndata: cut", 1) == [(b"whole", 1)]


def test_broken_chunk_framing_is_an_error() -> None:
    reader = SseReader()
    with pytest.raises(SseError):
        reader.feed(b"5\r\ndata:XX\r\n", 1)  # 5 payload bytes, then no CRLF

"""Incremental Server-Sent Events reader over HTTP body bytes, with arrival times per event.

The fast HTTP client hands a streaming caller the body's payload as it arrives (chunked
transfer framing already removed), stamped in `data_received`. `SseReader` splits it into
events; an event the body ends before its blank line is not dispatched (as the specification
says). Each event's `data` field (multi-line data joined with "\\n", as the SSE specification
says) is returned with the arrival time of the bytes that completed it: that time, not the time
a task got round to parsing it, is what TTFT and ITL are made of.
"""

from __future__ import annotations

__all__ = ["SseError", "SseReader"]

_MAX_LINE = 4 * 1024 * 1024  # one SSE line larger than this is a protocol error, not a stream


class SseError(Exception):
    """The body is not a valid SSE stream (a line longer than the reader accepts)."""


class SseReader:
    """Feed body bytes as they arrive; get back `(data, arrival_ns)` for every complete event."""

    def __init__(self) -> None:
        self._pending = b""  # payload not yet split into complete lines
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, data: bytes, now_ns: int) -> list[tuple[bytes, int]]:
        return self._events(data, now_ns) if data else []

    def _events(self, payload: bytes, now_ns: int) -> list[tuple[bytes, int]]:
        buf = self._pending + payload if self._pending else payload
        events: list[tuple[bytes, int]] = []
        start = 0
        while True:
            eol = buf.find(b"\n", start)
            if eol < 0:
                break
            line = buf[start:eol]
            start = eol + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line dispatches the event
                if self._data:
                    events.append((b"\n".join(self._data), now_ns))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":...") and other fields (event, id, retry) carry no tokens: skipped
        self._pending = buf[start:]
        if len(self._pending) > _MAX_LINE:
            raise SseError("SSE line too long")
        return events

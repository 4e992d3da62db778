"""Incremental Server-Sent Events reader over raw HTTP body bytes, with arrival times per event.

The fast HTTP client hands a streaming caller the body bytes exactly as they arrived, stamped in
`data_received`; for a `Transfer-Encoding: chunked` response those bytes still carry the chunk
framing. `SseReader` removes that framing when the body starts with a chunk-size line (an SSE
stream never does: its lines start with a field name such as `data`, a colon or a blank line) and
splits what remains into events; an event the body ends before its blank line is not dispatched
(as the specification says). Each event's `data` field (multi-line data joined with "\\n", as
the SSE specification says) is returned with the arrival time of the bytes that completed it:
that time, not the time a task got round to parsing it, is what TTFT and ITL are made of.
"""

from __future__ import annotations

import re

__all__ = ["SseError", "SseReader"]

_CHUNK_SIZE_LINE = re.compile(rb"[0-9A-Fa-f]+(;[^\r\n]*)?\r\n")
_MAX_LINE = 4 * 1024 * 1024  # one SSE line larger than this is a protocol error, not a stream


class SseError(Exception):
    """The body is neither a valid SSE stream nor valid chunked framing around one."""


class SseReader:
    """Feed body bytes as they arrive; get back `(data, arrival_ns)` for every complete event."""

    def __init__(self) -> None:
        self._chunked: bool | None = None  # decided by the first body bytes
        self._raw = b""  # chunked: undecoded framing carried over between feeds
        self._chunk_left = 0
        self._crlf_left = 0
        self._body_done = False
        self._pending = b""  # decoded payload not yet split into complete lines
        self._data: list[bytes] = []  # data lines of the event being read

    @property
    def body_done(self) -> bool:
        """True once the chunked body's last (zero-size) chunk has been seen."""
        return self._body_done

    def feed(self, data: bytes, now_ns: int) -> list[tuple[bytes, int]]:
        if self._chunked is None:
            probe = self._raw + data
            if b"\n" not in probe and len(probe) < 32:
                self._raw = probe  # too little to tell yet
                return []
            self._raw = b""
            self._chunked = _CHUNK_SIZE_LINE.match(probe) is not None
            data = probe
        payload = self._dechunk(data) if self._chunked else data
        return self._events(payload, now_ns) if payload else []

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._raw + data if self._raw else data
        self._raw = b""
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self._body_done:
            if self._chunk_left:
                take = min(self._chunk_left, end - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._crlf_left = 2
                continue
            if self._crlf_left:
                take = min(self._crlf_left, end - pos)
                if buf[pos:pos + take] != b"\r\n"[2 - self._crlf_left:2 - self._crlf_left + take]:
                    raise SseError("chunk payload not followed by CRLF")
                pos += take
                self._crlf_left -= take
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 1024:
                    raise SseError("chunk-size line too long")
                self._raw = buf[pos:]
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                raise SseError(f"bad chunk size {buf[pos:eol][:40]!r}") from None
            pos = eol + 2
            if size == 0:
                self._body_done = True  # trailers (if any) carry no events
            self._chunk_left = size
        return b"".join(out)

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

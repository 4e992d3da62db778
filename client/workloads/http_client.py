"""A minimal HTTP/1.1 keep-alive client on asyncio Protocols, built for load generation.

One request at a time per connection (no pipelining); requests are pre-encoded bytes. The parser
reads the status line and only the framing headers (Content-Length, Transfer-Encoding: chunked,
Connection: close) and completes a response from `data_received` itself, stamping its end time
there, so the timing does not include the wait for the awaiting task to be scheduled. Bodies are
counted, and kept only on request. `on_chunk` gives streaming callers the body's payload as it
arrives (chunked framing removed), each piece with its arrival time. A pool hands out idle
connections and opens new ones up to its limit.

Two ways to use a connection: `send()` returns a future (for coroutines), `send_cb()` calls a
function with the response or the HttpError from `data_received` itself: no future, no task,
which is what lets an open loop send 10k requests a second from one core. The pool likewise
takes a coroutine (`acquire`) or a callback (`acquire_cb`) as a waiter; waiters are served in
order, whichever kind they are. A connection released while its reply is still coming (the
awaiting task was cancelled: a client giving up) is closed, never reused: the server sees the
client hang up, and no later request can read the rest of that reply.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from time import perf_counter_ns
from typing import cast

__all__ = ["ConnCallback", "HttpConnection", "HttpError", "HttpPool", "HttpResponse",
           "ResponseCallback", "build_request"]

_MAX_HEAD = 64 * 1024
_HEADS_MAX = 256
# Parsed response heads, keyed by their bytes: (status, length, close after). Only final
# (>= 200) heads that parsed cleanly go in; the method (HEAD) is applied after the lookup.
_HEADS: dict[bytes, tuple[int, int, bool]] = {}
ChunkCallback = Callable[[bytes, int], None]


class HttpError(Exception):
    """A transport or protocol failure; `kind` is a stable short name ("closed", "protocol")."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


class HttpResponse:
    __slots__ = ("body", "body_len", "end_ns", "first_byte_ns", "status")

    def __init__(self, status: int, body_len: int, body: bytes | None, first_byte_ns: int,
                 end_ns: int) -> None:
        self.status = status
        self.body_len = body_len
        self.body = body
        self.first_byte_ns = first_byte_ns
        self.end_ns = end_ns


# Called once per send_cb() with the connection and the response or the failure.
ResponseCallback = Callable[["HttpConnection", "HttpResponse | HttpError"], None]
# Called once per acquire_cb() with a connection or the failure to open one.
ConnCallback = Callable[["HttpConnection | HttpError"], None]


def build_request(method: str, target: str, host: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    """Encode one HTTP/1.1 request (Host and Content-Length added; keep-alive is the default)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for key, value in (headers or {}).items():
        if "\r" in key + value or "\n" in key + value:
            raise ValueError(f"header {key!r} contains a line break")
        lines.append(f"{key}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; `send(raw)` returns a future of the HttpResponse."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.sent_ns = 0
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._callback: ResponseCallback | None = None
        self.context: object = None  # the send_cb() caller's, e.g. what the request was
        self._keep_body = False
        self._on_chunk: ChunkCallback | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._head = True
        self._status = 0
        self._length = -1  # -1 unknown (read to close), -2 chunked
        self._close_after = False
        self._body_len = 0
        self._body: list[bytes] = []
        self._first_ns = 0
        self._chunk_left = 0  # chunked: payload bytes left in the current chunk
        self._crlf_left = 0  # chunked: bytes of the CRLF after the payload still to skip
        self._trailer = False  # chunked: the last chunk was seen, reading to CRLF CRLF

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None or self._callback is not None:
            if not self._head and self._length == -1:
                self._finish(perf_counter_ns())
            else:
                self._deliver_error(HttpError("closed", str(exc or "connection closed")))

    def data_received(self, data: bytes) -> None:
        now = perf_counter_ns()
        if self._waiter is None and self._callback is None:
            self._fail("protocol", "unsolicited data")
            return
        if not self._first_ns:
            self._first_ns = now
        if self._head:
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail("protocol", "response head too large")
                else:
                    self._buf = buf
                return
            self._buf = b""
            if not self._parse_head(buf[:end]):
                return
            data = buf[end + 4:]
            length = self._length
            if length == 0:
                self._finish(now)
                return
            if 0 < length <= len(data) and not self._keep_body and self._on_chunk is None:
                self._body_len = len(data)  # the whole body came with the head
                self._finish(now)
                return
        if data:
            self._body_data(data, now)

    # -- parsing
    def _parse_head(self, head: bytes) -> bool:
        known = _HEADS.get(head)  # a server repeats its heads byte for byte (but for Date)
        if known is not None:
            self._status, length, self._close_after = known
            self._length = 0 if self._method_head else length
            self._head = False
            return True
        if not self._parse_new_head(head):
            return False
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        _HEADS[head] = (self._status, self._length, self._close_after)
        if self._method_head:
            self._length = 0
        return True

    def _parse_new_head(self, head: bytes) -> bool:
        if head[:5] != b"HTTP/" or len(head) < 12:
            self._fail("protocol", "bad status line")
            return False
        try:
            self._status = status = int(head[9:12])
        except ValueError:
            self._fail("protocol", "bad status code")
            return False
        low = head.lower()
        if head[5:8] == b"1.0":
            self._close_after = b"\nconnection: keep-alive" not in low
        else:
            self._close_after = b"\nconnection: close" in low
        if status < 200:  # we never send Expect: 100-continue
            self._fail("protocol", f"unexpected interim response {status}")
            return False
        if status in (204, 304):
            self._length = 0
        elif b"\ntransfer-encoding:" in low and b"chunked" in low:
            self._length = -2
        else:
            pos = low.find(b"\ncontent-length:")
            if pos >= 0:
                eol = low.find(b"\r", pos)
                try:
                    self._length = int(low[pos + 16: eol if eol >= 0 else None])
                except ValueError:
                    self._fail("protocol", "bad content-length")
                    return False
            else:
                self._length = -1
                self._close_after = True
        self._head = False
        return True

    _method_head = False

    def _body_data(self, data: bytes, now: int) -> None:
        if self._length == -2:
            self._chunked(data, now)  # hands on_chunk the decoded payload itself
            return
        if self._on_chunk is not None:
            self._on_chunk(data, now)
        self._body_len += len(data)
        if self._keep_body:
            self._body.append(data)
        if self._length >= 0 and self._body_len >= self._length:
            self._finish(now)

    def _chunked(self, data: bytes, now: int) -> None:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos, size_buf = 0, len(buf)
        while True:
            if self._trailer:
                if buf.find(b"\r\n\r\n", pos) >= 0:
                    self._finish(now)
                else:
                    self._buf = buf[pos:]
                return
            if self._chunk_left:
                take = min(self._chunk_left, size_buf - pos)
                self._body_len += take
                if take and self._on_chunk is not None:
                    # Payload only (no size lines, CRLFs or trailers), stamped with the arrival
                    # time of the read that brought it.
                    self._on_chunk(buf[pos:pos + take], now)
                if self._keep_body:
                    self._body.append(buf[pos:pos + take])
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    return
                self._crlf_left = 2
            if self._crlf_left:
                take = min(self._crlf_left, size_buf - pos)
                pos += take
                self._crlf_left -= take
                if self._crlf_left:
                    return
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self._buf = buf[pos:]
                return
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                self._fail("protocol", "bad chunk size")
                return
            if size == 0:
                self._trailer = True
                pos = eol  # keep the CRLF: the trailer section ends at CRLF CRLF
            else:
                self._chunk_left = size
                pos = eol + 2

    def _finish(self, now: int) -> None:
        waiter, callback = self._waiter, self._callback
        body = b"".join(self._body) if self._keep_body else None
        resp = HttpResponse(self._status, self._body_len, body, self._first_ns, now)
        close = self._close_after
        self._waiter = self._callback = None
        self._reset()
        if close and self.transport is not None:
            self.closed = True
            self.transport.close()
        if callback is not None:
            callback(self, resp)
        elif waiter is not None and not waiter.done():
            waiter.set_result(resp)

    def _deliver_error(self, error: HttpError) -> None:
        waiter, callback = self._waiter, self._callback
        self._waiter = self._callback = None
        if callback is not None:
            callback(self, error)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _fail(self, kind: str, message: str) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._deliver_error(HttpError(kind, message))

    # -- API
    def send(self, raw: bytes, *, keep_body: bool = False, on_chunk: ChunkCallback | None = None,
             head: bool = False) -> asyncio.Future[HttpResponse]:
        if self.closed or self.transport is None:
            raise HttpError("closed", "connection is closed")
        fut: asyncio.Future[HttpResponse] = self._loop.create_future()
        self._waiter = fut
        self._keep_body = keep_body
        self._on_chunk = on_chunk
        self._method_head = head
        self.sent_ns = perf_counter_ns()
        self.transport.write(raw)
        return fut

    def send_cb(self, raw: bytes, callback: ResponseCallback, *, head: bool = False) -> int:
        """Write `raw` now; `callback(self, response or HttpError)` follows. Returns sent_ns."""
        if self.closed or self.transport is None:
            raise HttpError("closed", "connection is closed")
        self._callback = callback
        self._keep_body = False
        self._on_chunk = None
        self._method_head = head
        self.sent_ns = sent = perf_counter_ns()
        self.transport.write(raw)
        return sent

    def timeout(self, message: str = "request timed out") -> None:
        self._fail("timeout", message)

    @property
    def awaiting(self) -> bool:
        """A request went out and its reply has neither ended nor failed."""
        return self._waiter is not None or self._callback is not None

    def abandon(self) -> None:
        """The caller gave up on the reply in progress: close the connection (how a client
        that hangs up tells the server to stop), delivering nothing to anyone."""
        self._waiter = self._callback = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one host:port, at most `limit` of them; FIFO waiters."""

    def __init__(self, host: str, port: int, limit: int = 64,
                 connect_timeout_s: float = 5.0) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.connect_timeout_s = connect_timeout_s
        self.opened = 0
        self._opening = 0
        self._idle: collections.deque[HttpConnection] = collections.deque()
        self._all: set[HttpConnection] = set()
        self._waiters: collections.deque[asyncio.Future[HttpConnection] | ConnCallback] = (
            collections.deque())
        self._opens: set[asyncio.Task[HttpConnection]] = set()
        self._closed = False

    @property
    def busy(self) -> list[HttpConnection]:
        idle = set(self._idle)
        return [c for c in self._all if c not in idle]

    async def _open(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: HttpConnection(loop), self.host, self.port),
                self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise HttpError("connect", f"{self.host}:{self.port}: {exc}") from exc
        self.opened += 1
        self._all.add(proto)
        return proto

    def try_acquire(self) -> HttpConnection | None:
        """An idle connection now, or None (then await acquire())."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        return None

    async def acquire(self) -> HttpConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._all.discard(conn)
        if len(self._all) + self._opening < self.limit:
            self._opening += 1
            try:
                return await self._open()
            finally:
                self._opening -= 1
        fut: asyncio.Future[HttpConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut

    def acquire_cb(self, callback: ConnCallback) -> None:
        """`callback(connection or HttpError)`: at once when one is idle, else when one is
        opened or released (in order with the other waiters). Never drops the caller."""
        conn = self.try_acquire()
        if conn is not None:
            callback(conn)
            return
        self._waiters.append(callback)
        if len(self._all) + self._opening < self.limit:
            self._open_for_waiter()

    @property
    def queued(self) -> int:
        """Waiters for a connection right now."""
        return len(self._waiters)

    def _open_for_waiter(self) -> None:
        self._opening += 1
        task = asyncio.ensure_future(self._open())
        self._opens.add(task)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[HttpConnection]) -> None:
        self._opens.discard(task)
        self._opening -= 1
        if task.cancelled():
            self._fail_waiter(HttpError("connect", "cancelled"))
        elif (exc := task.exception()) is not None:
            self._fail_waiter(exc if isinstance(exc, HttpError) else
                              HttpError("connect", str(exc)))
        elif self._closed:
            conn = task.result()
            if conn.transport is not None:
                conn.transport.close()
        else:
            self.release(task.result())

    def _fail_waiter(self, error: HttpError) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(error)
                    return
            else:
                waiter(error)
                return

    def release(self, conn: HttpConnection) -> None:
        if not conn.closed and conn.awaiting:  # its caller was cancelled mid-reply
            conn.abandon()
        if conn.closed:
            self._all.discard(conn)
            if self._waiters and len(self._all) + self._opening < self.limit:
                self._open_for_waiter()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            else:
                waiter(conn)
                return
        self._idle.append(conn)

    def close(self) -> None:
        self._closed = True
        for task in self._opens:
            task.cancel()
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        waiters = list(self._waiters)
        self._all.clear()
        self._idle.clear()
        self._waiters.clear()
        for waiter in waiters:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(HttpError("closed", "pool closed"))
            else:
                waiter(HttpError("closed", "pool closed"))

"""The built-in `http` workload: one templated HTTP/1.1 request against a base URL, keep-alive.

`path`, header values and `body` may contain `{seq}` (the request number), replaced literally;
without it the request is encoded once. A response with status >= 400 is an error of kind
`status_<code>`; transport failures are `connect`, `closed`, `timeout`, `protocol`. Only `http://`
targets are supported (TLS is not implemented in the fast client).

Open loop uses `start_request` (a CallbackWorkload): the request is written from the engine's timer
callback on an idle connection, or queued in the pool until one is free (then written from the
callback that completed the previous response on it); either way the write time is reported as
the send, so schedule lag includes the wait for a connection. Closed loop uses `request`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter_ns
from typing import cast
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from aifb.client.engine.workload import Outcome, RequestSink
from aifb.client.workloads.http_client import (
    HttpConnection,
    HttpError,
    HttpPool,
    HttpResponse,
    build_request,
)
from aifb.client.workloads.registry import WorkloadKind, register
from aifb.mesh.errors import InvalidArgument

__all__ = ["HttpParams", "HttpTarget", "HttpWorkload"]

_WARM = 16  # connections warm() opens ahead for an open loop, at most `connections`

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class HttpTarget:
    base_url: str
    method: str = "GET"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    connections: int = 64  # most keep-alive connections open at once
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidArgument("base_url must be http://host[:port][/prefix]",
                                  field="target.base_url")
        if self.method.upper() not in _METHODS:
            raise InvalidArgument(f"method must be one of {', '.join(_METHODS)}",
                                  field="target.method")
        if not self.path.startswith("/"):
            raise InvalidArgument("path must start with /", field="target.path")
        if not 1 <= self.connections <= 65_000:
            raise InvalidArgument("connections must be in 1..65000", field="target.connections")
        if not 0 < self.timeout_s <= 3600:
            raise InvalidArgument("timeout_s must be in (0, 3600]", field="target.timeout_s")
        for key, value in self.headers.items():
            if any(ch in key + value for ch in "\r\n") or not key or ":" in key:
                raise InvalidArgument(f"bad header {key!r}", field=f"target.headers.{key}")


class HttpWorkload:
    """The `http` workload (implements aifb.client.engine.workload.Workload)."""

    name = "http"

    def __init__(self, target: HttpTarget) -> None:
        self.target = target
        parts = urlsplit(target.base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._host_header = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._method = target.method.upper()
        self._templated = "{seq}" in target.path + target.body + "".join(target.headers.values())
        self._raw = b"" if self._templated else self._encode(0)
        self._head = self._method == "HEAD"
        self._pool: HttpPool | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.timeouts = 0
        self.bytes_in = 0
        self.waits = 0  # callback path: requests that queued for a connection (none dropped)

    def _encode(self, seq: int) -> bytes:
        t, s = self.target, str(seq)
        return build_request(self._method, self._prefix + t.path.replace("{seq}", s),
                             self._host_header,
                             {k: v.replace("{seq}", s) for k, v in t.headers.items()},
                             t.body.replace("{seq}", s).encode())

    async def prepare(self) -> None:
        self._pool = HttpPool(self._host, self._port, limit=self.target.connections)
        conn = await self._pool.acquire()  # fail fast when nothing listens
        self._pool.release(conn)
        self._sweeper = asyncio.create_task(self._sweep_timeouts())

    async def warm(self) -> None:
        """Open up to 16 connections ahead (open loop only: a closed loop keeps one per user).
        Beyond these, connections open on demand, and a request that waits for one counts
        the wait in its schedule lag."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("prepare() the workload first")
        opened = await asyncio.gather(
            *(pool.acquire() for _ in range(min(self.target.connections, _WARM))),
            return_exceptions=True)
        for conn in opened:
            if isinstance(conn, HttpConnection):
                pool.release(conn)
        failed = [c for c in opened if isinstance(c, BaseException)]
        if failed:
            raise failed[0]

    async def _sweep_timeouts(self) -> None:
        limit_ns = int(self.target.timeout_s * 1e9)
        period = min(self.target.timeout_s / 4, 0.25)
        while True:
            await asyncio.sleep(period)
            if self._pool is None:
                return
            now = perf_counter_ns()
            for conn in self._pool.busy:
                if conn.sent_ns and now - conn.sent_ns > limit_ns and not conn.closed:
                    self.timeouts += 1
                    conn.timeout()

    async def request(self, seq: int) -> Outcome:
        pool = self._pool
        if pool is None:
            raise RuntimeError("prepare() the workload first")
        raw = self._encode(seq) if self._templated else self._raw
        try:
            conn = pool.try_acquire() or await pool.acquire()
        except HttpError as exc:
            return Outcome(ok=False, error=exc.kind)
        try:
            resp = await conn.send(raw, head=self._method == "HEAD")
        except HttpError as exc:
            return Outcome(ok=False, error=exc.kind)
        finally:
            sent_ns = conn.sent_ns
            pool.release(conn)
        self.bytes_in += resp.body_len
        status = resp.status
        if status >= 400:
            return Outcome(False, f"status_{status}", status, resp.end_ns, sent_ns)
        return Outcome(True, "", status, resp.end_ns, sent_ns)

    # -- the callback path (CallbackWorkload)
    def start_request(self, seq: int, intended_ns: int, sink: RequestSink) -> None:
        pool = self._pool
        if pool is None:
            raise RuntimeError("prepare() the workload first")
        raw = self._encode(seq) if self._templated else self._raw
        conn = pool.try_acquire()
        if conn is not None:
            self._write(conn, raw, intended_ns, sink)
        else:
            self.waits += 1
            pool.acquire_cb(partial(self._got_connection, raw, intended_ns, sink))

    def _got_connection(self, raw: bytes, intended_ns: int, sink: RequestSink,
                        conn: HttpConnection | HttpError) -> None:
        if isinstance(conn, HttpError):
            now = perf_counter_ns()
            sink.sent(intended_ns, now)
            sink.done(intended_ns, Outcome(False, conn.kind, end_ns=now))
        else:
            self._write(conn, raw, intended_ns, sink)

    def _write(self, conn: HttpConnection, raw: bytes, intended_ns: int,
               sink: RequestSink) -> None:
        conn.context = (intended_ns, sink)
        try:
            sent_ns = conn.send_cb(raw, self._on_response, head=self._head)
        except HttpError as exc:  # it closed while idle
            conn.context = None
            if self._pool is not None:
                self._pool.release(conn)
            now = perf_counter_ns()
            sink.sent(intended_ns, now)
            sink.done(intended_ns, Outcome(False, exc.kind, end_ns=now))
            return
        sink.sent(intended_ns, sent_ns)

    def _on_response(self, conn: HttpConnection, resp: HttpResponse | HttpError) -> None:
        intended_ns, sink = cast(tuple[int, RequestSink], conn.context)
        conn.context = None
        sent_ns = conn.sent_ns
        if self._pool is not None:
            self._pool.release(conn)  # a queued request goes on the wire from here, at once
        if isinstance(resp, HttpError):
            out = Outcome(False, resp.kind, end_ns=perf_counter_ns(), sent_ns=sent_ns)
        else:
            self.bytes_in += resp.body_len
            status = resp.status
            out = (Outcome(False, f"status_{status}", status, resp.end_ns, sent_ns)
                   if status >= 400 else Outcome(True, "", status, resp.end_ns, sent_ns))
        sink.done(intended_ns, out)

    def extra_metrics(self) -> dict[str, float]:
        pool = self._pool
        return {"connections_opened": float(pool.opened if pool else 0),
                "response_body_bytes": float(self.bytes_in), "timeouts": float(self.timeouts),
                "connection_waits": float(self.waits)}

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._pool is not None:
            self._pool.close()
            await asyncio.sleep(0)  # let the transports run their close callbacks


class HttpParams(BaseModel):
    """Parameters of the `http` workload (see HttpTarget)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("GET", description="HTTP method.")
    path: str = Field("/", description="Path after the target URL; may contain {seq}.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    body: str = Field("", description="Request body; may contain {seq}.")
    connections: int = Field(64, ge=1, le=65_000, description="Most keep-alive connections.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Per-request timeout, seconds.")


def _build(target_url: str, params: HttpParams) -> HttpWorkload:
    return HttpWorkload(HttpTarget(target_url.rstrip("/"), method=params.method,
                                   path=params.path, headers=dict(params.headers),
                                   body=params.body, connections=params.connections,
                                   timeout_s=params.timeout_s))


register(WorkloadKind("http", "One templated HTTP/1.1 request per send, keep-alive connections.",
                      HttpParams, _build))

"""JSON requests over the fast HTTP client's keep-alive pool, for the vector-database backends.

Why not httpx: the query phase is a latency benchmark, and the fast client stamps the response's
end in `data_received` (see `aifb.client.workloads.http_client`), so a busy event loop does not
inflate the figures; it is also the engine's own client, so one pool serves setup and load alike.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aifb.client.workloads.http_client import HttpError, HttpPool, HttpResponse, build_request
from aifb.client.workloads.vectordb.base import VectorDbError

__all__ = ["JsonHttp", "JsonReply"]


@dataclass(frozen=True, slots=True)
class JsonReply:
    status: int
    body: Any  # parsed JSON, None when the body was empty
    sent_ns: int  # when the request went on the wire
    end_ns: int  # when its last byte arrived (stamped in data_received)


class JsonHttp:
    def __init__(self, host: str, port: int, host_header: str, *, connections: int,
                 timeout_s: float, headers: dict[str, str] | None = None) -> None:
        self.pool = HttpPool(host, port, limit=connections)
        self._host_header = host_header
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    async def call(self, method: str, path: str, doc: Any = None) -> JsonReply:
        """Send one request and parse its JSON answer (any status: the caller judges it)."""
        body = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode()
        raw = build_request(method, path, self._host_header, self._headers, body)
        resp, sent_ns = await self._send(raw)
        data = resp.body or b""
        if not data:
            return JsonReply(resp.status, None, sent_ns, resp.end_ns)
        try:
            return JsonReply(resp.status, json.loads(data), sent_ns, resp.end_ns)
        except ValueError:
            raise VectorDbError("bad_response", f"{method} {path}: {resp.status} answered "
                                f"with non-JSON {data[:200]!r}") from None

    async def _send(self, raw: bytes) -> tuple[HttpResponse, int]:
        pool = self.pool
        try:
            conn = pool.try_acquire() or await pool.acquire()
        except HttpError as exc:
            raise VectorDbError(exc.kind, str(exc)) from exc
        timer = asyncio.get_running_loop().call_later(self._timeout_s, conn.timeout)
        try:
            return await conn.send(raw, keep_body=True), conn.sent_ns
        except HttpError as exc:
            raise VectorDbError(exc.kind, str(exc)) from exc
        finally:
            timer.cancel()
            pool.release(conn)

    @property
    def opened(self) -> int:
        """Connections opened so far (the workload's `connections_opened`)."""
        return self.pool.opened

    def close(self) -> None:
        self.pool.close()

    async def aclose(self) -> None:
        """Close, then yield once so the transports' close callbacks run."""
        self.pool.close()
        await asyncio.sleep(0)

"""PostgreSQL connections for the `pgvector` backend: a bounded pool of psycopg async connections.

Why psycopg (3, async): it is the maintained PostgreSQL driver with a native asyncio API, so a
query phase of N users keeps N queries in flight on one event loop (uvloop included) without a
thread per connection; `psycopg[binary]` brings its own libpq. It is imported on first use, so
the workload loads without it and only a pgvector run needs it.

Each connection is in autocommit mode (a SELECT leaves no transaction open) and gets its session
settings once, when it is opened (`SET name = value`: the HNSW search beam, the planner switches
the backend chooses, `statement_timeout`). A server still starting up (SQLSTATE 57P03: the port
is open before it accepts sessions) is retried for a few seconds. A password, when the server
wants one, comes from libpq's own `PGPASSWORD` or `~/.pgpass`, never from a parameter.

Errors become `VectorDbError`: `timeout` (statement_timeout, 57014, or the connect timeout),
`connect` (no session could be opened), `closed` (the connection broke mid-query; it is dropped
from the pool), `sql_<SQLSTATE>` for the server's errors (with its message), `protocol` else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aifb.client.workloads.vectordb.base import VectorDbError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["PgPool", "pg_error"]

_STARTING_UP = "57P03"
_STARTUP_WAIT_S = 10.0


def pg_error(exc: Exception, what: str) -> VectorDbError:
    """A psycopg error as a VectorDbError whose kind is stable and whose message is the server's."""
    import psycopg

    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.ConnectionTimeout):
        kind = "timeout"
    elif isinstance(exc, psycopg.Error) and exc.sqlstate:
        kind = f"sql_{exc.sqlstate}"
    elif isinstance(exc, psycopg.OperationalError):
        kind = "closed"
    else:
        kind = "protocol"
    text = str(exc).strip().replace("\n", " ")
    return VectorDbError(kind, f"pgvector {what}: {text[:300]}")


class PgPool:
    """At most `limit` connections, opened on demand and reused; `opened` counts every one."""

    def __init__(self, host: str, port: int, *, user: str, dbname: str, limit: int,
                 timeout_s: float, settings: Mapping[str, str] | None = None) -> None:
        self._params: dict[str, Any] = {
            "host": host, "port": port, "user": user, "dbname": dbname,
            "connect_timeout": max(2, round(timeout_s)), "application_name": "aifb-vectordb"}
        self._settings = {"statement_timeout": f"{round(timeout_s * 1000)}ms",
                          **(settings or {})}
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[AsyncConnection[Any]] = []
        self._closed = False
        self.opened = 0

    async def _open(self) -> AsyncConnection[Any]:
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:
            raise VectorDbError("invalid", "the pgvector backend needs psycopg: pip install "
                                "'aifb[vectordb]'") from exc
        deadline = time.monotonic() + _STARTUP_WAIT_S
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(autocommit=True, **self._params)
                break
            except psycopg.Error as exc:
                if exc.sqlstate == _STARTING_UP and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    continue
                err = pg_error(exc, "connect")
                if err.kind.startswith("sql_") or err.kind == "timeout":
                    raise err from exc
                raise VectorDbError("connect", str(err)) from exc
        self.opened += 1
        try:
            for name, value in self._settings.items():
                await conn.execute(sql.SQL("SET {} = {}").format(
                    sql.Identifier(*name.split(".")), sql.Literal(value)))
        except psycopg.Error as exc:
            await conn.close()
            raise pg_error(exc, "session settings") from exc
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection for one exchange; a broken one is closed instead of returned."""
        if self._closed:
            raise VectorDbError("closed", "pgvector: the connection pool is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._open()
            try:
                yield conn
            finally:
                if conn.closed or self._closed:
                    await conn.close()
                else:
                    self._idle.append(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

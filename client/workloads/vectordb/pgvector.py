"""PostgreSQL with pgvector as a vector store: one table per collection, an HNSW index on it.

The collection is a table `(id bigint PRIMARY KEY, embedding vector(dim))` in the connection's
current schema, named by the collection (quoted, so `.` and `-` are fine; at most 63 bytes,
PostgreSQL's identifier limit, checked by the workload). `reset` drops and creates it with its
HNSW index (`vector_l2_ops`, `vector_cosine_ops` or `vector_ip_ops`, `WITH (m, ef_construction)`
when set) before any insert, so the insert phase pays for the index as it does on Chroma and
Qdrant; `insert` is one `INSERT ... SELECT FROM unnest(ids, vectors) ON CONFLICT (id) DO UPDATE`
per batch (an upsert, as theirs are), durable when it returns (autocommit); `search` is
`ORDER BY embedding <op> query LIMIT k` (`<->` l2, `<=>` cosine distance, `<#>` negative inner
product), prepared on the server.

Which plan answers a query is the planner's choice unless told: on a small table it may scan
the whole table and sort, which is exact and would hide the index's recall. So each session
sets `enable_seqscan = off` (the index answers) or, with `exact`, `enable_indexscan = off` (a
full scan: exact neighbours). `hnsw.ef_search` is the search beam (pgvector's default 40); an
HNSW scan returns at most ef_search rows, so a beam below k returns fewer than k.

The `vector` extension must exist in the database: the `pgvector` recipe creates it; elsewhere
`reset` creates it if the role may, or says how to.

Vectors travel as pgvector's text form `[x,y,...]` of each value's shortest float repr, which
pgvector parses back to the same float32 values the exact neighbours were computed from.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from aifb.client.workloads.vectordb.base import Hits, IndexSettings, VectorDbError
from aifb.client.workloads.vectordb.pgpool import PgPool, pg_error

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["MAX_INDEX_DIM", "PgVectorStore", "session_settings"]

MAX_INDEX_DIM = 2000  # pgvector's limit for an HNSW index on `vector`
_OPS = {"l2": ("vector_l2_ops", "<->"), "cosine": ("vector_cosine_ops", "<=>"),
        "ip": ("vector_ip_ops", "<#>")}


def session_settings(index: IndexSettings) -> dict[str, str]:
    """What each session sets for this index: the beam and which plan answers a query."""
    out = {"enable_indexscan": "off"} if index.exact else {"enable_seqscan": "off"}
    if index.ef_search:
        out["hnsw.ef_search"] = str(index.ef_search)
    return out


def _text(vector: list[float]) -> str:
    return "[" + ",".join(map(repr, vector)) + "]"


class PgVectorStore:
    name = "pgvector"

    def __init__(self, pool: PgPool, collection: str, index: IndexSettings) -> None:
        from psycopg import sql

        self._pool = pool
        self._index = index
        self._sql = sql
        self._table = sql.Identifier(collection)
        opclass, self._op = _OPS[index.metric]
        self._opclass = sql.SQL(opclass)
        self._search: sql.Composed = sql.SQL(
            "SELECT id FROM {} ORDER BY embedding " + self._op + " %s::vector LIMIT %s"
        ).format(self._table)
        self._insert: sql.Composed = sql.SQL(
            "INSERT INTO {} (id, embedding) SELECT * FROM unnest(%s::bigint[], %s::vector[]) "
            "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding").format(self._table)

    async def _run(self, what: str, query: sql.SQL | sql.Composed, params: Any = None, *,
                   prepare: bool | None = None) -> list[tuple[Any, ...]]:
        import psycopg

        async with self._pool.connection() as conn:
            try:
                cur = await conn.execute(query, params, prepare=prepare)
                return await cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                raise pg_error(exc, what) from exc

    async def _ensure_extension(self) -> None:
        rows = await self._run("extension check", self._sql.SQL(
            "SELECT 1 FROM pg_extension WHERE extname = 'vector'"))
        if rows:
            return
        try:
            await self._run("create extension", self._sql.SQL("CREATE EXTENSION vector"))
        except VectorDbError as exc:
            raise VectorDbError(exc.kind, f"{exc} (the vector extension is not in this "
                                "database: a superuser must run CREATE EXTENSION vector)") from exc

    async def reset(self) -> None:
        sql, index = self._sql, self._index
        await self._ensure_extension()
        await self._run("drop table", sql.SQL("DROP TABLE IF EXISTS {}").format(self._table))
        await self._run("create table", sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, embedding vector({}))").format(
                self._table, sql.Literal(index.dim)))
        knobs = [sql.SQL("{} = {}").format(sql.SQL(name), sql.Literal(value))
                 for name, value in (("m", index.m), ("ef_construction", index.ef_construction))
                 if value]
        with_ = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(knobs)) if knobs else sql.SQL("")
        await self._run("create index", sql.SQL(
            "CREATE INDEX ON {} USING hnsw (embedding {}){}").format(
                self._table, self._opclass, with_))

    async def attach(self) -> None:
        await self._run("attach", self._sql.SQL("SELECT 1 FROM {} LIMIT 0").format(self._table))

    async def insert(self, ids: list[int], vectors: list[list[float]]) -> None:
        await self._run("insert", self._insert, (ids, [_text(v) for v in vectors]))

    async def count(self) -> int:
        rows = await self._run("count", self._sql.SQL("SELECT count(*) FROM {}").format(
            self._table))
        if len(rows) != 1 or not isinstance(rows[0][0], int):
            raise VectorDbError("bad_response", f"pgvector count: {rows!r}"[:200])
        return int(rows[0][0])

    async def search(self, vector: list[float], k: int) -> Hits:
        import psycopg

        text = _text(vector)
        async with self._pool.connection() as conn:
            try:
                sent = perf_counter_ns()
                cur = await conn.execute(self._search, (text, k), prepare=True)
                rows = await cur.fetchall()
                end = perf_counter_ns()
            except psycopg.Error as exc:
                raise pg_error(exc, "search") from exc
        return Hits([int(r[0]) for r in rows], sent, end)

    async def drop(self) -> None:
        await self._run("drop table", self._sql.SQL("DROP TABLE IF EXISTS {}").format(
            self._table))

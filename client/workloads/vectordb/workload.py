"""The `vectordb` workload: insert throughput, then query QPS, latency, recall@k (Qdrant, Chroma,
pgvector).

Two phases. `prepare()` is the insert phase: it draws (or loads) the vectors, computes every
query's exact k nearest with numpy, recreates the collection and upserts the vectors in batches
of `batch_size`, `insert_concurrency` batches in flight, then checks the server's count. Its
figures go to `extra_metrics()`: `insert_vectors`, `insert_s`, `insert_vectors_per_s`,
`insert_batches`. The engine's load is the query phase: request `seq` searches query
`seq % query_count` for its `k` nearest; latency and QPS are the engine's, and each request's
`values` carry `recall_hits` (true neighbours found) and `recall_checked` (k), so recall@k =
recall_hits / recall_checked over the measured window, a ratio that merges exactly across
workers. `extra_metrics()` also gives `recall_at_k` over every query answered.

The collection is dropped at `close()` unless `keep_collection` is set. Backends live in
`aifb.client.workloads.vectordb`.

On Spark the insert phase runs once, on the driver (`aifb.client.scaleout.shared.SharedSetup`):
`setup_shared()` is the insert phase above and returns `SharedVectors` (the queries, their
exact neighbours, the count inserted); each partition's workload `adopt_shared()`s them, so its
`prepare()` only attaches to the collection and checks its count, its recall is measured
against the very vectors the driver inserted, and its `close()` leaves the collection to the
driver's `teardown_shared()`. The insert figures are reported once (`shared_metrics()`), and
`merge_extra` combines the partitions' figures (recall@k weighted by queries, k not summed).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from time import perf_counter
from typing import Literal, Protocol
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aifb.client.engine.workload import Outcome
from aifb.client.workloads.registry import WorkloadKind, register
from aifb.client.workloads.vectordb.base import IndexSettings, Metric, VectorDbError, VectorStore
from aifb.client.workloads.vectordb.chroma import ChromaStore
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp
from aifb.client.workloads.vectordb.pgpool import PgPool
from aifb.client.workloads.vectordb.pgvector import MAX_INDEX_DIM, PgVectorStore, session_settings
from aifb.client.workloads.vectordb.qdrant import QdrantStore
from aifb.client.workloads.vectordb.vectors import (
    VectorSet,
    exact_neighbours,
    load_vectors,
    random_vectors,
    recall_hits,
)
from aifb.mesh.errors import InvalidArgument

__all__ = ["SharedVectors", "VectorDbParams", "VectorDbWorkload"]

# Chroma's rule (3-512 of [A-Za-z0-9._-], alphanumeric at both ends); Qdrant accepts these too.
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
_PG_SCHEMES = ("postgresql", "postgres")
# pgvector's bounds (0 = its default): a value outside them would fail at the server
_PG_RANGES = {"m": (2, 100), "ef_construction": (4, 1000), "hnsw_ef": (1, 1000)}


class VectorDbParams(BaseModel):
    """Parameters of the `vectordb` workload."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["qdrant", "chroma", "pgvector"] = Field(
        "qdrant", description="Which engine's API to speak (pgvector: PostgreSQL's protocol).")
    collection: str = Field("aifb-bench", description="Collection to (re)create and query.")
    dim: int = Field(128, ge=1, le=65_536, description="Vector dimension (random vectors).")
    count: int = Field(10_000, ge=0, le=10_000_000, description="Vectors to insert (from a "
                       "dataset: at most this many; 0 = all).")
    batch_size: int = Field(256, ge=1, le=100_000, description="Vectors per upsert request.")
    insert_concurrency: int = Field(1, ge=1, le=64, description="Upserts in flight at once.")
    k: int = Field(10, ge=1, le=10_000, description="Neighbours per query (recall@k).")
    metric: Metric = Field("cosine", description="cosine, l2 or ip (inner product).")
    query_count: int = Field(100, ge=1, le=1_000_000, description="Distinct query vectors; "
                             "requests cycle through them.")
    dataset: str = Field("", description=".npy or .jsonl vectors; empty = seeded random.")
    seed: int = Field(0, ge=0, description="Seed of the random vectors.")
    hnsw_ef: int = Field(0, ge=0, le=1_000_000, description="Search beam (Qdrant hnsw_ef, "
                         "Chroma ef_search, pgvector hnsw.ef_search); 0 = server default.")
    ef_construction: int = Field(0, ge=0, le=1_000_000, description="Build beam; 0 = default.")
    m: int = Field(0, ge=0, le=1024, description="HNSW links per node (Qdrant and pgvector m, "
                   "Chroma max_neighbors); 0 = default.")
    exact: bool = Field(False, description="Full-scan search (Qdrant, pgvector; Chroma has "
                        "none).")
    keep_collection: bool = Field(False, description="Leave the collection after the run.")
    tenant: str = Field("default_tenant", description="Chroma tenant.")
    database: str = Field("default_database", description="Chroma database.")
    pg_user: str = Field("aifb", description="pgvector: PostgreSQL role to log in as.")
    pg_database: str = Field("aifb", description="pgvector: PostgreSQL database.")
    connections: int = Field(64, ge=1, le=65_000, description="Most keep-alive connections.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout, seconds.")


class _Transport(Protocol):
    """The backend's connections: HTTP keep-alive (Qdrant, Chroma) or PostgreSQL sessions."""

    @property
    def opened(self) -> int: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SharedVectors:
    """What the driver's insert phase hands every Spark partition (pickled, broadcast)."""

    collection: str
    count: int  # vectors inserted (ids 0..count-1)
    dim: int
    queries: np.typing.NDArray[np.float32]  # (query_count, dim)
    truth: np.typing.NDArray[np.int64]  # each query's exact neighbours, nearest first


class VectorDbWorkload:
    """Implements aifb.client.engine.workload.Workload and
    aifb.client.scaleout.shared.SharedSetup."""

    name = "vectordb"

    def __init__(self, base_url: str, params: VectorDbParams) -> None:
        parts = urlsplit(base_url)
        pg = params.backend == "pgvector"
        schemes = ("http", *_PG_SCHEMES) if pg else ("http",)
        if parts.scheme not in schemes or not parts.hostname:
            raise InvalidArgument("target must be postgresql://host[:port] or http://host[:port] "
                                  "(a deployed pgvector service)" if pg else
                                  "target must be http://host[:port][/prefix]",
                                  field="target.base_url")
        if pg and (parts.path.strip("/") or parts.username or parts.query):
            raise InvalidArgument("a pgvector target is host and port only: the role and the "
                                  "database are the pg_user and pg_database parameters",
                                  field="target.base_url")
        if not _COLLECTION.fullmatch(params.collection):
            raise InvalidArgument("collection must be 3-512 of A-Z a-z 0-9 . _ -, starting and "
                                  "ending with a letter or digit", field="params.collection")
        for key in ("tenant", "database"):
            if not _NAME.fullmatch(getattr(params, key)):
                raise InvalidArgument(f"{key} must be 1-128 of A-Z a-z 0-9 _ -",
                                      field=f"params.{key}")
        if params.backend == "chroma" and params.exact:
            raise InvalidArgument("chroma has no exact search; raise hnsw_ef instead",
                                  field="params.exact")
        if pg:
            _check_pgvector(params)
        self.params = params
        default_port = 5432 if parts.scheme in _PG_SCHEMES else 80
        self._address = (parts.hostname, parts.port or default_port, parts.netloc)
        self._prefix = parts.path.rstrip("/")
        self._conn = self._new_transport()
        self._shared: SharedVectors | None = None  # set: a Spark partition after the driver
        self._store: VectorStore | None = None
        self._data: VectorSet | None = None
        self._truth: np.typing.NDArray[np.int64] | None = None
        self._queries: list[list[float]] = []
        self._insert: dict[str, float] = {}
        self.hits = 0
        self.checked = 0

    def _index(self, dim: int) -> IndexSettings:
        p = self.params
        return IndexSettings(dim, p.metric, p.m, p.ef_construction, p.hnsw_ef, p.exact)

    def _new_transport(self) -> _Transport:
        host, port, netloc = self._address
        p = self.params
        if p.backend == "pgvector":
            return PgPool(host, port, user=p.pg_user, dbname=p.pg_database, limit=p.connections,
                          timeout_s=p.timeout_s, settings=session_settings(self._index(p.dim)))
        return JsonHttp(host, port, netloc, connections=p.connections, timeout_s=p.timeout_s)

    def _make_store(self, dim: int) -> VectorStore:
        p, conn = self.params, self._conn
        index = self._index(dim)
        if isinstance(conn, PgPool):
            return PgVectorStore(conn, p.collection, index)
        assert isinstance(conn, JsonHttp)
        if p.backend == "qdrant":
            return QdrantStore(conn, self._prefix, p.collection, index)
        return ChromaStore(conn, self._prefix, p.collection, index, tenant=p.tenant,
                           database=p.database)

    async def prepare(self) -> None:
        try:
            await self._prepare()
        except BaseException:
            await self._conn.aclose()  # the engine does not call close() after a failed prepare
            raise

    async def _prepare(self) -> None:
        if self._shared is not None:
            await self._attach(self._shared)
            return
        p = self.params
        data = (load_vectors(p.dataset, p.count, p.query_count) if p.dataset else
                random_vectors(p.count or 10_000, p.query_count, p.dim, p.seed))
        self._data = data
        self._truth = exact_neighbours(data.base, data.queries, p.k, p.metric)
        self._queries = data.queries.tolist()
        store = self._store = self._make_store(data.base.shape[1])
        try:
            await store.reset()
            await self._insert_all(store, data)
            stored = await store.count()
        except VectorDbError as exc:
            raise RuntimeError(f"{p.backend} insert phase: {exc}") from exc
        if stored != len(data.base):
            raise RuntimeError(f"{p.backend} holds {stored} vectors after inserting "
                               f"{len(data.base)}")

    async def _attach(self, shared: SharedVectors) -> None:
        """A Spark partition: query the collection the driver filled, against its truth."""
        self._truth = shared.truth
        self._queries = shared.queries.tolist()
        store = self._store = self._make_store(shared.dim)
        try:
            await store.attach()
            stored = await store.count()
        except VectorDbError as exc:
            raise RuntimeError(f"{self.params.backend} collection {shared.collection}: "
                               f"{exc}") from exc
        if stored != shared.count:
            raise RuntimeError(f"{self.params.backend} holds {stored} vectors, the driver "
                               f"inserted {shared.count}")

    async def _insert_all(self, store: VectorStore, data: VectorSet) -> None:
        size, total = self.params.batch_size, len(data.base)
        batches = [(list(range(lo, min(lo + size, total))), data.base[lo:lo + size].tolist())
                   for lo in range(0, total, size)]
        pending = iter(batches)

        async def worker() -> None:
            for ids, vectors in pending:  # one shared iterator: each batch is sent once
                await store.insert(ids, vectors)

        started = perf_counter()
        workers = [asyncio.create_task(worker())
                   for _ in range(min(self.params.insert_concurrency, len(batches)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        took = perf_counter() - started
        self._insert = {"insert_vectors": float(total), "insert_s": round(took, 6),
                        "insert_vectors_per_s": round(total / took, 3) if took > 0 else 0.0,
                        "insert_batches": float(len(batches))}

    async def request(self, seq: int) -> Outcome:
        store, truth = self._store, self._truth
        if store is None or truth is None:
            raise RuntimeError("prepare() the workload first")
        q = seq % len(self._queries)
        k = self.params.k
        try:
            found = await store.search(self._queries[q], k)
        except VectorDbError as exc:
            return Outcome(ok=False, error=exc.kind)
        hits = recall_hits(found.ids, truth[q], k)
        checked = min(k, len(truth[q]))
        self.hits += hits
        self.checked += checked
        return Outcome(True, "", 200, found.end_ns, found.sent_ns,
                       values={"recall_hits": float(hits), "recall_checked": float(checked)})

    def extra_metrics(self) -> dict[str, float]:
        out = dict(self._insert)
        out["k"] = float(self.params.k)
        out["recall_queries"] = float(self.checked // self.params.k if self.params.k else 0)
        if self.checked:
            out["recall_at_k"] = round(self.hits / self.checked, 6)
        out["connections_opened"] = float(self._conn.opened)
        return out

    async def close(self) -> None:
        try:
            if (self._store is not None and self._shared is None
                    and not self.params.keep_collection):
                await self._store.drop()
        except VectorDbError:
            pass  # the run's figures stand; a failed clean-up must not turn them into errors
        finally:
            await self._conn.aclose()

    # -- Spark: the insert phase once, on the driver (aifb.client.scaleout.shared.SharedSetup)

    async def setup_shared(self) -> SharedVectors:
        """The insert phase (driver); its connections are closed after, its figures kept."""
        await self.prepare()
        data, truth = self._data, self._truth
        assert data is not None and truth is not None
        await self._conn.aclose()
        self._data = None  # the base vectors are in the database now
        return SharedVectors(self.params.collection, len(data.base), int(data.base.shape[1]),
                             data.queries, truth)

    def adopt_shared(self, state: object) -> None:
        if not isinstance(state, SharedVectors):
            raise TypeError(f"vectordb cannot adopt {type(state).__name__}")
        if state.collection != self.params.collection:
            raise ValueError(f"the driver filled {state.collection}, not "
                             f"{self.params.collection}")
        self._shared = state

    async def teardown_shared(self) -> None:
        """Drop the collection (driver, after every partition ended) unless it is kept."""
        if self._store is None or self.params.keep_collection:
            return
        self._conn = conn = self._new_transport()
        try:
            await self._make_store(self.params.dim).drop()
        except VectorDbError as exc:
            raise RuntimeError(f"{self.params.backend} drop: {exc}") from exc
        finally:
            await conn.aclose()

    def shared_metrics(self) -> dict[str, float]:
        return dict(self._insert)

    def merge_extra(self, extras: list[dict[str, float]]) -> dict[str, float]:
        """Counts add; k is every partition's k; recall@k is weighted by queries answered."""
        out = {"k": float(self.params.k)}
        for key in ("recall_queries", "connections_opened"):
            out[key] = sum(e.get(key, 0.0) for e in extras)
        weighted = [(e["recall_at_k"], e.get("recall_queries", 0.0)) for e in extras
                    if "recall_at_k" in e]
        total = sum(n for _, n in weighted)
        if total:
            out["recall_at_k"] = round(sum(r * n for r, n in weighted) / total, 6)
        return out


def _check_pgvector(p: VectorDbParams) -> None:
    """pgvector's own limits, named by field before anything is sent."""
    if len(p.collection.encode()) > 63:
        raise InvalidArgument("a pgvector collection is a table: at most 63 bytes (PostgreSQL's "
                              "identifier limit)", field="params.collection")
    for key in ("pg_user", "pg_database"):
        if not _PG_NAME.fullmatch(getattr(p, key)):
            raise InvalidArgument(f"{key} must be 1-63 of A-Z a-z 0-9 _ -, not starting with a "
                                  "digit or -", field=f"params.{key}")
    for key, (lo, hi) in _PG_RANGES.items():
        value = getattr(p, key)
        if value and not lo <= value <= hi:
            raise InvalidArgument(f"pgvector takes {key} in {lo}..{hi} (0 = its default)",
                                  field=f"params.{key}")
    if p.m and p.ef_construction and p.ef_construction < 2 * p.m:
        raise InvalidArgument("pgvector needs ef_construction >= 2 * m",
                              field="params.ef_construction")
    if not p.dataset and p.dim > MAX_INDEX_DIM:
        raise InvalidArgument(f"pgvector's HNSW index takes at most {MAX_INDEX_DIM} dimensions",
                              field="params.dim")


def _build(target_url: str, params: VectorDbParams) -> VectorDbWorkload:
    return VectorDbWorkload(target_url.rstrip("/"), params)


register(WorkloadKind("vectordb", "Qdrant, Chroma or pgvector: insert throughput, then query QPS, "
                      "latency and recall@k against exact neighbours.", VectorDbParams, _build))

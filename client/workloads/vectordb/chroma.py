"""Chroma through its v2 HTTP API (chromadb >= 1.0, the `chroma run` server).

Calls used, under `/api/v2/tenants/{tenant}/databases/{database}`: `DELETE /collections/{name}`,
`GET /collections/{name}` (attach: the answer carries the existing collection's `id`),
`POST /collections` with `{"name", "configuration": {"hnsw": {space, ef_construction, ef_search,
max_neighbors}}}` (the answer carries the collection's `id`), `POST /collections/{id}/upsert`
with `{"ids": [str], "embeddings": [[float]]}`, `POST /collections/{id}/query` with
`{"query_embeddings": [v], "n_results": k, "include": []}`, `GET /collections/{id}/count`.
Ids are the decimal strings of the workload's integer ids. Errors answer `{"error", "message"}`.
Chroma has no exact (full-scan) search: set `ef_search` to at least the collection's size on a
small set to make HNSW exhaustive.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aifb.client.workloads.vectordb.base import Hits, IndexSettings, VectorDbError
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp, JsonReply

__all__ = ["ChromaStore"]


class ChromaStore:
    name = "chroma"

    def __init__(self, http: JsonHttp, prefix: str, collection: str, index: IndexSettings, *,
                 tenant: str = "default_tenant", database: str = "default_database") -> None:
        if index.exact:
            raise VectorDbError("invalid", "chroma has no exact search; raise hnsw_ef instead")
        self._http = http
        self._db = (f"{prefix}/api/v2/tenants/{quote(tenant, safe='')}"
                    f"/databases/{quote(database, safe='')}")
        self._collection = collection
        self._index = index
        self._id = ""

    async def _reply(self, method: str, path: str, doc: Any = None,
                     ok: tuple[int, ...] = (200,)) -> JsonReply:
        reply = await self._http.call(method, self._db + path, doc)
        if reply.status not in ok:
            body = reply.body
            text = body.get("message", body) if isinstance(body, dict) else body
            raise VectorDbError(f"status_{reply.status}", f"chroma {method} {path}: "
                                f"{reply.status} {str(text)[:300]}")
        return reply

    async def _call(self, method: str, path: str, doc: Any = None,
                    ok: tuple[int, ...] = (200,)) -> Any:
        return (await self._reply(method, path, doc, ok)).body

    def _coll(self, suffix: str) -> str:
        if not self._id:
            raise VectorDbError("invalid", "the chroma collection was not created (reset first)")
        return f"/collections/{self._id}/{suffix}"

    async def reset(self) -> None:
        await self._call("DELETE", f"/collections/{quote(self._collection, safe='')}",
                         ok=(200, 404))
        hnsw: dict[str, Any] = {"space": self._index.metric}
        for key, value in (("ef_construction", self._index.ef_construction),
                           ("ef_search", self._index.ef_search),
                           ("max_neighbors", self._index.m)):
            if value:
                hnsw[key] = value
        body = await self._call("POST", "/collections", {"name": self._collection,
                                                         "configuration": {"hnsw": hnsw}})
        self._id = _collection_id(body, "create collection")

    async def attach(self) -> None:
        body = await self._call("GET", f"/collections/{quote(self._collection, safe='')}")
        self._id = _collection_id(body, "get collection")

    async def insert(self, ids: list[int], vectors: list[list[float]]) -> None:
        await self._call("POST", self._coll("upsert"), {"ids": [str(i) for i in ids],
                                                        "embeddings": vectors})

    async def count(self) -> int:
        body = await self._call("GET", self._coll("count"))
        if not isinstance(body, int):
            raise VectorDbError("bad_response", f"chroma count: {body!r}")
        return body

    async def search(self, vector: list[float], k: int) -> Hits:
        reply = await self._reply("POST", self._coll("query"), {
            "query_embeddings": [vector], "n_results": k, "include": []})
        try:
            ids = [int(i) for i in reply.body["ids"][0]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise VectorDbError("bad_response", f"chroma query: {str(reply.body)[:200]}") from None
        return Hits(ids, reply.sent_ns, reply.end_ns)

    async def drop(self) -> None:
        await self._call("DELETE", f"/collections/{quote(self._collection, safe='')}",
                         ok=(200, 404))
        self._id = ""


def _collection_id(body: Any, what: str) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise VectorDbError("bad_response", f"chroma {what}: {str(body)[:200]}")
    return str(body["id"])

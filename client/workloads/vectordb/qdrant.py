"""Qdrant through its REST API: collections, points upsert (wait=true), the Query API, counts.

Calls used (Qdrant 1.10+): `DELETE/PUT/GET /collections/{name}` (GET: attach to an existing
one), `PUT /collections/{name}/points
?wait=true` with `{"points": [{"id", "vector"}]}`, `POST .../points/query` with `{"query": vector,
"limit": k, "params": {"hnsw_ef", "exact"}}`, `POST .../points/count` with `{"exact": true}`.
Qdrant answers errors as `{"status": {"error": "..."}}`; that text goes into the VectorDbError.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aifb.client.workloads.vectordb.base import Hits, IndexSettings, VectorDbError
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp, JsonReply

__all__ = ["QdrantStore"]

_DISTANCE = {"cosine": "Cosine", "l2": "Euclid", "ip": "Dot"}


class QdrantStore:
    name = "qdrant"

    def __init__(self, http: JsonHttp, prefix: str, collection: str,
                 index: IndexSettings) -> None:
        self._http = http
        self._base = f"{prefix}/collections/{quote(collection, safe='')}"
        self._index = index
        params: dict[str, Any] = {}
        if index.ef_search:
            params["hnsw_ef"] = index.ef_search
        if index.exact:
            params["exact"] = True
        self._search_params = params

    async def _reply(self, method: str, path: str, doc: Any = None,
                     ok: tuple[int, ...] = (200,)) -> JsonReply:
        reply = await self._http.call(method, self._base + path, doc)
        if reply.status not in ok:
            raise VectorDbError(f"status_{reply.status}", f"qdrant {method} {path or '/'}: "
                                f"{reply.status} {_error_text(reply.body)}")
        return reply

    async def _call(self, method: str, path: str, doc: Any = None,
                    ok: tuple[int, ...] = (200,)) -> Any:
        body = (await self._reply(method, path, doc, ok)).body
        return body.get("result") if isinstance(body, dict) else None

    async def reset(self) -> None:
        await self._call("DELETE", "", ok=(200, 404))
        create: dict[str, Any] = {"vectors": {"size": self._index.dim,
                                              "distance": _DISTANCE[self._index.metric]}}
        hnsw = {k: v for k, v in (("m", self._index.m),
                                  ("ef_construct", self._index.ef_construction)) if v}
        if hnsw:
            create["hnsw_config"] = hnsw
        await self._call("PUT", "", create)

    async def attach(self) -> None:
        await self._call("GET", "")  # the collection must exist (404 otherwise)

    async def insert(self, ids: list[int], vectors: list[list[float]]) -> None:
        points = [{"id": i, "vector": v} for i, v in zip(ids, vectors, strict=True)]
        result = await self._call("PUT", "/points?wait=true", {"points": points})
        if not isinstance(result, dict) or result.get("status") != "completed":
            raise VectorDbError("bad_response", f"qdrant upsert not completed: {result!r}")

    async def count(self) -> int:
        result = await self._call("POST", "/points/count", {"exact": True})
        if not isinstance(result, dict) or not isinstance(result.get("count"), int):
            raise VectorDbError("bad_response", f"qdrant count: {result!r}")
        return int(result["count"])

    async def search(self, vector: list[float], k: int) -> Hits:
        doc: dict[str, Any] = {"query": vector, "limit": k, "with_payload": False}
        if self._search_params:
            doc["params"] = self._search_params
        reply = await self._reply("POST", "/points/query", doc)
        try:
            ids = [int(p["id"]) for p in reply.body["result"]["points"]]
        except (KeyError, TypeError, ValueError):
            raise VectorDbError("bad_response", f"qdrant query: {str(reply.body)[:200]}") from None
        return Hits(ids, reply.sent_ns, reply.end_ns)

    async def drop(self) -> None:
        await self._call("DELETE", "", ok=(200, 404))


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("status"), dict):
        return str(body["status"].get("error", ""))
    return str(body)[:300]

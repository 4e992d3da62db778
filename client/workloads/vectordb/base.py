"""The seam between the `vectordb` workload and a vector database: what every backend does.

A backend is built with a collection name and index settings, then: `reset` (drop any collection
of that name and create it empty), `attach` (use the existing collection of that name, made by
another client: a Spark partition after the driver's insert phase), `insert` (one batch,
durable when it returns), `count`, `search` (ids of the k nearest) and `drop`. Failures raise
`VectorDbError` with a stable `kind` (`status_<code>`, `connect`, `timeout`, `closed`,
`protocol`, `bad_response`), which the workload turns into Outcome errors; its message keeps the
server's own words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["METRICS", "Hits", "IndexSettings", "Metric", "VectorDbError", "VectorStore"]

Metric = Literal["cosine", "l2", "ip"]
METRICS: tuple[Metric, ...] = ("cosine", "l2", "ip")


class VectorDbError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """HNSW knobs (0 = the server's default) and Qdrant's exact (full-scan) search."""

    dim: int
    metric: Metric
    m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Hits:
    """A search's answer: ids nearest first, and when the request was sent and answered."""

    ids: list[int]
    sent_ns: int
    end_ns: int


class VectorStore(Protocol):
    name: str

    async def reset(self) -> None: ...

    async def attach(self) -> None: ...

    async def insert(self, ids: list[int], vectors: list[list[float]]) -> None: ...

    async def count(self) -> int: ...

    async def search(self, vector: list[float], k: int) -> Hits: ...

    async def drop(self) -> None: ...

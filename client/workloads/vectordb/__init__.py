"""Vector-database clients for the `vectordb` workload: one `VectorStore` seam, three backends.

`qdrant.QdrantStore` speaks Qdrant's REST API, `chroma.ChromaStore` Chroma's v2 HTTP API; both run
over the fast HTTP client (`jsonhttp.JsonHttp`). `pgvector.PgVectorStore` keeps a collection as a
PostgreSQL table with an HNSW index, over psycopg's async connections (`pgpool.PgPool`).
`vectors` holds the data side: seeded or loaded vectors, the exact neighbours computed with numpy,
and recall@k.
"""

from __future__ import annotations

from aifb.client.workloads.vectordb.base import METRICS, VectorDbError, VectorStore

__all__ = ["METRICS", "VectorDbError", "VectorStore"]

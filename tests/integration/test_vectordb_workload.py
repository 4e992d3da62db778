"""vectordb against a real Chroma server and the strict Qdrant fake: inserts, queries, recall@k.

Chroma's index is HNSW; on a small set with `ef_search` >= the set's size the search visits every
node, so it is exact and recall@k must be 1.0 and its ids must equal numpy's brute force in order.
The Qdrant fake searches exactly, so there the workload's client path is what is under test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import RunState
from aifb.client.engine.spec import LoadSpec
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.vectordb.base import IndexSettings, Metric, VectorDbError
from aifb.client.workloads.vectordb.chroma import ChromaStore
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp
from aifb.client.workloads.vectordb.qdrant import QdrantStore
from aifb.client.workloads.vectordb.vectors import exact_neighbours, random_vectors
from aifb.client.workloads.vectordb.workload import VectorDbWorkload
from aifb.mesh.errors import InvalidArgument

if TYPE_CHECKING:
    from tests.fixtures.chroma import ChromaServer
    from tests.fixtures.qdrant_fake import QdrantFake

from tests.integration.bench_harness import run_vectordb as _run

pytestmark = pytest.mark.integration


def _http(url: str) -> JsonHttp:
    parts = urlsplit(url)
    return JsonHttp(parts.hostname or "", parts.port or 80, parts.netloc, connections=2,
                    timeout_s=30)


def test_chroma_inserts_in_batches_and_recall_at_k_is_one_for_an_exhaustive_index(
        chroma: ChromaServer) -> None:
    res = _run(chroma.base_url, {"backend": "chroma", "metric": "l2", "dim": 16, "count": 1500,
                                 "batch_size": 500, "k": 10, "query_count": 30,
                                 "hnsw_ef": 1500, "m": 32, "ef_construction": 200})
    assert res.counters["ok"] == 60 and res.counters["errors"] == 0
    assert res.extra["insert_vectors"] == 1500 and res.extra["insert_batches"] == 3
    assert res.extra["insert_vectors_per_s"] > 0
    assert res.extra["recall_at_k"] == 1.0 and res.extra["recall_queries"] == 60
    assert res.values["recall_hits"] == res.values["recall_checked"] == 60 * 10
    assert res.histograms["latency"].count == 60
    assert res.histograms["service"].count == 60  # the wire send time is known


def test_chroma_returns_numpys_exact_neighbours_in_order_for_every_metric(
        chroma: ChromaServer) -> None:
    data = random_vectors(800, 12, 8, seed=5)

    async def check(metric: Metric) -> list[list[int]]:
        http = _http(chroma.base_url)
        store = ChromaStore(http, "", f"exact-{metric}",
                            IndexSettings(8, metric, m=32, ef_construction=200, ef_search=800))
        try:
            await store.reset()
            await store.insert(list(range(800)), data.base.tolist())
            assert await store.count() == 800
            return [(await store.search(q, 5)).ids for q in data.queries.tolist()]
        finally:
            await store.drop()
            http.close()
            await asyncio.sleep(0)

    for metric in ("l2", "cosine", "ip"):
        found = asyncio.run(check(metric))
        truth = exact_neighbours(data.base, data.queries, 5, metric)
        assert found == truth.tolist(), metric


def test_chroma_recall_falls_below_one_for_a_starved_index(chroma: ChromaServer) -> None:
    # proves recall is measured, not assumed: a 2-link graph searched with a beam of k misses
    res = _run(chroma.base_url, {"backend": "chroma", "metric": "l2", "dim": 32, "count": 3000,
                                 "batch_size": 1000, "k": 10, "query_count": 40, "hnsw_ef": 10,
                                 "m": 2, "ef_construction": 10}, requests=40)
    assert res.extra["recall_at_k"] < 0.9  # measured here: 0.09
    assert res.values["recall_hits"] < res.values["recall_checked"] == 400


def test_chroma_rejects_a_vector_of_the_wrong_dimension_with_its_message(
        chroma: ChromaServer) -> None:
    async def go() -> VectorDbError:
        http = _http(chroma.base_url)
        store = ChromaStore(http, "", "dims", IndexSettings(4, "l2"))
        try:
            await store.reset()
            await store.insert([0], [[1.0, 2.0, 3.0, 4.0]])  # chroma fixes the dimension here
            with pytest.raises(VectorDbError) as err:
                await store.insert([1], [[1.0, 2.0, 3.0]])
            return err.value
        finally:
            await store.drop()
            http.close()
            await asyncio.sleep(0)

    exc = asyncio.run(go())
    assert exc.kind == "status_400" and "dimension of 4, got 3" in str(exc)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_qdrant_path_upserts_each_batch_once_and_finds_the_exact_neighbours(
        qdrant_fake: QdrantFake, metric: str) -> None:
    res = _run(qdrant_fake.base_url, {"backend": "qdrant", "metric": metric, "dim": 8,
                                      "count": 1000, "batch_size": 128, "insert_concurrency": 3,
                                      "k": 7, "query_count": 25, "hnsw_ef": 64}, requests=50)
    assert qdrant_fake.requests["PUT points"] == 8  # ceil(1000 / 128)
    assert qdrant_fake.requests["POST /query"] == 50
    assert res.extra["insert_vectors"] == 1000 and res.extra["recall_at_k"] == 1.0
    assert res.values["recall_hits"] == 50 * 7
    assert qdrant_fake.collections == {}  # dropped at close
    assert qdrant_fake.errors == []  # deleting a missing collection is {"result": false}


def test_qdrant_errors_reach_the_caller_with_qdrants_words(qdrant_fake: QdrantFake) -> None:
    async def go() -> list[VectorDbError]:
        http = _http(qdrant_fake.base_url)
        store = QdrantStore(http, "", "errs", IndexSettings(4, "l2"))
        other = QdrantStore(http, "", "missing", IndexSettings(4, "l2"))
        errors = []
        try:
            await store.reset()
            for call in (store.insert([1], [[1.0, 2.0, 3.0]]), other.search([1.0] * 4, 3),
                         store.search([1.0] * 5, 3)):
                with pytest.raises(VectorDbError) as err:
                    await call
                errors.append(err.value)
            status = (await http.call("PUT", "/collections/errs", {"vectors": {
                "size": 4, "distance": "Cosine"}})).status
            assert status == 409
            bad_id = await http.call("PUT", "/collections/errs/points",
                                     {"points": [{"id": -1, "vector": [0, 0, 0, 0]}]})
            assert bad_id.status == 400 and "not a valid point ID" in str(bad_id.body)
            return errors
        finally:
            http.close()
            await asyncio.sleep(0)

    dims, missing, query_dims = asyncio.run(go())
    assert dims.kind == "status_400" and "expected dim: 4, got 3" in str(dims)
    assert missing.kind == "status_404" and "Collection `missing` doesn't exist" in str(missing)
    assert query_dims.kind == "status_400" and "expected dim: 4, got 5" in str(query_dims)


def test_a_collection_gone_mid_run_makes_queries_errors_of_kind_status_404(
        qdrant_fake: QdrantFake) -> None:
    async def go() -> tuple[str, str]:
        wl = build_workload("vectordb", qdrant_fake.base_url, {"count": 50, "dim": 4})
        assert isinstance(wl, VectorDbWorkload)
        await wl.prepare()
        ok = await wl.request(0)
        qdrant_fake.collections.clear()
        gone = await wl.request(1)
        await wl.close()
        return ("ok" if ok.ok else ok.error), gone.error

    assert asyncio.run(go()) == ("ok", "status_404")


def test_npy_and_jsonl_datasets_hold_out_their_last_rows_as_queries(
        qdrant_fake: QdrantFake, tmp_path: Path) -> None:
    rows = np.random.default_rng(3).standard_normal((300, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", rows)
    (tmp_path / "v.jsonl").write_text("\n".join(json.dumps({"vector": r}) for r in
                                                rows.tolist()) + "\n")
    for name in ("v.npy", "v.jsonl"):
        res = _run(qdrant_fake.base_url, {"dataset": str(tmp_path / name), "count": 0,
                                          "query_count": 20, "metric": "l2", "k": 5},
                   requests=20)
        assert res.extra["insert_vectors"] == 280, name
        assert res.extra["recall_at_k"] == 1.0, name


def test_a_failing_insert_phase_fails_the_run_with_the_servers_answer(
        qdrant_fake: QdrantFake) -> None:
    # the chroma API spoken to a Qdrant: the first call of the insert phase gets a 404
    wl = build_workload("vectordb", qdrant_fake.base_url, {"backend": "chroma", "count": 10})
    res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED
    assert "prepare failed: chroma insert phase" in res.reason and "404" in res.reason
    assert res.counters["sent"] == 0


def test_bad_parameters_name_the_field() -> None:
    url = "http://127.0.0.1:1"
    with pytest.raises(InvalidArgument, match="collection"):
        build_workload("vectordb", url, {"collection": "a/b"})
    with pytest.raises(InvalidArgument, match="exact"):
        build_workload("vectordb", url, {"backend": "chroma", "exact": True})
    with pytest.raises(InvalidArgument, match="backend"):
        build_workload("vectordb", url, {"backend": "milvus"})
    with pytest.raises(InvalidArgument, match="dataset"):
        wl = build_workload("vectordb", url, {"dataset": "/nonexistent/v.csv"})
        asyncio.run(wl.prepare())

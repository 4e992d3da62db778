"""Spark local[2]: per-request samples from both partitions in one samples.parquet, and the
vectordb workload's one shared insert phase (driver) before both partitions query, and a cancel
that arrives during that insert.

One SparkSession serves the module (the BenchmarkService in the test process reuses it). Runs
are short: each costs a few seconds of Spark task launch on top of its load.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest

from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.samples import SampleSet
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.scaleout.spark import SparkLoad
from aifb.client.workloads.vectordb.base import IndexSettings, VectorDbError
from aifb.client.workloads.vectordb.chroma import ChromaStore
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp
from aifb.v1 import client_pb2 as C
from tests.fixtures.spark import SPARK_MASTER
from tests.integration.bench_harness import bench_mesh, create, follow, seconds

if TYPE_CHECKING:
    from tests.fixtures.chroma import ChromaServer
    from tests.fixtures.nginx import NginxServer
    from tests.fixtures.qdrant_fake import QdrantFake

pytestmark = pytest.mark.integration
MASTER = SPARK_MASTER


def test_spark_partitions_samples_are_one_file_with_a_row_per_request(
        spark_session: None, nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        run = create(stub, workload="http", url=nginx.base_url,
                     load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=100,
                                        duration=seconds(2), warmup=seconds(0.5),
                                        engine=C.LOAD_ENGINE_SPARK, spark_master=MASTER,
                                        partitions=2, record_samples=True))
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_JSON), timeout=30)
        doc = json.loads(report.content)
    path = Path(report.directory) / "samples.parquet"
    table = pq.read_table(path)
    c = doc["figures"]["counters"]
    assert table.num_rows == c["completed"] + c["excluded"] == 200  # 2 s x 100/s, every one
    parts = table.column("partition").to_pylist()
    assert set(parts) == {0, 1} and parts.count(0) == parts.count(1) == 100
    phases = [str(p) for p in table.column("phase").to_pylist()]
    assert phases.count("measure") == c["completed"] == 150
    assert set(table.column("run").to_pylist()) == {run.name}
    # The interleaved schedules line up on the common start: every 10 ms, one request.
    intended = sorted(table.column("intended_s").to_pylist())
    assert intended[:3] == [pytest.approx(0.0), pytest.approx(0.01), pytest.approx(0.02)]
    assert max(b - a for a, b in pairwise(intended)) < 0.0101
    assert doc["samples"] == {"rows": 200, "requests": 200, "limit": 1_000_000,
                              "capped": False, "parts": 2, "file": "samples.parquet"}
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    assert spark is not None
    rows = spark.read.parquet(str(path)).groupBy("partition").count().orderBy(
        "partition").collect()
    assert [(r["partition"], r["count"]) for r in rows] == [(0, 100), (1, 100)]


def test_vectordb_on_spark_inserts_once_on_the_driver_and_both_partitions_query(
        spark_session: None, chroma: ChromaServer) -> None:
    count, batch, k = 1200, 400, 10
    params = {"backend": "chroma", "collection": "spark-shared", "metric": "l2", "dim": 16,
              "count": count, "batch_size": batch, "k": k, "query_count": 30,
              "hnsw_ef": count, "m": 32, "ef_construction": 200, "keep_collection": True}
    load = SparkLoad(LoadSpec(mode=Mode.CLOSED, users=4, duration_s=30.0, max_requests=80),
                     "vectordb", chroma.base_url, params, master=MASTER, partitions=2,
                     sample_limit=50)
    res = load.run()
    assert res.state is RunState.SUCCEEDED, res.reason
    parts = load.partition_results
    assert len(parts) == 2 and all(p.counters["ok"] == 40 for p in parts)
    # The insert phase ran once: its figures are the driver's, not a sum over partitions.
    assert res.extra["insert_vectors"] == count
    assert res.extra["insert_batches"] == math.ceil(count / batch)
    assert res.extra["insert_vectors_per_s"] > 0
    assert all("insert_vectors" not in p.extra for p in parts)
    # Recall against the vectors the driver inserted: an exhaustive index finds them all.
    assert res.extra["k"] == k and res.extra["recall_at_k"] == 1.0
    assert res.extra["recall_queries"] == 80
    assert res.values["recall_hits"] == res.values["recall_checked"] == 80 * k

    async def stored() -> int:
        http = JsonHttp("127.0.0.1", int(chroma.base_url.rsplit(":", 1)[1]),
                        chroma.base_url.removeprefix("http://"), connections=1, timeout_s=30)
        store = ChromaStore(http, "", "spark-shared", IndexSettings(16, "l2"))
        try:
            await store.attach()
            return await store.count()
        finally:
            await store.drop()
            http.close()
            await asyncio.sleep(0)

    assert asyncio.run(stored()) == count  # kept (keep_collection), holding each vector once
    # Samples: the limit split between the partitions, 25 rows each of their 40 requests.
    samples = res.samples
    assert isinstance(samples, SampleSet)
    assert [(p.tags, p.rows, p.requests) for p in samples.parts] == [
        ({"partition": 0}, 25, 40), ({"partition": 1}, 25, 40)]
    assert samples.capped and samples.rows == 50


def test_vectordb_on_spark_upserts_each_batch_once_and_drops_the_collection_after(
        spark_session: None, qdrant_fake: QdrantFake) -> None:
    params = {"backend": "qdrant", "collection": "spark-once", "metric": "cosine", "dim": 8,
              "count": 1000, "batch_size": 128, "insert_concurrency": 2, "k": 7,
              "query_count": 25}
    load = SparkLoad(LoadSpec(mode=Mode.CLOSED, users=2, duration_s=30.0, max_requests=50),
                     "vectordb", qdrant_fake.base_url, params, master=MASTER, partitions=2)
    res = load.run()
    assert res.state is RunState.SUCCEEDED, res.reason
    assert qdrant_fake.requests["PUT points"] == 8  # ceil(1000 / 128): one insert phase
    assert qdrant_fake.requests["POST /query"] == 50
    assert qdrant_fake.requests["GET collection"] == 2  # each partition attached
    assert res.extra["insert_vectors"] == 1000 and res.extra["recall_at_k"] == 1.0
    assert qdrant_fake.collections == {}  # the driver dropped it once every partition ended
    assert qdrant_fake.errors == []


def test_a_cancel_during_the_drivers_insert_ends_cancelled_and_drops_the_collection(
        spark_session: None, chroma: ChromaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    inserting, batches = threading.Event(), [0]
    original = ChromaStore.insert

    async def insert(self: ChromaStore, ids: list[int], vectors: list[list[float]]) -> None:
        batches[0] += 1
        inserting.set()  # the driver (this process) is inside its insert phase
        await original(self, ids, vectors)

    monkeypatch.setattr(ChromaStore, "insert", insert)
    # 200k vectors in batches of 100: the insert phase would take far longer than the test.
    count, batch = 200_000, 100
    params = {"backend": "chroma", "collection": "spark-cancel", "metric": "l2", "dim": 16,
              "count": count, "batch_size": batch, "k": 10, "query_count": 10}
    load = SparkLoad(LoadSpec(mode=Mode.CLOSED, users=2, duration_s=30.0), "vectordb",
                     chroma.base_url, params, master=MASTER, partitions=2)
    results: list[LoadResult] = []
    thread = threading.Thread(target=lambda: results.append(load.run()), daemon=True)
    thread.start()
    assert inserting.wait(60), "the driver's insert phase never started"
    load.cancel("stopped during the insert")
    thread.join(60)
    assert not thread.is_alive(), "the run did not end after a cancel during the insert"
    (res,) = results
    assert res.state is RunState.CANCELLED and res.reason == "stopped during the insert"
    assert batches[0] < count // batch  # it stopped part way
    assert load.partition_results == []  # no Spark stage was started

    async def attach() -> None:  # the driver's teardown dropped the half-filled collection
        http = JsonHttp("127.0.0.1", int(chroma.base_url.rsplit(":", 1)[1]),
                        chroma.base_url.removeprefix("http://"), connections=1, timeout_s=30)
        try:
            await ChromaStore(http, "", "spark-cancel", IndexSettings(16, "l2")).attach()
        finally:
            http.close()
            await asyncio.sleep(0)

    with pytest.raises(VectorDbError):
        asyncio.run(attach())

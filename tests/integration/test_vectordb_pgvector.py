"""vectordb against a real PostgreSQL + pgvector, and side by side with a real Chroma.

pgvector's index is HNSW, as Chroma's is; on a small set with `hnsw.ef_search` >= the set's size
the search visits every node, so recall@k must be 1.0 and the ids must equal numpy's brute force
in order. A starved graph (m=2, a beam of k) must score well below 1, and the same starved table
searched with `exact` (a full scan) must score 1.0: the workload measures the index it asked for,
not whatever plan the planner liked. The comparison test puts the same vectors and queries into
both engines and scores each against the same exact neighbours.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from aifb.client.engine.load import run_load
from aifb.client.engine.results import RunState
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.vectordb.base import IndexSettings, Metric, VectorDbError, VectorStore
from aifb.client.workloads.vectordb.chroma import ChromaStore
from aifb.client.workloads.vectordb.jsonhttp import JsonHttp
from aifb.client.workloads.vectordb.pgpool import PgPool, pg_error
from aifb.client.workloads.vectordb.pgvector import PgVectorStore, session_settings
from aifb.client.workloads.vectordb.vectors import (
    VectorSet,
    exact_neighbours,
    random_vectors,
    recall_hits,
)
from tests.fixtures.pgvector import require_pgvector
from tests.integration.bench_harness import run_vectordb as _run
from tests.integration.flow import S, create, state_name, wait_for_state

if TYPE_CHECKING:
    from tests.fixtures.chroma import ChromaServer
    from tests.fixtures.pgvector import PgVectorServer
    from tests.fixtures.server import RunningServer

pytestmark = pytest.mark.integration


def _pool(url: str, index: IndexSettings, timeout_s: float = 30) -> PgPool:
    parts = urlsplit(url)
    return PgPool(parts.hostname or "", parts.port or 5432, user="aifb", dbname="aifb", limit=2,
                  timeout_s=timeout_s, settings=session_settings(index))


def test_pgvector_inserts_in_batches_and_recall_at_k_is_one_for_an_exhaustive_index(
        pgvector: PgVectorServer) -> None:
    res = _run(pgvector.url, {"backend": "pgvector", "metric": "l2", "dim": 16, "count": 800,
                              "batch_size": 300, "insert_concurrency": 2, "k": 10,
                              "query_count": 30, "hnsw_ef": 800, "m": 32,
                              "ef_construction": 200})
    assert res.counters["ok"] == 60 and res.counters["errors"] == 0
    assert res.extra["insert_vectors"] == 800 and res.extra["insert_batches"] == 3
    assert res.extra["insert_vectors_per_s"] > 0
    assert res.extra["recall_at_k"] == 1.0 and res.extra["recall_queries"] == 60
    assert res.values["recall_hits"] == res.values["recall_checked"] == 60 * 10
    assert res.histograms["latency"].count == 60 and res.histograms["service"].count == 60
    assert 1 <= res.extra["connections_opened"] <= 4  # one session per user at most


def test_pgvector_returns_numpys_exact_neighbours_in_order_for_every_metric(
        pgvector: PgVectorServer) -> None:
    data = random_vectors(800, 12, 8, seed=5)

    async def check(metric: Metric) -> list[list[int]]:
        index = IndexSettings(8, metric, m=32, ef_construction=200, ef_search=800)
        pool = _pool(pgvector.url, index)
        store = PgVectorStore(pool, f"exact-{metric}", index)
        try:
            await store.reset()
            await store.insert(list(range(800)), data.base.tolist())
            assert await store.count() == 800
            return [(await store.search(q, 5)).ids for q in data.queries.tolist()]
        finally:
            await store.drop()
            await pool.aclose()

    for metric in ("l2", "cosine", "ip"):
        found = asyncio.run(check(metric))
        truth = exact_neighbours(data.base, data.queries, 5, metric)
        assert found == truth.tolist(), metric


def test_pgvector_recall_falls_below_one_for_a_starved_index_and_is_one_with_exact(
        pgvector: PgVectorServer) -> None:
    starved = {"backend": "pgvector", "metric": "l2", "dim": 32, "count": 3000,
               "batch_size": 1000, "k": 10, "query_count": 40, "hnsw_ef": 10, "m": 2,
               "ef_construction": 10}
    res = _run(pgvector.url, starved, requests=40)
    assert res.extra["recall_at_k"] < 0.9  # measured here: 0.19
    assert res.values["recall_hits"] < res.values["recall_checked"] == 400
    full_scan = _run(pgvector.url, {**starved, "exact": True}, requests=40)
    assert full_scan.extra["recall_at_k"] == 1.0


async def _scores(store: VectorStore, data: VectorSet, k: int, metric: Metric
                  ) -> tuple[float, list[list[int]]]:
    """Insert `data` into `store`, search every query, and score recall@k against numpy."""
    truth = exact_neighbours(data.base, data.queries, k, metric)
    try:
        await store.reset()
        for lo in range(0, len(data.base), 250):
            await store.insert(list(range(lo, min(lo + 250, len(data.base)))),
                               data.base[lo:lo + 250].tolist())
        assert await store.count() == len(data.base)
        found = [(await store.search(q, k)).ids for q in data.queries.tolist()]
    finally:
        await store.drop()
    hits = sum(recall_hits(ids, t, k) for ids, t in zip(found, truth, strict=True))
    return hits / (k * len(found)), found


def test_chroma_and_pgvector_score_the_same_vectors_and_queries_against_the_same_truth(
        chroma: ChromaServer, pgvector: PgVectorServer) -> None:
    """VectorDBBench-style: one data set, one query set, one truth; both engines' recall@10."""
    data = random_vectors(1000, 25, 24, seed=11)
    k, metric = 10, "cosine"

    async def both(m: int, ef_c: int, ef: int) -> dict[str, tuple[float, list[list[int]]]]:
        index = IndexSettings(24, metric, m=m, ef_construction=ef_c, ef_search=ef)
        parts = urlsplit(chroma.base_url)
        http = JsonHttp(parts.hostname or "", parts.port or 80, parts.netloc, connections=2,
                        timeout_s=30)
        pool = _pool(pgvector.url, index)
        try:
            return {"chroma": await _scores(ChromaStore(http, "", "side", index), data, k,
                                            metric),
                    "pgvector": await _scores(PgVectorStore(pool, "side", index), data, k,
                                              metric)}
        finally:
            await http.aclose()
            await pool.aclose()

    generous = asyncio.run(both(32, 200, 1000))
    truth = exact_neighbours(data.base, data.queries, k, metric).tolist()
    for engine, (recall, found) in generous.items():
        assert recall == 1.0, engine
        assert found == truth, engine  # the same ids in the same order as numpy's
    starved = asyncio.run(both(2, 10, k))
    for engine, (recall, found) in starved.items():
        assert 0.0 < recall < 0.95, (engine, recall)
        assert all(len(ids) <= k for ids in found)


def test_the_workload_gives_both_engines_the_same_data_and_reports_their_recall(
        chroma: ChromaServer, pgvector: PgVectorServer) -> None:
    common = {"metric": "ip", "dim": 12, "count": 900, "batch_size": 300, "k": 10,
              "query_count": 20, "seed": 3, "m": 32, "ef_construction": 200, "hnsw_ef": 900}
    runs = {"chroma": _run(chroma.base_url, {"backend": "chroma", **common}, requests=40),
            "pgvector": _run(pgvector.url, {"backend": "pgvector", **common}, requests=40)}
    for engine, res in runs.items():
        assert res.extra["insert_vectors"] == 900, engine
        assert res.extra["recall_at_k"] == 1.0, engine
        assert res.values["recall_hits"] == res.values["recall_checked"] == 400, engine


def test_pgvector_errors_carry_the_sqlstate_and_the_servers_words(
        pgvector: PgVectorServer) -> None:
    import psycopg

    async def go() -> list[VectorDbError]:
        index = IndexSettings(4, "l2")
        pool = _pool(pgvector.url, index, timeout_s=0.5)
        store = PgVectorStore(pool, "errs", index)
        missing = PgVectorStore(pool, "missing", index)
        errors = []
        try:
            await store.reset()
            for call in (store.insert([1], [[1.0, 2.0, 3.0]]), missing.search([1.0] * 4, 3),
                         missing.attach()):
                with pytest.raises(VectorDbError) as err:
                    await call
                errors.append(err.value)
            async with pool.connection() as conn:  # statement_timeout is the request timeout
                with pytest.raises(psycopg.errors.QueryCanceled) as slow:
                    await conn.execute("SELECT pg_sleep(5)")
            errors.append(pg_error(slow.value, "sleep"))
            return errors
        finally:
            await store.drop()
            await pool.aclose()

    dims, search_missing, attach_missing, slow = asyncio.run(go())
    assert dims.kind == "sql_22000" and "expected 4 dimensions, not 3" in str(dims)
    assert search_missing.kind == attach_missing.kind == "sql_42P01"
    assert 'relation "missing" does not exist' in str(search_missing)
    assert slow.kind == "timeout" and "statement timeout" in str(slow)


def test_pgvector_lets_only_the_benchmark_role_in_over_tcp(pgvector: PgVectorServer) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=pgvector.port, user="aifb", dbname="aifb") as c:
        row = c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
    with pytest.raises(psycopg.OperationalError, match=r'no pg_hba\.conf entry .* "postgres"'):
        psycopg.connect(host="127.0.0.1", port=pgvector.port, user="postgres", dbname="aifb")


def test_a_failing_insert_phase_names_the_backend_and_a_dead_port_is_a_connect_error(
        pgvector: PgVectorServer) -> None:
    wl = build_workload("vectordb", pgvector.url, {"backend": "pgvector", "count": 10,
                                                   "dim": 4, "pg_database": "nosuch"})
    res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED and res.counters["sent"] == 0
    assert "prepare failed: pgvector insert phase" in res.reason and "nosuch" in res.reason
    port = pgvector.port
    assert pgvector.stop() == 0  # a fast shutdown on SIGTERM, exit code 0
    wl = build_workload("vectordb", f"postgresql://127.0.0.1:{port}",
                        {"backend": "pgvector", "count": 10, "dim": 4})
    res = asyncio.run(run_load(LoadSpec(duration_s=1.0), wl))
    assert res.state is RunState.FAILED and "pgvector connect" in res.reason


def test_the_launcher_stops_on_sigterm_and_removes_its_private_dir(
        pgvector: PgVectorServer) -> None:
    assert pgvector.stop() == 0
    log = pgvector.log.read_text(errors="replace")
    assert "database system is shut down" in log
    if os.geteuid() == 0:  # postgres ran as nobody, from a private temp dir
        line = next(ln for ln in log.splitlines() if ln.startswith("pgvector: running as"))
        private = Path(line.rsplit(" ", 1)[1]).parent
        assert "nobody" in line and not private.exists()
    else:
        assert (pgvector.log.parent / "pgdata" / "PG_VERSION").exists()


def test_the_pgvector_recipe_deploys_and_serves_a_vectordb_benchmark(
        each_scheduler_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    require_pgvector()
    # the job finds `python` (this venv's) on PATH, as it would with the venv activated
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    stub = each_scheduler_server.stub()
    svc = create(stub, "pgvector", port="0", max_connections="20")
    try:
        ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=120)
        assert state_name(ready.state) == "READY", ready.state_message
        # a deployed service's target is http://host:port; the pgvector backend takes it
        res = _run(f"http://127.0.0.1:{ready.endpoint.port}/",
                   {"backend": "pgvector", "metric": "l2", "dim": 8, "count": 500, "k": 5,
                    "query_count": 10, "hnsw_ef": 500, "m": 16, "ef_construction": 100},
                   requests=20)
        assert res.extra["recall_at_k"] == 1.0 and res.counters["ok"] == 20
    finally:
        stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
        assert state_name(wait_for_state(stub, svc.name, set()).state) == "STOPPED"


def _table_gone(url: str, collection: str) -> bool:
    """True when attaching to `collection` fails as PostgreSQL's undefined_table (42P01)."""

    async def attach() -> str:
        index = IndexSettings(16, "l2")
        pool = _pool(url, index)
        try:
            await PgVectorStore(pool, collection, index).attach()
        except VectorDbError as err:
            return err.kind
        finally:
            await pool.aclose()
        return "attached"

    return asyncio.run(attach()) == "sql_42P01"


def test_vectordb_on_spark_with_pgvector_inserts_once_and_both_partitions_query(
        spark_session: None, pgvector: PgVectorServer) -> None:
    from aifb.client.scaleout.spark import SparkLoad
    from tests.fixtures.spark import SPARK_MASTER

    count, batch = 1000, 250
    params = {"backend": "pgvector", "collection": "spark-shared", "metric": "l2", "dim": 16,
              "count": count, "batch_size": batch, "k": 10, "query_count": 30, "hnsw_ef": 1000,
              "m": 32, "ef_construction": 200}
    load = SparkLoad(LoadSpec(mode=Mode.CLOSED, users=4, duration_s=30.0, max_requests=80),
                     "vectordb", pgvector.url, params, master=SPARK_MASTER, partitions=2)
    res = load.run()
    assert res.state is RunState.SUCCEEDED, res.reason
    assert [p.counters["ok"] for p in load.partition_results] == [40, 40]
    assert res.extra["insert_vectors"] == count and res.extra["insert_batches"] == 4  # once
    assert res.extra["recall_at_k"] == 1.0 and res.extra["recall_queries"] == 80

    assert _table_gone(pgvector.url, "spark-shared")  # the driver dropped it after both


def test_vectordb_on_worker_processes_inserts_once_and_every_worker_queries(
        pgvector: PgVectorServer) -> None:
    """The worker-process engine runs the insert phase once in the parent, as Spark's driver
    does: N workers each recreating the one table would drop the others' vectors mid-run."""
    from aifb.client.scaleout.processes import ProcessLoad

    count, batch = 1000, 250
    params = {"backend": "pgvector", "collection": "workers-shared", "metric": "l2", "dim": 16,
              "count": count, "batch_size": batch, "k": 10, "query_count": 30, "hnsw_ef": 1000,
              "m": 32, "ef_construction": 200}
    load = ProcessLoad(LoadSpec(mode=Mode.CLOSED, users=4, duration_s=30.0, max_requests=80),
                       "vectordb", pgvector.url, params, workers=2)
    res = load.run()
    assert res.state is RunState.SUCCEEDED, res.reason
    assert [p.counters["ok"] for p in load.partition_results] == [40, 40]
    assert res.extra["insert_vectors"] == count and res.extra["insert_batches"] == 4  # once
    assert res.extra["recall_at_k"] == 1.0 and res.extra["recall_queries"] == 80

    assert _table_gone(pgvector.url, "workers-shared")  # the parent dropped it after the workers


def test_a_failed_shared_setup_fails_the_run_before_any_worker_starts(
        pgvector: PgVectorServer) -> None:
    from aifb.client.scaleout.processes import ProcessLoad

    params = {"backend": "pgvector", "collection": "never-made", "dim": 16, "count": 100,
              "pg_database": "no_such_database"}
    load = ProcessLoad(LoadSpec(mode=Mode.CLOSED, users=2, duration_s=5.0, max_requests=4),
                       "vectordb", pgvector.url, params, workers=2)
    res = load.run()
    assert res.state is RunState.FAILED and "workload prepare failed" in res.reason
    assert load.partition_results == []

"""Per-request samples of runs made of several engine runs: a sweep's steps and a Spark run's
partitions in one samples.parquet (tag columns, one budget), the options that allow them, and
the vectordb workload's Spark-side pieces that need no server (state adoption, extras merge)."""

from __future__ import annotations

import asyncio
import io
from time import perf_counter_ns

import numpy as np
import pyarrow.parquet as pq
import pytest

from aifb.client.engine.samples import RequestLog, SamplePart, SampleSet, split_limit
from aifb.client.engine.spec import LoadSpec
from aifb.client.engine.sweep import SweepSpec, run_sweep, sweep_samples
from aifb.client.engine.workload import Outcome
from aifb.client.report.parquet import SAMPLE_COLUMNS, samples_parquet
from aifb.client.runs.options import LoadOptions, plan
from aifb.client.scaleout.shared import SharedSetup
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.vectordb.workload import SharedVectors, VectorDbWorkload
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit
S = 1_000_000_000


def _log(limit: int, n: int, *, start: int = S, values: bool = True, fail_every: int = 0
         ) -> RequestLog:
    """A log whose window is [start + 0.1 s, start + 1 s), with `n` requests 60 ms apart."""
    log = RequestLog(limit, start, start + S // 10, start + S)
    for i in range(n):
        t = start + i * 60_000_000
        ok = not (fail_every and i % fail_every == 0)
        log.add(t, Outcome(ok, "" if ok else "timeout", 200 if ok else 0, sent_ns=t + 1000,
                           values={"recall_hits": 3.0} if values and ok else None),
                t + 2_000_000)
    return log


def _read(data: bytes) -> tuple[list[dict[str, object]], dict[bytes, bytes]]:
    table = pq.read_table(io.BytesIO(data))
    return table.to_pylist(), table.schema.metadata


# -- options


def test_samples_are_accepted_for_sweeps_and_the_spark_engine() -> None:
    sweep = LoadOptions(mode="sweep", concurrency=4, record_samples=True, max_samples=500)
    assert plan(sweep).sweep is not None and sweep.sample_limit == 500
    spark = LoadOptions(rate=5, engine="spark", record_samples=True)
    assert plan(spark).load is not None and spark.sample_limit == 1_000_000
    with pytest.raises(InvalidArgument) as err:  # a sweep on Spark stays refused
        plan(LoadOptions(mode="sweep", engine="spark", record_samples=True))
    assert err.value.field == "load.engine"


def test_a_limit_splits_evenly_the_first_parts_taking_the_rest() -> None:
    assert split_limit(10, 3) == [4, 3, 3] and sum(split_limit(1_000_001, 7)) == 1_000_001
    assert split_limit(1, 2) == [1, 0] and split_limit(0, 2) == [0, 0]


# -- one file from several parts


def test_a_sweeps_steps_land_in_one_file_tagged_by_step_with_their_target_rate() -> None:
    first, second = _log(10, 4), _log(10, 3, start=5 * S, values=False, fail_every=2)
    steps = SampleSet(10, [
        SamplePart({"step": 0, "step_name": "synchronous", "target_rate": 0.0}, first),
        SamplePart({"step": 1, "step_name": "rate", "target_rate": 42.5}, second),
        SamplePart({"step": 2, "step_name": "rate", "target_rate": 50.0}, requests=9)])
    rows, meta = _read(samples_parquet("benchmarks/s1", "vectordb", steps))
    table = pq.read_table(io.BytesIO(samples_parquet("benchmarks/s1", "vectordb", steps)))
    assert table.column_names == [*SAMPLE_COLUMNS, "step", "step_name", "target_rate",
                                  "recall_hits"]
    assert [r["step"] for r in rows] == [0] * 4 + [1] * 3
    assert [r["step_name"] for r in rows] == ["synchronous"] * 4 + ["rate"] * 3
    assert [r["target_rate"] for r in rows] == [0.0] * 4 + [42.5] * 3
    assert {r["run"] for r in rows} == {"benchmarks/s1"}
    # Each step's times are from its own start; its phases from its own window.
    assert [r["intended_s"] for r in rows][3:5] == [pytest.approx(0.18), 0.0]
    assert [r["phase"] for r in rows] == (["warmup", "warmup", "measure", "measure"] * 2)[:7]
    # A step without a value column has nulls there; error kinds stay each step's own.
    assert [r["recall_hits"] for r in rows] == [3.0] * 4 + [None] * 3
    assert [r["error"] for r in rows][4:] == ["timeout", "", "timeout"]
    assert (steps.rows, steps.seen, steps.capped) == (7, 16, True)  # step 2 kept none of 9
    assert meta[b"aifb.rows"] == b"7" and meta[b"aifb.requests"] == b"16"
    assert meta[b"aifb.capped"] == b"true" and meta[b"aifb.limit"] == b"10"
    assert steps.summary() == {"rows": 7, "requests": 16, "limit": 10, "capped": True,
                               "parts": 3}


def test_partitions_rows_encoded_where_they_ran_are_renamed_and_tagged_on_the_driver() -> None:
    parts = []
    for i, log in enumerate((_log(5, 8), _log(5, 2, values=False))):
        encoded = samples_parquet("", "vectordb", log)  # what an executor returns
        parts.append(SamplePart({"partition": i}, encoded=encoded, rows=log.rows,
                                requests=log.seen))
    whole = SampleSet(10, parts)
    rows, meta = _read(samples_parquet("benchmarks/p1", "vectordb", whole))
    assert len(rows) == 7 and {r["run"] for r in rows} == {"benchmarks/p1"}
    assert [r["partition"] for r in rows] == [0] * 5 + [1] * 2
    assert [r["recall_hits"] for r in rows] == [3.0] * 5 + [None] * 2
    assert meta[b"aifb.requests"] == b"10" and meta[b"aifb.capped"] == b"true"
    # No part at all: an empty file with the columns, still readable.
    empty, _ = _read(samples_parquet("benchmarks/p2", "http", SampleSet(10)))
    assert empty == []
    assert pq.read_table(io.BytesIO(samples_parquet("benchmarks/p2", "http", SampleSet(
        10)))).column_names == list(SAMPLE_COLUMNS)


def test_a_sweep_keeps_the_first_rows_of_the_whole_sweep_within_one_budget() -> None:
    class Quick:
        name = "quick"

        async def prepare(self) -> None:
            pass

        async def request(self, seq: int) -> Outcome:
            await asyncio.sleep(0.002)
            return Outcome(True, "", 200, end_ns=perf_counter_ns())

        def extra_metrics(self) -> dict[str, float]:
            return {}

        async def close(self) -> None:
            pass

    spec = SweepSpec(step=LoadSpec(duration_s=0.3), max_users=2, points=1)
    res = asyncio.run(run_sweep(spec, Quick, sample_limit=20))
    assert len(res.steps) >= 2
    first = res.steps[0].result.samples
    assert first is not None and first.limit == 20
    samples = sweep_samples(res.steps, 20)
    assert samples.rows == 20  # the first step alone sends far more than 20 in 0.3 s
    assert samples.seen == sum(s.result.counters["completed"] + s.result.counters["excluded"]
                               for s in res.steps)
    assert [p.tags["step"] for p in samples.parts] == list(range(len(res.steps)))
    assert [p.tags["step_name"] for p in samples.parts][:2] == ["synchronous", "throughput"]
    assert samples.parts[1].rows == 0 and samples.capped


# -- vectordb's Spark-side pieces


def _vectordb(**params: object) -> VectorDbWorkload:
    wl = build_workload("vectordb", "http://127.0.0.1:1", {"backend": "chroma", **params})
    assert isinstance(wl, VectorDbWorkload)
    return wl


def test_vectordb_shares_its_insert_phase_and_merges_partition_extras_exactly() -> None:
    wl = _vectordb(k=5)
    assert isinstance(wl, SharedSetup)
    merged = wl.merge_extra([
        {"k": 5.0, "recall_queries": 30.0, "recall_at_k": 1.0, "connections_opened": 2.0},
        {"k": 5.0, "recall_queries": 10.0, "recall_at_k": 0.6, "connections_opened": 1.0}])
    assert merged == {"k": 5.0, "recall_queries": 40.0, "recall_at_k": 0.9,
                      "connections_opened": 3.0}
    assert wl.shared_metrics() == {}  # nothing inserted yet
    assert wl.extra_metrics().get("insert_vectors") is None
    state = SharedVectors("aifb-bench", 100, 4, np.zeros((3, 4), np.float32),
                          np.zeros((3, 5), np.int64))
    wl.adopt_shared(state)
    with pytest.raises(ValueError, match="filled aifb-bench, not other"):
        _vectordb(collection="other").adopt_shared(state)
    with pytest.raises(TypeError):
        _vectordb().adopt_shared({"count": 100})

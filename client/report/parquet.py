"""The per-second series and the per-request samples as Apache Parquet, for Spark SQL or pandas.

`samples_parquet` writes one file for a single run's `RequestLog` or for a `SampleSet` (a sweep's
steps, a Spark run's partitions): every part's rows, each with its constant columns (`step`,
`step_name`, `target_rate`; or `partition`) placed after SAMPLE_COLUMNS, then the workload's
values (a part lacking a value has nulls there).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aifb.client.engine.samples import RequestLog, SamplePart, SampleSet, Tag

__all__ = ["SAMPLE_COLUMNS", "TAG_COLUMNS", "samples_parquet", "series_parquet"]

_SCHEMA = pa.schema([
    ("run", pa.string()), ("second", pa.int32()), ("sent", pa.int64()),
    ("completed", pa.int64()), ("errors", pa.int64()), ("dropped", pa.int64()),
    ("cancelled", pa.int64()), ("in_flight", pa.int64()), ("target_rate", pa.float64()),
    ("achieved_rate", pa.float64()),
    ("latency_p50_s", pa.float64()), ("latency_p90_s", pa.float64()),
    ("latency_p99_s", pa.float64()), ("latency_max_s", pa.float64()),
    ("lag_p99_s", pa.float64()),
])
# samples.parquet: these columns, then one float64 column per workload value (docs/benchmarks.md).
SAMPLE_COLUMNS = ("run", "phase", "intended_time", "intended_s", "sent_s", "end_s", "latency_s",
                  "service_s", "send_delay_s", "ok", "status", "error", "ttft_s", "tpot_s",
                  "chunks")
# The constant columns a SampleSet's parts add, in this order (a part has some of them).
TAG_COLUMNS = {"step": pa.int32(), "step_name": pa.string(), "target_rate": pa.float64(),
               "partition": pa.int32()}
_PHASES = pa.array(["warmup", "measure", "cooldown"])


def _write(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def series_parquet(doc: dict[str, Any]) -> bytes:
    """One row per second of the run, the run's name in every row (runs concatenate)."""
    run = doc["benchmark"]["name"]
    rows = [{"run": run, **r} for r in doc["series"]]
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    table = table.replace_schema_metadata({"aifb.workload": doc["benchmark"]["workload"],
                                           "aifb.state": doc["benchmark"]["state"]})
    return _write(table)


def _ints(a: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, dtype=np.int64)


def _seconds(ns: np.ndarray[Any, Any], known: np.ndarray[Any, Any] | None = None) -> pa.Array:
    values = ns / 1e9
    return pa.array(values, mask=None if known is None else ~known, type=pa.float64())


def _samples_table(run: str, log: RequestLog) -> pa.Table:
    """One row per recorded request: SAMPLE_COLUMNS, then one column per workload value."""
    n = log.rows
    start = log.start_ns
    intended, sent = _ints(log.intended), _ints(log.sent)
    end, first = _ints(log.end), _ints(log.first)
    error = _ints(log.error)
    has_sent, has_first = sent != 0, first != 0
    phase = np.where(intended < log.window_start_ns, 0,
                     np.where(intended < log.window_end_ns, 1, 2)).astype(np.int8)
    tokens = np.frombuffer(log.values["output_tokens"], dtype=np.float64) if (
        "output_tokens" in log.values and n) else np.full(n, np.nan)
    has_tpot = has_first & (tokens > 1)
    tpot = np.divide(end - first, np.where(has_tpot, tokens - 1, 1.0))
    columns: dict[str, pa.Array] = {
        "run": _constant(run, n),
        "phase": pa.DictionaryArray.from_arrays(pa.array(phase), _PHASES),
        # Microseconds: what Spark's TIMESTAMP holds (nanoseconds would read as plain longs).
        "intended_time": pa.array((log.wall_start_ns + (intended - start)) // 1000,
                                  type=pa.timestamp("us", tz="UTC")),
        "intended_s": _seconds(intended - start),
        "sent_s": _seconds(sent - start, has_sent),
        "end_s": _seconds(end - start),
        "latency_s": _seconds(end - intended),
        "service_s": _seconds(end - sent, has_sent),
        "send_delay_s": _seconds(sent - intended, has_sent),
        "ok": pa.array(error == 0),
        "status": pa.array(_ints(log.status).astype(np.int32)),
        "error": pa.DictionaryArray.from_arrays(pa.array(error.astype(np.int32)),
                                                pa.array(log.error_kinds)),
        "ttft_s": _seconds(first - intended, has_first),
        "tpot_s": _seconds(tpot, has_tpot),
        "chunks": pa.array(_ints(log.chunks).astype(np.int32)),
    }
    for key, column in sorted(log.values.items()):
        values = np.frombuffer(column, dtype=np.float64) if n else np.zeros(0)
        name = f"value_{key}" if key in columns or key in TAG_COLUMNS else key
        columns[name] = pa.array(values, mask=np.isnan(values), type=pa.float64())
    return pa.table(columns)


def _constant(value: str, n: int) -> pa.Array:
    """A string column with one value in every row (dictionary-encoded: one copy)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)),
                                          pa.array([value], type=pa.string()))


def _tagged(table: pa.Table, run: str, tags: dict[str, Tag]) -> pa.Table:
    """`table` with `run` in its run column and each tag as a constant column after
    SAMPLE_COLUMNS (in TAG_COLUMNS order)."""
    n = table.num_rows
    table = table.set_column(table.schema.get_field_index("run"), "run", _constant(run, n))
    at = len(SAMPLE_COLUMNS)
    for name, kind in TAG_COLUMNS.items():
        if name not in tags:
            continue
        value = tags[name]
        column = (_constant(str(value), n) if kind == pa.string() else
                  pa.array(np.full(n, value), type=kind))
        table = table.add_column(at, name, column)
        at += 1
    return table


def _part_table(run: str, part: SamplePart) -> pa.Table | None:
    if part.log is not None:
        return _tagged(_samples_table(run, part.log), run, part.tags)
    if part.encoded:
        return _tagged(pq.read_table(io.BytesIO(part.encoded)), run, part.tags)
    return None


def samples_parquet(run: str, workload: str, samples: RequestLog | SampleSet) -> bytes:
    """One row per recorded request (see SAMPLE_COLUMNS), the run's name in every row; a
    SampleSet's parts one after another, each with its tag columns."""
    if isinstance(samples, RequestLog):
        table = _samples_table(run, samples)
        limit = samples.limit
    else:
        tables = [t for t in (_part_table(run, p) for p in samples.parts) if t is not None]
        table = (pa.concat_tables(tables, promote_options="default") if tables else
                 _samples_table(run, RequestLog(0, 0, 0, 0)))
        limit = samples.limit
    table = table.replace_schema_metadata({
        "aifb.run": run, "aifb.workload": workload, "aifb.rows": str(samples.rows),
        "aifb.requests": str(samples.seen), "aifb.limit": str(limit),
        "aifb.capped": "true" if samples.capped else "false"})
    return _write(table)

"""The per-second series and the per-request samples as Apache Parquet, for Spark SQL or pandas."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aifb.client.samples import RequestLog

__all__ = ["SAMPLE_COLUMNS", "samples_parquet", "series_parquet"]

_SCHEMA = pa.schema([
    ("run", pa.string()), ("second", pa.int32()), ("sent", pa.int64()),
    ("completed", pa.int64()), ("errors", pa.int64()), ("dropped", pa.int64()),
    ("in_flight", pa.int64()), ("target_rate", pa.float64()), ("achieved_rate", pa.float64()),
    ("latency_p50_s", pa.float64()), ("latency_p90_s", pa.float64()),
    ("latency_p99_s", pa.float64()), ("latency_max_s", pa.float64()),
    ("lag_p99_s", pa.float64()),
])
# samples.parquet: these columns, then one float64 column per workload value (docs/benchmarks.md).
SAMPLE_COLUMNS = ("run", "phase", "intended_time", "intended_s", "sent_s", "end_s", "latency_s",
                  "service_s", "send_delay_s", "ok", "status", "error", "ttft_s", "tpot_s",
                  "chunks")
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


def samples_parquet(run: str, workload: str, log: RequestLog) -> bytes:
    """One row per recorded request (see SAMPLE_COLUMNS), the run's name in every row."""
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
        "run": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)),
                                              pa.array([run])),
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
        name = f"value_{key}" if key in columns else key
        columns[name] = pa.array(values, mask=np.isnan(values), type=pa.float64())
    table = pa.table(columns)
    table = table.replace_schema_metadata({
        "aifb.run": run, "aifb.workload": workload, "aifb.rows": str(n),
        "aifb.requests": str(log.seen), "aifb.limit": str(log.limit),
        "aifb.capped": "true" if log.capped else "false"})
    return _write(table)

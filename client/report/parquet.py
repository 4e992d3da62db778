"""The per-second series (and sweep steps) as Apache Parquet, for Spark SQL or pandas."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["series_parquet"]

_SCHEMA = pa.schema([
    ("run", pa.string()), ("second", pa.int32()), ("sent", pa.int64()),
    ("completed", pa.int64()), ("errors", pa.int64()), ("dropped", pa.int64()),
    ("in_flight", pa.int64()), ("target_rate", pa.float64()), ("achieved_rate", pa.float64()),
    ("latency_p50_s", pa.float64()), ("latency_p90_s", pa.float64()),
    ("latency_p99_s", pa.float64()), ("latency_max_s", pa.float64()),
    ("lag_p99_s", pa.float64()),
])


def series_parquet(doc: dict[str, Any]) -> bytes:
    """One row per second of the run, the run's name in every row (runs concatenate)."""
    run = doc["benchmark"]["name"]
    rows = [{"run": run, **r} for r in doc["series"]]
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    table = table.replace_schema_metadata({"aifb.workload": doc["benchmark"]["workload"],
                                           "aifb.state": doc["benchmark"]["state"]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()

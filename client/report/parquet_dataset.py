"""Load results as Parquet: a per-second series and a per-partition summary, one file each per run.

    write_parquet(result, "runs", "run-42", partitions=load.partition_results)
    # -> runs/series/run-42.parquet, runs/summary/run-42.parquet

Every row carries `run_id` and `partition` (-1 is the merged whole run), so many runs written to
the same folder read back as one dataset: `spark.read.parquet("runs/series")` or
`pandas.read_parquet("runs/summary")`. Percentiles are in microseconds; each histogram is also
kept as its HdrHistogram V2 encoding (`*_hdr`), so partitions or seconds can be re-merged
exactly later. The schema is documented in docs/spark.md; it needs pyarrow only, no Spark.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.results import COUNTERS, HISTOGRAMS, LoadResult, SecondStats
from aifb.mesh.errors import InvalidArgument

__all__ = ["MERGED", "PERCENTILE_COLUMNS", "series_rows", "summary_rows", "write_parquet"]

MERGED = -1  # the `partition` of the merged result's rows
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PERCENTILE_COLUMNS = (("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p99_9_us", 99.9))


def _hist_columns(prefix: str, hist: LatencyHistogram) -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}_count": hist.count}
    for name, pct in PERCENTILE_COLUMNS:
        out[f"{prefix}_{name}"] = hist.percentile_us(pct)
    out[f"{prefix}_max_us"] = hist.max_us
    out[f"{prefix}_hdr"] = hist.encode().decode("ascii")
    return out


def _second_row(run_id: str, partition: int, sec: SecondStats) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": run_id, "partition": partition, "second": sec.second,
                           "sent": sec.sent, "completed": sec.completed, "errors": sec.errors,
                           "dropped": sec.dropped, "in_flight": sec.in_flight,
                           "target_rate": sec.target_rate}
    row.update(_hist_columns("latency", sec.latency))
    row.update(_hist_columns("lag", sec.lag))
    return row


def _parts(result: LoadResult, partitions: Sequence[LoadResult]) -> list[tuple[int, LoadResult]]:
    return [(MERGED, result), *enumerate(partitions)]


def series_rows(result: LoadResult, run_id: str,
                partitions: Sequence[LoadResult] = ()) -> list[dict[str, Any]]:
    """One row per (partition, second); the merged result's rows have partition -1."""
    return [_second_row(run_id, part, sec) for part, res in _parts(result, partitions)
            for sec in res.series]


def summary_rows(result: LoadResult, run_id: str,
                 partitions: Sequence[LoadResult] = ()) -> list[dict[str, Any]]:
    """One row per partition and one for the merged result: counters, rates, histograms."""
    rows = []
    for part, res in _parts(result, partitions):
        row: dict[str, Any] = {
            "run_id": run_id, "partition": part, "state": res.state.value, "reason": res.reason,
            "mode": res.mode, "workload": res.workload, "workers": res.workers,
            "users": res.users, "target_rate": res.target_rate, "measured_s": res.measured_s,
            "achieved_rate": res.achieved_rate}
        row.update({name: int(res.counters.get(name, 0)) for name in COUNTERS})
        for name in HISTOGRAMS:
            row.update(_hist_columns(name, res.histograms.get(name, LatencyHistogram())))
        row["errors_by_kind"] = sorted(res.errors_by_kind.items())
        row["values"] = sorted(res.values.items())
        row["extra"] = sorted(res.extra.items())
        rows.append(row)
    return rows


def _schemas() -> tuple[Any, Any]:
    import pyarrow as pa

    def hist(prefix: str) -> list[Any]:
        return [pa.field(f"{prefix}_count", pa.int64()),
                *(pa.field(f"{prefix}_{name}", pa.int64()) for name, _ in PERCENTILE_COLUMNS),
                pa.field(f"{prefix}_max_us", pa.int64()), pa.field(f"{prefix}_hdr", pa.string())]

    ids = [pa.field("run_id", pa.string()), pa.field("partition", pa.int32())]
    series = pa.schema([
        *ids, pa.field("second", pa.int32()),
        *(pa.field(n, pa.int64()) for n in ("sent", "completed", "errors", "dropped",
                                             "in_flight")),
        pa.field("target_rate", pa.float64()), *hist("latency"), *hist("lag")])
    summary = pa.schema([
        *ids, *(pa.field(n, pa.string()) for n in ("state", "reason", "mode", "workload")),
        pa.field("workers", pa.int32()), pa.field("users", pa.int32()),
        *(pa.field(n, pa.float64()) for n in ("target_rate", "measured_s", "achieved_rate")),
        *(pa.field(n, pa.int64()) for n in COUNTERS),
        *(f for name in HISTOGRAMS for f in hist(name)),
        pa.field("errors_by_kind", pa.map_(pa.string(), pa.int64())),
        pa.field("values", pa.map_(pa.string(), pa.float64())),
        pa.field("extra", pa.map_(pa.string(), pa.float64()))])
    return series, summary


def write_parquet(result: LoadResult, path: str | os.PathLike[str], run_id: str, *,
                  partitions: Sequence[LoadResult] = ()) -> dict[str, Path]:
    """Write `<path>/series/<run_id>.parquet` and `<path>/summary/<run_id>.parquet`.

    `partitions` are the per-partition results the merged `result` came from (rows 0..n-1);
    without them only the merged rows (partition -1) are written. Files are written whole to a
    temporary name and renamed, so a reader never sees half a file.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidArgument("run_id must be 1-128 letters, digits, '.', '_' or '-', starting "
                              f"with a letter or digit; got {run_id!r}", field="run_id")
    import pyarrow as pa
    import pyarrow.parquet as pq

    series_schema, summary_schema = _schemas()
    out: dict[str, Path] = {}
    for table, schema, rows in (("series", series_schema, series_rows(result, run_id, partitions)),
                                ("summary", summary_schema,
                                 summary_rows(result, run_id, partitions))):
        folder = Path(path) / table
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{run_id}.parquet"
        tmp = folder / f".{run_id}.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        tmp.replace(target)
        out[table] = target
    return out

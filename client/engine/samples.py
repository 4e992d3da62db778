"""Per-request samples: one row per completed request, bounded, kept in typed arrays.

Off by default. When a run asks for them, the engine's `Recorder` calls `RequestLog.add` once
per completed request (warm-up and cool-down included; the phase is derived from the intended
send time when the rows are exported). `add` only appends integers to `array.array` columns
(and one float per workload value), so recording costs little; past `limit` rows a request is
only counted (`seen`), and the report says how many rows were kept of how many requests. Rows
come in completion order; when capped, the first `limit` completions are kept.

Times are `perf_counter_ns` integers; `aifb.client.report.parquet.samples_parquet` turns them
into seconds from the run's start and a wall-clock send time (`wall_start_ns`, one clock reading
taken at the start, is the wall time of `start_ns`).

A run made of several engine runs (a sweep's steps, a Spark run's partitions) keeps a
`SampleSet`: one `SamplePart` per engine run, each with the constant columns its rows carry
(`step`, `step_name`, `target_rate`; or `partition`), and one `limit` over them all. A part holds
its `RequestLog` (in this process) or its rows already encoded as Parquet (built on the Spark
executor that ran it); `samples_parquet` writes them all into one file.
"""

from __future__ import annotations

import math
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from aifb.client.engine.workload import Outcome

__all__ = ["DEFAULT_SAMPLE_LIMIT", "MAX_SAMPLE_LIMIT", "RequestLog", "SamplePart", "SampleSet",
           "split_limit"]

DEFAULT_SAMPLE_LIMIT = 1_000_000  # rows: 56 bytes each, plus 8 per workload value
MAX_SAMPLE_LIMIT = 10_000_000


class RequestLog:
    """Append-only columns of per-request facts; at most `limit` rows."""

    __slots__ = ("_errors", "_values", "chunks", "end", "error", "first", "intended", "limit",
                 "seen", "sent", "start_ns", "status", "wall_start_ns", "window_end_ns",
                 "window_start_ns")

    def __init__(self, limit: int, start_ns: int, window_start_ns: int,
                 window_end_ns: int) -> None:
        self.limit = limit
        self.seen = 0  # requests offered to the log (kept or not)
        self.start_ns = start_ns
        self.wall_start_ns = time.time_ns() - (time.perf_counter_ns() - start_ns)
        self.window_start_ns = window_start_ns
        self.window_end_ns = window_end_ns
        self.intended = array("q")
        self.sent = array("q")  # the wire send the workload reported; 0 = unknown
        self.end = array("q")
        self.first = array("q")  # first chunk/token; 0 = not streaming
        self.chunks = array("q")
        self.status = array("q")
        self.error = array("q")  # index into the error kinds; 0 = ok
        self._errors: dict[str, int] = {"": 0}
        self._values: dict[str, array[float]] = {}

    @property
    def rows(self) -> int:
        return len(self.intended)

    @property
    def capped(self) -> bool:
        return self.seen > self.limit

    def add(self, intended_ns: int, out: Outcome, end_ns: int) -> None:
        n = self.seen
        self.seen = n + 1
        if n >= self.limit:
            return
        self.intended.append(intended_ns)
        self.sent.append(out.sent_ns)
        self.end.append(end_ns)
        self.first.append(out.first_chunk_ns)
        self.chunks.append(len(out.chunk_ns) if out.chunk_ns else 0)
        self.status.append(out.status)
        if out.ok:
            self.error.append(0)
        else:
            kind = out.error or "error"
            code = self._errors.get(kind)
            if code is None:
                code = self._errors[kind] = len(self._errors)
            self.error.append(code)
        values, columns = out.values, self._values
        if values:
            for key, value in values.items():
                column = columns.get(key)
                if column is None:  # a value first seen now: earlier rows lack it
                    columns[key] = column = array("d", [math.nan] * n)
                column.append(value)
            if len(columns) > len(values):  # this row lacks some value: pad its column
                for column in columns.values():
                    if len(column) == n:
                        column.append(math.nan)
        elif columns:
            for column in columns.values():
                column.append(math.nan)

    @property
    def error_kinds(self) -> list[str]:
        """Error kinds by code (code 0, the first, is "": no error)."""
        return sorted(self._errors, key=self._errors.__getitem__)

    @property
    def values(self) -> dict[str, array[float]]:
        """One column per workload value (NaN where a row lacks it)."""
        return self._values

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "requests": self.seen, "limit": self.limit,
                "capped": self.capped}


Tag = int | float | str


@dataclass(slots=True)
class SamplePart:
    """One engine run's rows within a SampleSet, and the constant columns its rows carry."""

    tags: dict[str, Tag]
    log: RequestLog | None = None  # the rows, in this process
    encoded: bytes = b""  # or the rows as Parquet (run column blank), built where they ran
    rows: int = 0  # rows in `encoded`; a `log` counts its own
    requests: int = 0  # requests offered (kept or not); a `log` counts its own
    error: str = ""  # why `encoded` is missing though rows were recorded

    def __post_init__(self) -> None:
        if self.log is not None:
            self.rows, self.requests = self.log.rows, self.log.seen


@dataclass(slots=True)
class SampleSet:
    """The per-request rows of several engine runs that one samples.parquet holds."""

    limit: int  # rows kept at most over all parts
    parts: list[SamplePart] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def seen(self) -> int:
        return sum(p.requests for p in self.parts)

    @property
    def capped(self) -> bool:
        return self.seen > self.rows

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "requests": self.seen, "limit": self.limit,
                               "capped": self.capped, "parts": len(self.parts)}
        errors = [p.error for p in self.parts if p.error]
        if errors:
            out["part_errors"] = errors
        return out


def split_limit(limit: int, parts: int) -> list[int]:
    """`limit` rows shared as evenly as possible by `parts` recorders (the first get the rest)."""
    base, rest = divmod(limit, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]

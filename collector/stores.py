"""Local stores: the latest value of each series, a bounded log ring and a bounded trace store."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aifb.collector.model import Labels, LogRecord, SeriesOut, SpanRecord

__all__ = ["LatestStore", "LatestValue", "LogStore", "TraceStore"]


@dataclass(slots=True)
class LatestValue:
    value: float
    timestamp_ms: int
    kind: int
    help: str


class LatestStore:
    """The newest sample of every series seen (what `/metrics` serves), up to `max_series`."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.series: dict[Labels, LatestValue] = {}
        self.refused = 0

    def update(self, batch: Iterable[SeriesOut]) -> None:
        series = self.series
        for s in batch:
            if not s.timestamps:
                continue
            old = series.get(s.labels)
            if old is None:
                if len(series) >= self.max_series:
                    self.refused += 1
                    continue
                series[s.labels] = LatestValue(s.values[-1], s.timestamps[-1], s.kind, s.help)
            elif s.timestamps[-1] >= old.timestamp_ms:
                old.value = s.values[-1]
                old.timestamp_ms = s.timestamps[-1]

    def snapshot(self) -> list[tuple[Labels, LatestValue]]:
        """A copy safe to read from another thread (dict.copy runs under the GIL, whole)."""
        return list(self.series.copy().items())


class LogStore:
    """The most recent `max_lines` log lines, for QueryLogs when no Loki is configured."""

    def __init__(self, max_lines: int) -> None:
        self.lines: deque[LogRecord] = deque(maxlen=max(max_lines, 0))
        self.enabled = max_lines > 0

    def extend(self, records: Iterable[LogRecord]) -> None:
        if self.enabled:
            self.lines.extend(records)

    def query(self, matchers: Mapping[str, str], start_ns: int, end_ns: int, limit: int,
              contains: str = "") -> list[LogRecord]:
        """The newest `limit` lines matching every label and the time range, oldest first."""
        wanted = set(matchers.items())
        found: list[LogRecord] = []
        for rec in reversed(self.lines):
            if len(found) >= limit:
                break
            if start_ns and rec.timestamp_ns < start_ns:
                continue
            if end_ns and rec.timestamp_ns >= end_ns:
                continue
            if contains and contains not in rec.line:
                continue
            if wanted and not wanted.issubset(rec.labels):
                continue
            found.append(rec)
        found.sort(key=lambda r: r.timestamp_ns)
        return found


class TraceStore:
    """Recent spans grouped by trace id; the oldest traces go first when `max_spans` is passed."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self.traces: OrderedDict[str, list[SpanRecord]] = OrderedDict()
        self.span_count = 0

    def add(self, spans: Iterable[SpanRecord]) -> None:
        if self.max_spans <= 0:
            return
        for span in spans:
            bucket = self.traces.get(span.trace_id)
            if bucket is None:
                bucket = self.traces[span.trace_id] = []
            bucket.append(span)
            self.span_count += 1
        while self.span_count > self.max_spans and self.traces:
            _, evicted = self.traces.popitem(last=False)
            self.span_count -= len(evicted)

    def get(self, trace_id: str) -> list[SpanRecord]:
        return sorted(self.traces.get(trace_id.lower(), ()), key=lambda s: s.start_ns)

"""Local stores: the latest value of each series, a bounded log ring and a bounded trace store."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import ge
from typing import Any

from aifb.collector.model import Labels, LogRecord, SeriesOut, SpanRecord
from aifb.collector.packed import label_key

__all__ = ["LatestStore", "LatestValue", "LogStore", "TraceStore"]


@dataclass(slots=True)
class LatestValue:
    value: float
    timestamp_ms: int
    kind: int
    help: str


class LatestStore:
    """The newest sample of every series seen (what `/metrics` serves), up to `max_series`.

    Series are keyed by their encoded label set (`aifb.collector.packed.encode_labels`: bytes,
    whose hash Python keeps), in dicts of values, timestamps and (labels, type, help), so that
    a batch of known series, all newer than what is kept, is stored by two `dict.update`s."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.refused = 0
        self._values: dict[bytes, float] = {}
        self._stamps: dict[bytes, int] = {}
        self._meta: dict[bytes, tuple[Labels, int, str]] = {}

    def __len__(self) -> int:
        return len(self._values)

    @property
    def series(self) -> dict[Labels, LatestValue]:
        """Every kept series (a copy)."""
        return dict(self.snapshot())

    def _put(self, key: bytes, labels: Labels, value: float, ts: int, kind: int,
             help_: str) -> None:
        old = self._stamps.get(key)
        if old is None:
            if len(self._stamps) >= self.max_series:
                self.refused += 1
                return
            self._meta[key] = (labels, kind, help_)  # first: snapshot() reads values, then meta
        elif ts < old:
            return
        self._stamps[key] = ts
        self._values[key] = value

    def update(self, batch: Iterable[SeriesOut]) -> None:
        for s in batch:
            if s.timestamps:
                self._put(label_key(s.labels), s.labels, s.values[-1], s.timestamps[-1],
                          s.kind, s.help)

    def update_packed(self, keys: list[bytes], labels: list[Labels], timestamps: list[int],
                      values: list[float], series: Sequence[Any]) -> None:
        """The same from the fast paths' columns: the last sample of each series, keyed by
        its encoded label set; `series` (with `.type` and `.help`) is read only for series
        not yet stored."""
        olds = list(map(self._stamps.get, keys))
        if None not in olds and len(set(keys)) == len(keys) \
                and all(map(ge, timestamps, olds)):  # type: ignore[arg-type]  # None excluded
            self._stamps.update(zip(keys, timestamps, strict=True))
            self._values.update(zip(keys, values, strict=True))
            return
        for i, (key, ts, value) in enumerate(zip(keys, timestamps, values, strict=True)):
            self._put(key, labels[i], value, ts, series[i].type, series[i].help)

    def matching(self, labels: Mapping[str, str], names: frozenset[str], limit: int
                 ) -> tuple[list[tuple[Labels, LatestValue]], bool]:
        """The kept series whose labels include `labels` (and whose `__name__` is in `names`,
        when given): at most `limit`, and whether more matched."""
        wanted = tuple(labels.items())
        out: list[tuple[Labels, LatestValue]] = []
        for series, value in self.snapshot():
            have = dict(series)
            if names and have.get("__name__") not in names:
                continue
            if all(have.get(k) == v for k, v in wanted):
                if len(out) == limit:
                    return out, True
                out.append((series, value))
        return out, False

    def snapshot(self) -> list[tuple[Labels, LatestValue]]:
        """A copy safe to read from another thread (each dict.copy runs under the GIL, whole;
        values are copied first, and a series' meta is stored before its first value)."""
        values = self._values.copy()
        stamps = self._stamps.copy()
        meta = self._meta.copy()
        out = []
        for key, value in values.items():
            labels, kind, help_ = meta[key]
            out.append((labels, LatestValue(value, stamps.get(key, 0), kind, help_)))
        return out


class LogStore:
    """The most recent `max_lines` log lines, for QueryLogs when no Loki is configured.

    Kept as the streams arrived (labels once, columns of times and lines), so storing a batch
    makes no object per line; `extend` with records still works. Lines are `str`, or UTF-8
    `bytes` as the fast ingest path keeps them (decoded when read)."""

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max(max_lines, 0)
        self.enabled = max_lines > 0
        # (owner, labels, times, lines): the owner is the user whose token pushed the stream.
        self._chunks: deque[tuple[str, Labels, list[int], list[str] | list[bytes]]] = deque()
        self._count = 0

    @property
    def lines(self) -> list[LogRecord]:
        """Every kept line, oldest first (for tests and small stores)."""
        return [LogRecord(labels, t, _text(line)) for _, labels, stamps, texts in self._chunks
                for t, line in zip(stamps, texts, strict=True)]

    def extend(self, records: Iterable[LogRecord], owner: str = "") -> None:
        if self.enabled:
            for r in records:
                self.add_stream(r.labels, [r.timestamp_ns], [r.line], owner)

    def add_stream(self, labels: Labels, stamps: list[int],
                   lines: list[str] | list[bytes], owner: str = "") -> None:
        if not self.enabled or not stamps:
            return
        if len(stamps) > self.max_lines:
            stamps, lines = stamps[-self.max_lines:], lines[-self.max_lines:]
        self._chunks.append((owner, labels, stamps, lines))
        self._count += len(stamps)
        while self._count > self.max_lines:
            old_owner, old_labels, old_stamps, old_lines = self._chunks[0]
            extra = self._count - self.max_lines
            if extra >= len(old_stamps):
                self._chunks.popleft()
                self._count -= len(old_stamps)
            else:
                self._chunks[0] = (old_owner, old_labels, old_stamps[extra:], old_lines[extra:])
                self._count -= extra

    def query(self, matchers: Mapping[str, str], start_ns: int, end_ns: int, limit: int,
              contains: str = "", owner: str | None = None) -> list[LogRecord]:
        """The newest `limit` lines matching every label and the time range, oldest first;
        with `owner`, only lines that user's tokens pushed."""
        wanted = set(matchers.items())
        found: list[LogRecord] = []
        for pusher, labels, stamps, texts in reversed(self._chunks):
            if owner is not None and pusher != owner:
                continue
            if wanted and not wanted.issubset(labels):
                continue
            for t, raw in zip(reversed(stamps), reversed(texts), strict=True):
                if len(found) >= limit:
                    break
                if start_ns and t < start_ns:
                    continue
                if end_ns and t >= end_ns:
                    continue
                line = _text(raw)
                if contains and contains not in line:
                    continue
                found.append(LogRecord(labels, t, line))
            if len(found) >= limit:
                break
        found.reverse()  # arrival order, which a stable sort keeps among equal times
        found.sort(key=lambda r: r.timestamp_ns)
        return found


def _text(line: object) -> str:
    return line.decode() if isinstance(line, bytes) else str(line)


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

    def get(self, trace_id: str, user: str | None = None, operator: str = ""
            ) -> list[SpanRecord]:
        """The trace's spans by start time; with `user`, only if the trace is theirs, else
        none (another user's trace is as absent as an unknown one). A trace is the users' its
        trusted spans name (`enduser.id`); with trusted spans naming nobody, the operator's;
        with no trusted span at all, the user's who exported every one of its spans."""
        spans = self.traces.get(trace_id.lower(), ())
        if user is not None and user not in _trace_owners(spans, operator):
            return []
        return sorted(spans, key=lambda s: s.start_ns)


def _trace_owners(spans: Iterable[SpanRecord], operator: str) -> set[str]:
    trusted = [s for s in spans if not s.exported_by]
    if trusted:
        named = {s.attributes["enduser.id"] for s in trusted if "enduser.id" in s.attributes}
        return named or {operator}
    exporters = {s.exported_by for s in spans}
    return exporters if len(exporters) == 1 else set()

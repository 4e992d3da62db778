"""Validate agent batches and turn them into forwardable series and log streams.

Structural faults (sequence 0, unequal lengths, bad or empty names, too many series or labels)
raise InvalidArgument naming the field; out-of-range timestamps only reject those samples or
lines, which the acknowledgement reports as partial success.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from aifb.collector.config import CollectorConfig
from aifb.collector.model import Labels, LogBatchIn, MetricBatchIn, SeriesOut
from aifb.collector.remote_write import TimeWindow, is_clean, normalize_samples
from aifb.mesh.errors import InvalidArgument

__all__ = ["PreparedLogs", "PreparedMetrics", "Validator"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAME_CACHE_LIMIT = 100_000


@dataclass(slots=True)
class PreparedMetrics:
    series: list[SeriesOut]
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    clamped: int = 0
    deduplicated: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PreparedLogs:
    # Lines are `str`, or UTF-8 `bytes` from the fast path (`fast_logs`).
    streams: list[tuple[Labels, list[int], list[str] | list[bytes]]]
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)


# An agent names itself (e.g. "monitor@node/abc123"); its numbers count batches from 1.
MAX_AGENT_ID_CHARS = 256
MAX_SEQUENCE = 2**63 - 1

class Validator:
    """Checks batches against the config's limits; remembers names already found valid."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self._metric_names: set[str] = set()
        self._label_names: set[str] = set()
        self._series_labels: dict[Labels, dict[tuple[object, ...], Labels]] = {}

    def _metric_name(self, name: str, index: int) -> None:
        if name in self._metric_names:
            return
        if not name or not _METRIC_NAME.fullmatch(name):
            where = f"batch.series[{index}].name"
            raise InvalidArgument(f"{where}: invalid metric name {name!r} (expected "
                                  "[a-zA-Z_:][a-zA-Z0-9_:]*)", field=where)
        if len(self._metric_names) >= _NAME_CACHE_LIMIT:
            self._metric_names.clear()
        self._metric_names.add(name)

    def _labels(self, labels: dict[str, str], where: str | int) -> None:
        """`where` is a field path, or a series index (formatted only when there is a fault)."""
        known = self._label_names
        if not known.issuperset(labels):
            field = where if isinstance(where, str) else f"batch.series[{where}].labels"
            for name in labels:
                if not name or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                    raise InvalidArgument(f"{field}: invalid label name {name!r} (expected "
                                          "[a-zA-Z_][a-zA-Z0-9_]*, not starting with '__')",
                                          field=field)
            if len(known) >= _NAME_CACHE_LIMIT:
                known.clear()
            known.update(labels)
        if labels and max(map(len, labels.values())) > self.config.max_label_value_bytes:
            field = where if isinstance(where, str) else f"batch.series[{where}].labels"
            raise InvalidArgument(f"{field}: a label value is longer than "
                                  f"{self.config.max_label_value_bytes} characters", field=field)

    def _header(self, agent_id: str, sequence: int, resource: dict[str, str]) -> None:
        if not agent_id:
            raise InvalidArgument("batch.agent_id is empty", field="batch.agent_id")
        if len(agent_id) > MAX_AGENT_ID_CHARS or not agent_id.isprintable():
            raise InvalidArgument(f"batch.agent_id must be at most {MAX_AGENT_ID_CHARS} "
                                  "printable characters", field="batch.agent_id")
        if not 0 < sequence <= MAX_SEQUENCE:
            raise InvalidArgument("batch.sequence must be 1 or more (0 is not a sequence number) "
                                  f"and at most {MAX_SEQUENCE}", field="batch.sequence")
        self._labels(resource, "batch.resource.attributes")

    def _series_label_set(self, name: str, labels: dict[str, str], resource: dict[str, str],
                          index: int) -> Labels:
        """Validate one series' name and labels; its sorted label set with `__name__`."""
        self._metric_name(name, index)
        merged = {**resource, **labels}
        limit = self.config.max_labels_per_series
        if len(merged) >= limit:
            raise InvalidArgument(f"batch.series[{index}]: {len(merged) + 1} labels, more than "
                                  f"the limit {limit}", field=f"batch.series[{index}].labels")
        if labels:
            self._labels(labels, index)
        merged["__name__"] = name
        return tuple(sorted(merged.items()))

    def metrics(self, batch: MetricBatchIn, now_ms: int | None = None) -> PreparedMetrics:
        cfg = self.config
        self._header(batch.agent_id, batch.sequence, batch.resource)
        if len(batch.series) > cfg.max_series_per_batch:
            raise InvalidArgument(f"batch.series: {len(batch.series)} series in one batch, more "
                                  f"than the limit {cfg.max_series_per_batch}",
                                  field="batch.series")
        window = TimeWindow.from_config(cfg, now_ms)
        resource = batch.resource
        out = PreparedMetrics(series=[])
        reasons: set[str] = set()
        # Label sets already checked, per resource: (name, *label items) -> sorted labels.
        if len(self._series_labels) > _NAME_CACHE_LIMIT // 100:
            self._series_labels.clear()
        known = self._series_labels.setdefault(tuple(resource.items()), {})
        if len(known) > _NAME_CACHE_LIMIT:
            known.clear()
        for i, s in enumerate(batch.series):
            ts, values = s.timestamps, s.values
            if len(ts) != len(values):
                raise InvalidArgument(f"batch.series[{i}]: {len(ts)} timestamps but {len(values)} "
                                      "values", field=f"batch.series[{i}].values")
            key: tuple[object, ...] = (s.name, *s.labels.items())
            labels = known.get(key)
            if labels is None:
                labels = known[key] = self._series_label_set(s.name, s.labels, resource, i)
            out.received += len(ts)
            if not is_clean(ts, window):
                ts, values, rejected, clamped, dedup, reason = normalize_samples(ts, values,
                                                                                 window)
                if reason:
                    out.rejected += rejected
                    reasons.add(f"{s.name}: {reason}")
                out.clamped += clamped
                out.deduplicated += dedup
            if ts:
                out.series.append(SeriesOut(labels, ts, values, s.kind, s.help))
                out.accepted += len(ts)
        if out.received > cfg.max_samples_per_batch:
            raise InvalidArgument(f"batch.series: {out.received} samples in one batch, more than "
                                  f"the limit {cfg.max_samples_per_batch}", field="batch.series")
        out.reasons = sorted(reasons)
        return out

    def logs(self, batch: LogBatchIn, now_ns: int | None = None) -> PreparedLogs:
        cfg = self.config
        self._header(batch.agent_id, batch.sequence, batch.resource)
        if len(batch.streams) > cfg.max_streams_per_batch:
            raise InvalidArgument(f"batch.streams: {len(batch.streams)} streams, more than the "
                                  f"limit {cfg.max_streams_per_batch}", field="batch.streams")
        now = time.time_ns() if now_ns is None else now_ns
        oldest = now - int(cfg.max_log_age_seconds * 1e9)
        newest = now + int(cfg.future_skew_seconds * 1e9)
        out = PreparedLogs(streams=[])
        reasons: set[str] = set()
        for i, st in enumerate(batch.streams):
            ts, lines = st.timestamps, st.lines
            if len(ts) != len(lines):
                raise InvalidArgument(f"batch.streams[{i}]: {len(ts)} timestamps but {len(lines)} "
                                      "lines", field=f"batch.streams[{i}].lines")
            self._labels(st.labels, f"batch.streams[{i}].labels")
            merged = {**batch.resource, **st.labels}
            if not merged:
                raise InvalidArgument(f"batch.streams[{i}]: a log stream needs at least one label",
                                      field=f"batch.streams[{i}].labels")
            if len(merged) > cfg.max_labels_per_series:
                raise InvalidArgument(f"batch.streams[{i}]: {len(merged)} labels, more than the "
                                      f"limit {cfg.max_labels_per_series}",
                                      field=f"batch.streams[{i}].labels")
            out.received += len(ts)
            if ts and (min(ts) < oldest or max(ts) > newest
                       or max(map(len, lines)) > cfg.max_line_bytes):
                keep = [(t, line) for t, line in zip(ts, lines, strict=True)
                        if oldest <= t <= newest and len(line) <= cfg.max_line_bytes]
                out.rejected += len(ts) - len(keep)
                reasons.add(f"streams[{i}]: lines too long or timestamps out of range")
                ts, lines = [k[0] for k in keep], [k[1] for k in keep]
            if ts:
                out.streams.append((tuple(sorted(merged.items())), ts, lines))
                out.accepted += len(ts)
        if out.received > cfg.max_lines_per_batch:
            raise InvalidArgument(f"batch.streams: {out.received} lines, more than the limit "
                                  f"{cfg.max_lines_per_batch}", field="batch.streams")
        out.reasons = sorted(reasons)
        return out

"""The fast ingest path for logs: a PushLogsRequest's wire bytes to validated streams of bytes.

An agent's `PushLogsRequest` is parsed with the wire-compatible view `PushLogsRequestView`
(`aifb.wire.telemetry_view`), whose `lines` are `bytes`: no UTF-8 decode into a `str` per line.
The lines stay bytes from there on (the Loki forwarder and the local log store take them as
they are). Each stream's lines are checked for UTF-8 at once (joined with a newline, which no
multi-byte sequence can span, so the join is valid exactly when every line is). The view is
the real message field for field but for the lines' type, so it reads any batch exactly as the
real message would. The checks, counts and error messages are the `Validator`'s; a batch that
has a line longer than `max_line_bytes` in bytes (the limit is counted in characters, as the
general path does) or that the view cannot parse takes the general path: the real messages and
`Validator.logs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from aifb.collector.convert import labels_dict, log_batch_from_proto
from aifb.collector.model import Labels, LogBatchIn
from aifb.collector.validate import PreparedLogs, Validator
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2
from aifb.wire import telemetry_view_pb2

__all__ = ["LogView", "log_batch_from_wire", "prepare_logs", "read_log_view"]


@dataclass(slots=True)
class LogView:
    """A batch parsed by the view messages: `streams` holds each stream's (labels map,
    timestamps, lines as bytes)."""

    agent_id: str
    sequence: int
    resource: dict[str, str]
    streams: list[tuple[Any, list[int], list[bytes]]]


def log_batch_from_wire(data: bytes) -> LogBatchIn:
    """A serialized PushLogsRequest, parsed in full (the general path)."""
    try:
        request = collector_pb2.PushLogsRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"batch: not a valid PushLogsRequest ({exc})",
                              field="batch") from None
    return log_batch_from_proto(request.batch)


def read_log_view(data: bytes) -> LogView | None:
    """The view of a serialized PushLogsRequest, or None when it cannot be parsed (the general
    path reports why). Raises InvalidArgument for a line that is not UTF-8, which the real
    message refuses to parse."""
    try:
        batch = telemetry_view_pb2.PushLogsRequestView.FromString(data).batch
    except DecodeError:
        return None
    streams: list[tuple[Any, list[int], list[bytes]]] = []
    for i, st in enumerate(batch.streams):
        lines: list[bytes] = st.lines[:]
        joined = b"\n".join(lines)
        if not joined.isascii():
            try:
                joined.decode()
            except UnicodeDecodeError as exc:
                where = f"batch.streams[{i}].lines"
                raise InvalidArgument(f"{where}: a line is not valid UTF-8 ({exc.reason})",
                                      field=where) from None
        streams.append((st.labels, st.timestamps_ns[:], lines))
    return LogView(batch.agent_id, batch.sequence, labels_dict(batch.resource.attributes),
                   streams)


def prepare_logs(validator: Validator, view: LogView, now_ns: int | None = None
                 ) -> PreparedLogs | None:
    """`Validator.logs` for a view: the same faults, counts and reasons, with lines as bytes;
    None when the general path must decide (a line longer than the limit in bytes)."""
    cfg = validator.config
    resource = view.resource
    validator._header(view.agent_id, view.sequence, resource)
    if len(view.streams) > cfg.max_streams_per_batch:
        raise InvalidArgument(f"batch.streams: {len(view.streams)} streams, more than the "
                              f"limit {cfg.max_streams_per_batch}", field="batch.streams")
    now = time.time_ns() if now_ns is None else now_ns
    oldest = now - int(cfg.max_log_age_seconds * 1e9)
    newest = now + int(cfg.future_skew_seconds * 1e9)
    out = PreparedLogs(streams=[])
    reasons: set[str] = set()
    for i, (label_map, ts, lines) in enumerate(view.streams):
        if len(ts) != len(lines):
            raise InvalidArgument(f"batch.streams[{i}]: {len(ts)} timestamps but {len(lines)} "
                                  "lines", field=f"batch.streams[{i}].lines")
        labels = labels_dict(label_map)
        validator._labels(labels, f"batch.streams[{i}].labels")
        merged = {**resource, **labels}
        if not merged:
            raise InvalidArgument(f"batch.streams[{i}]: a log stream needs at least one label",
                                  field=f"batch.streams[{i}].labels")
        if len(merged) > cfg.max_labels_per_series:
            raise InvalidArgument(f"batch.streams[{i}]: {len(merged)} labels, more than the "
                                  f"limit {cfg.max_labels_per_series}",
                                  field=f"batch.streams[{i}].labels")
        out.received += len(ts)
        if not ts:
            continue
        if max(map(len, lines)) > cfg.max_line_bytes:
            return None
        # Agents stamp a whole read at once: the stamps come as a few runs, which sorting
        # passes over once (cheaper than a min and a max).
        ordered = sorted(ts)
        if ordered[0] < oldest or ordered[-1] > newest:
            keep = [(t, line) for t, line in zip(ts, lines, strict=True)
                    if oldest <= t <= newest]
            out.rejected += len(ts) - len(keep)
            reasons.add(f"streams[{i}]: lines too long or timestamps out of range")
            ts, lines = [k[0] for k in keep], [k[1] for k in keep]
        if ts:
            key: Labels = tuple(sorted(merged.items()))
            out.streams.append((key, ts, lines))
            out.accepted += len(ts)
    if out.received > cfg.max_lines_per_batch:
        raise InvalidArgument(f"batch.streams: {out.received} lines, more than the limit "
                              f"{cfg.max_lines_per_batch}", field="batch.streams")
    out.reasons = sorted(reasons)
    return out

"""Agent batches from their protobuf messages to the collector's domain records."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from aifb.collector.model import LogBatchIn, LogStreamIn, MetricBatchIn, SeriesIn
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import collector_pb2, telemetry_pb2

__all__ = ["labels_dict", "log_batch_from_proto", "metric_batch_from_proto",
           "metric_batch_from_wire"]


def labels_dict(mapping: Any) -> dict[str, str]:
    # Indexing a upb map key by key is about twice as fast as dict(mapping).
    return {k: mapping[k] for k in mapping}


def metric_batch_from_proto(batch: telemetry_pb2.MetricBatch) -> MetricBatchIn:
    return MetricBatchIn(
        agent_id=batch.agent_id, sequence=batch.sequence,
        resource=labels_dict(batch.resource.attributes),
        # Slicing a repeated scalar field copies it about three times faster than list().
        series=[SeriesIn(s.name, labels_dict(s.labels), s.timestamps_ms[:], s.values[:], s.type,
                         s.help) for s in batch.series])


def metric_batch_from_wire(data: bytes) -> MetricBatchIn:
    """A serialized PushMetricsRequest, parsed in full (the general path)."""
    try:
        request = collector_pb2.PushMetricsRequest.FromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"batch: not a valid PushMetricsRequest ({exc})",
                              field="batch") from None
    return metric_batch_from_proto(request.batch)


def log_batch_from_proto(batch: telemetry_pb2.LogBatch) -> LogBatchIn:
    return LogBatchIn(
        agent_id=batch.agent_id, sequence=batch.sequence,
        resource=labels_dict(batch.resource.attributes),
        streams=[LogStreamIn(labels_dict(s.labels), s.timestamps_ns[:], s.lines[:])
                 for s in batch.streams])

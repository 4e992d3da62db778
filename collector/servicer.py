"""gRPC adapters: CollectorService and OTLP TraceService/Export over the domain `Ingest`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from aifb.collector.convert import labels_dict as _labels
from aifb.collector.convert import log_batch_from_proto, metric_batch_from_proto
from aifb.collector.ingest import Ingest
from aifb.collector.model import PushOutcome, SpanRecord
from aifb.collector.stats import Stats
from aifb.mesh.access import caller, operator_caller, operator_name, user_caller
from aifb.mesh.bounds import check_matchers, check_text
from aifb.mesh.errors import InvalidArgument, NotFound
from aifb.mesh.server import ServiceBinding
from aifb.v1 import collector_pb2, collector_pb2_grpc

__all__ = [
    "CollectorServicer",
    "OtlpTraceServicer",
    "collector_bindings",
    "log_batch_from_proto",
    "metric_batch_from_proto",
    "spans_from_otlp",
    "stats_to_proto",
]

Context = grpc.aio.ServicerContext[Any, Any]
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def stats_to_proto(stats: Stats, queue_depth: int) -> collector_pb2.CollectorStats:
    return collector_pb2.CollectorStats(
        metric_samples_received=stats.metric_samples_received,
        metric_samples_forwarded=stats.metric_samples_forwarded,
        metric_samples_rejected=stats.metric_samples_rejected
        + stats.metric_samples_remote_rejected,
        metric_batches_duplicate=stats.metric_batches_duplicate,
        log_lines_received=stats.log_lines_received,
        log_lines_forwarded=stats.log_lines_forwarded,
        log_lines_rejected=stats.log_lines_rejected + stats.log_lines_remote_rejected,
        log_batches_duplicate=stats.log_batches_duplicate,
        queue_depth=queue_depth,
        spans_received=stats.spans_received,
        agents_last_sequence=stats.agents_last_sequence)


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class CollectorServicer(collector_pb2_grpc.CollectorServiceServicer):
    """Converts proto <-> domain and calls `Ingest`; one response per request, in order."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def PushMetrics(
            self, request_iterator: AsyncIterator[collector_pb2.PushMetricsRequest | bytes],
            context: Context) -> AsyncIterator[collector_pb2.PushMetricsResponse]:
        """Mounted by `collector_bindings`, requests arrive as their wire bytes (parsed by the
        ingest's fast path); a caller passing messages gets the same answers."""
        who = caller()
        async for request in request_iterator:
            if isinstance(request, bytes):
                out = await self.ingest.push_metrics_wire(request, who)
            else:
                out = await self.ingest.push_metrics(metric_batch_from_proto(request.batch), who)
            yield collector_pb2.PushMetricsResponse(
                sequence=out.sequence, duplicate=out.duplicate, accepted_samples=out.accepted,
                rejected_samples=out.rejected, error_message=out.error_message)

    async def PushLogs(
            self, request_iterator: AsyncIterator[collector_pb2.PushLogsRequest | bytes],
            context: Context) -> AsyncIterator[collector_pb2.PushLogsResponse]:
        """Mounted by `collector_bindings`, requests arrive as their wire bytes (read by the
        ingest's fast path, `fast_logs`); a caller passing messages gets the same answers."""
        who = caller()
        async for request in request_iterator:
            out: PushOutcome
            if isinstance(request, bytes):
                out = await self.ingest.push_logs_wire(request, who)
            else:
                out = await self.ingest.push_logs(log_batch_from_proto(request.batch), who)
            yield collector_pb2.PushLogsResponse(
                sequence=out.sequence, duplicate=out.duplicate, accepted_lines=out.accepted,
                rejected_lines=out.rejected, error_message=out.error_message)

    async def QueryLogs(self, request: collector_pb2.QueryLogsRequest,
                        context: Context) -> collector_pb2.QueryLogsResponse:
        """The caller's own lines: those their tokens (and their jobs' tokens) pushed."""
        user = user_caller().user
        check_matchers("labels", request.labels)
        check_text("contains", request.contains)
        limit = request.limit or 1000
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000 (0 means 1000), got {request.limit}",
                                  field="limit")
        start = _ns(request.start_time) if request.HasField("start_time") else 0
        end = _ns(request.end_time) if request.HasField("end_time") else 0
        if start and end and end < start:
            raise InvalidArgument("end_time is before start_time", field="end_time")
        found = self.ingest.logs.query(_labels(request.labels), start, end, limit,
                                       request.contains, owner=user)
        return collector_pb2.QueryLogsResponse(entries=[
            collector_pb2.LogEntry(labels=dict(r.labels), time=_timestamp(r.timestamp_ns),
                                   line=r.line) for r in found])

    async def GetCollectorStats(self, request: collector_pb2.GetCollectorStatsRequest,
                                context: Context) -> collector_pb2.GetCollectorStatsResponse:
        operator_caller("the collector's counters")
        return collector_pb2.GetCollectorStatsResponse(
            stats=stats_to_proto(self.ingest.stats, self.ingest.queue_depth()))

    async def GetTrace(self, request: collector_pb2.GetTraceRequest,
                       context: Context) -> collector_pb2.GetTraceResponse:
        user = user_caller().user
        trace_id = request.trace_id.lower()
        if not _TRACE_ID.fullmatch(trace_id):
            raise InvalidArgument(f"trace_id must be 32 hex digits, got {request.trace_id!r}",
                                  field="trace_id")
        spans = self.ingest.traces.get(trace_id, user, operator_name())
        if not spans:
            raise NotFound(f"trace {trace_id} is not kept by this collector")
        return collector_pb2.GetTraceResponse(spans=[collector_pb2.Span(
            trace_id=s.trace_id, span_id=s.span_id, parent_span_id=s.parent_span_id, name=s.name,
            service_name=s.service_name, start_time=_timestamp(s.start_ns),
            end_time=_timestamp(s.end_ns), attributes=s.attributes, status=s.status)
            for s in spans])


def _any_value(value: common_pb2.AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(value, kind)).strip()
    return str(getattr(value, kind))


def spans_from_otlp(request: trace_service_pb2.ExportTraceServiceRequest, *,
                    exported_by: str = "") -> list[SpanRecord]:
    out: list[SpanRecord] = []
    for rs in request.resource_spans:
        service = next((_any_value(a.value) for a in rs.resource.attributes
                        if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(SpanRecord(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(), name=span.name,
                    service_name=service, start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes={a.key: _any_value(a.value) for a in span.attributes},
                    status=_STATUS.get(span.status.code, "UNSET"), exported_by=exported_by))
    return out


class OtlpTraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC TraceService/Export: keeps the spans for GetTrace."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Context) -> trace_service_pb2.ExportTraceServiceResponse:
        # The operator's processes (a standalone server) say truly whose calls their spans
        # were; what another user exports joins traces but never makes one theirs to read.
        user = user_caller().user
        spans = spans_from_otlp(request, exported_by="" if user == operator_name() else user)
        self.ingest.traces.add(spans)
        self.ingest.stats.spans_received += len(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def _add_collector_service(servicer: CollectorServicer, server: Any) -> None:
    """`add_CollectorServiceServicer_to_server`, except that PushMetrics and PushLogs requests
    are handed over undecoded: the ingest parses them with its wire views (see `fast_metrics`,
    `fast_logs`)."""
    pb = collector_pb2
    handlers = {
        "PushMetrics": grpc.stream_stream_rpc_method_handler(
            servicer.PushMetrics, request_deserializer=None,
            response_serializer=pb.PushMetricsResponse.SerializeToString),
        "PushLogs": grpc.stream_stream_rpc_method_handler(
            servicer.PushLogs, request_deserializer=None,
            response_serializer=pb.PushLogsResponse.SerializeToString),
        "QueryLogs": grpc.unary_unary_rpc_method_handler(
            servicer.QueryLogs, request_deserializer=pb.QueryLogsRequest.FromString,
            response_serializer=pb.QueryLogsResponse.SerializeToString),
        "GetCollectorStats": grpc.unary_unary_rpc_method_handler(
            servicer.GetCollectorStats,
            request_deserializer=pb.GetCollectorStatsRequest.FromString,
            response_serializer=pb.GetCollectorStatsResponse.SerializeToString),
        "GetTrace": grpc.unary_unary_rpc_method_handler(
            servicer.GetTrace, request_deserializer=pb.GetTraceRequest.FromString,
            response_serializer=pb.GetTraceResponse.SerializeToString),
    }
    name = pb.DESCRIPTOR.services_by_name["CollectorService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def collector_bindings(ingest: Ingest) -> tuple[ServiceBinding, ...]:
    """CollectorService and OTLP TraceService, to mount with `aifb.mesh.server.create_server`."""
    collector = CollectorServicer(ingest)
    otlp = OtlpTraceServicer(ingest)
    return (
        ServiceBinding(
            full_name=collector_pb2.DESCRIPTOR.services_by_name["CollectorService"].full_name,
            add_to_server=lambda s: _add_collector_service(collector, s)),
        ServiceBinding(
            full_name=trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
            add_to_server=lambda s: trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
                otlp, s)),  # type: ignore[no-untyped-call]
    )

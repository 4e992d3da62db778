"""gRPC adapters: CollectorService and OTLP TraceService/Export over the domain `Ingest`."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from aifb.collector.convert import labels_dict as _labels
from aifb.collector.convert import log_batch_from_proto, metric_batch_from_proto
from aifb.collector.ingest import Ack, Ingest
from aifb.collector.model import NotDelivered, PushOutcome, SpanRecord
from aifb.collector.stats import Stats
from aifb.mesh.access import caller, operator_caller, operator_name, user_caller
from aifb.mesh.auth import Principal
from aifb.mesh.bounds import check_matchers, check_text
from aifb.mesh.errors import InvalidArgument, NotFound, Unavailable
from aifb.mesh.push import AGENT_ID_HEADER, AGENT_INSTANCE_HEADER
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
# Batches of one stream read and not yet answered, at most (agents send `window`, 8-16).
STREAM_WINDOW = 64
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_MAX_NAMES = 64
_MAX_SAMPLES = 10_000
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
        agents_last_sequence=stats.agents_last_sequence,
        metric_samples_held=stats.metric_samples_held, log_lines_held=stats.log_lines_held)


def _stream_agent(context: Context) -> tuple[str, str]:
    """The agent id and process instance an agent names at the stream's start ('' if not)."""
    found = {key: value for key, value in context.invocation_metadata() or ()
             if key in (AGENT_ID_HEADER, AGENT_INSTANCE_HEADER)}
    agent = str(found.get(AGENT_ID_HEADER, ""))
    if len(agent) > 256:
        raise InvalidArgument("the agent id header is longer than 256 characters",
                              field=AGENT_ID_HEADER)
    return agent, str(found.get(AGENT_INSTANCE_HEADER, ""))[:64]


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
        ingest's fast path); a caller passing messages gets the same answers. Each batch is
        answered once it is forwarded (see `Ingest`), so many are in flight at once."""
        who = caller()
        ingest = self.ingest

        async def accept(request: collector_pb2.PushMetricsRequest | bytes, agent: str) -> Ack:
            if isinstance(request, bytes):
                return await ingest.accept_metrics_wire(request, who, expect_agent=agent)
            return await ingest.accept_metrics(metric_batch_from_proto(request.batch), who,
                                               expect_agent=agent)

        async for out in self._answers("metrics", request_iterator, context, accept, who):
            yield collector_pb2.PushMetricsResponse(
                sequence=out.sequence, duplicate=out.duplicate, accepted_samples=out.accepted,
                rejected_samples=out.rejected, error_message=out.error_message)

    async def PushLogs(
            self, request_iterator: AsyncIterator[collector_pb2.PushLogsRequest | bytes],
            context: Context) -> AsyncIterator[collector_pb2.PushLogsResponse]:
        """Mounted by `collector_bindings`, requests arrive as their wire bytes (read by the
        ingest's fast path, `fast_logs`); a caller passing messages gets the same answers."""
        who = caller()
        ingest = self.ingest

        async def accept(request: collector_pb2.PushLogsRequest | bytes, agent: str) -> Ack:
            if isinstance(request, bytes):
                return await ingest.accept_logs_wire(request, who, expect_agent=agent)
            return await ingest.accept_logs(log_batch_from_proto(request.batch), who,
                                            expect_agent=agent)

        async for out in self._answers("logs", request_iterator, context, accept, who):
            yield collector_pb2.PushLogsResponse(
                sequence=out.sequence, duplicate=out.duplicate, accepted_lines=out.accepted,
                rejected_lines=out.rejected, error_message=out.error_message)

    async def _answers(self, kind: str, requests: AsyncIterator[Any], context: Context,
                       accept: Callable[[Any, str], Awaitable[Ack]], who: Principal | None
                       ) -> AsyncIterator[PushOutcome]:
        """Read batches in one task, hand each to `accept`, and yield each outcome as its
        delivery settles (in that order: agents match acks by sequence). At most
        `STREAM_WINDOW` batches wait per stream; a refused batch ends the stream with its
        error, a batch not delivered ends it UNAVAILABLE (the agent resends). Once the
        collector is stopping, no more batches are read: those accepted are answered as they
        are forwarded, then the stream ends UNAVAILABLE."""
        if self.ingest.closing:
            raise Unavailable("the collector is stopping: resend to its successor")
        agent, instance = _stream_agent(context)
        release = self.ingest.agents.open(kind, agent, instance, who) if agent else None
        answers: asyncio.Queue[Ack | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_WINDOW)
        accepted = 0

        async def read() -> None:
            nonlocal accepted
            try:
                async for request in requests:
                    await room.acquire()
                    ack = await accept(request, agent)
                    accepted += 1
                    ack.add_done_callback(answers.put_nowait)
                answers.put_nowait(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the stream, raised there
                answers.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            answered = 0
            ended = False
            final: BaseException | None = None
            while not ended or answered < accepted:
                item = await answers.get()
                if isinstance(item, Unavailable) and self.ingest.closing:
                    # Stopping: answer what was accepted (it is being forwarded), then end.
                    ended, final = True, item
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    ended = True
                    continue
                answered += 1
                room.release()
                exc = item.exception()
                if isinstance(exc, NotDelivered):
                    raise Unavailable(f"a batch was not forwarded: {exc}; the agent keeps it "
                                      "and resends it") from None
                if exc is not None:
                    raise exc
                yield item.result()
            if final is not None:
                raise final
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if release is not None:
                release()

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

    async def QueryMetrics(self, request: collector_pb2.QueryMetricsRequest,
                           context: Context) -> collector_pb2.QueryMetricsResponse:
        operator_caller("the collector's metrics")
        check_matchers("labels", request.labels)
        if not request.labels:
            raise InvalidArgument("labels: give at least one label to match", field="labels")
        if len(request.names) > _MAX_NAMES:
            raise InvalidArgument(f"names: at most {_MAX_NAMES}", field="names")
        for name in request.names:
            check_text("names", name, 256)
        found, truncated = self.ingest.latest.matching(
            dict(request.labels), frozenset(request.names), _MAX_SAMPLES)
        return collector_pb2.QueryMetricsResponse(truncated=truncated, samples=[
            collector_pb2.MetricSample(
                name=dict(labels).get("__name__", ""),
                labels={k: v for k, v in labels if k != "__name__"}, value=value.value,
                time=_timestamp(value.timestamp_ms * 1_000_000))
            for labels, value in found])

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
    }
    # Every other method is unary and decoded as usual: taken from the contract, so a method
    # added to collector.proto is served as soon as the servicer has it (never UNIMPLEMENTED).
    for method in pb.DESCRIPTOR.services_by_name["CollectorService"].methods:
        if method.name not in handlers:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=getattr(pb, method.input_type.name).FromString,
                response_serializer=getattr(pb, method.output_type.name).SerializeToString)
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

"""An in-process span exporter into the collector's trace store (the embedded default).

`aifb up` sends its own spans to the collector it mounts without going through OTLP/gRPC:
exporting over the network to itself would trace each Export call, whose spans would be
exported in turn, and so on. The records are those `OtlpTraceServicer` keeps from the wire.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from aifb.collector.ingest import Ingest
from aifb.collector.model import SpanRecord

__all__ = ["StoreSpanExporter", "span_record"]


def span_record(span: ReadableSpan) -> SpanRecord:
    """The collector's record of one finished SDK span."""
    ctx = span.context
    assert ctx is not None  # a finished SDK span always has its context
    parent = span.parent
    service = span.resource.attributes.get("service.name", "")
    return SpanRecord(
        trace_id=format(ctx.trace_id, "032x"), span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None else "",
        name=span.name, service_name=str(service), start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        attributes={k: str(v) for k, v in (span.attributes or {}).items()},
        status=span.status.status_code.name)


class StoreSpanExporter(SpanExporter):
    """Adds finished spans to `ingest.traces` (counted like spans received by OTLP)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        records = [span_record(s) for s in spans]
        self.ingest.traces.add(records)
        self.ingest.stats.spans_received += len(records)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

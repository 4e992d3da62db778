"""OpenTelemetry wiring: a tracer provider per process, and W3C trace context in env vars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "context_from_env",
    "current_trace_id",
    "make_tracer_provider",
    "traceparent_env",
]

_PROPAGATOR = TraceContextTextMapPropagator()


def make_tracer_provider(
    service_name: str,
    *,
    otlp_endpoint: str = "",
    exporters: Sequence[SpanExporter] = (),
) -> TracerProvider:
    """A provider that exports to `otlp_endpoint` (OTLP/gRPC) and to `exporters`.

    With neither, spans are created (so trace ids still link flows) but go nowhere: instrumented
    code never fails because a backend is missing.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = otlp_endpoint.startswith("http://")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure))
        )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def traceparent_env() -> dict[str, str]:
    """{"TRACEPARENT": ...} for the current span, to put into a job's environment."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return {"TRACEPARENT": carrier["traceparent"]} if "traceparent" in carrier else {}


def context_from_env(environ: Mapping[str, str]) -> otel_context.Context:
    """The parent context carried in TRACEPARENT (empty context when absent or malformed)."""
    value = environ.get("TRACEPARENT", "")
    return _PROPAGATOR.extract({"traceparent": value}) if value else otel_context.Context()


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""

"""The collector's HTTP endpoint: `/metrics` with received series' latest values and its own.

prometheus_client's threaded server is used rather than an asyncio one: rendering a page of
many thousand series then never holds up the ingest event loop between two awaits (the GIL is
shared at its switch interval instead), and content negotiation (OpenMetrics, gzip) comes free.
Everything is read at scrape time from the plain counters and the latest-value store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from aifb.collector.model import KIND_COUNTER, KIND_GAUGE
from aifb.collector.stats import LatencyHistogram, Stats
from aifb.collector.stores import LatestStore
from aifb.mesh.errors import InvalidArgument

__all__ = ["MetricsHttpServer", "TelemetryCollector", "start_metrics_server"]

log = logging.getLogger(__name__)

_COUNTERS = (
    ("metric_samples_received", "Metric samples received from agents."),
    ("metric_samples_accepted", "Metric samples accepted for storage and forwarding."),
    ("metric_samples_rejected", "Metric samples rejected at ingest (time range, conflicts)."),
    ("metric_samples_clamped", "Metric samples whose future timestamp was clamped to now."),
    ("metric_samples_forwarded", "Metric samples Prometheus accepted by remote write."),
    ("metric_samples_remote_rejected", "Metric samples Prometheus rejected permanently."),
    ("metric_samples_returned", "Metric samples not forwarded before the collector stopped "
     "(unacknowledged: their agents resend them)."),
    ("metric_batches_received", "Metric batches received."),
    ("metric_batches_duplicate", "Metric batches recognised as resends."),
    ("metric_batches_invalid", "Metric batches refused with INVALID_ARGUMENT."),
    ("remote_write_requests", "Remote-write HTTP requests sent, retries included."),
    ("remote_write_retries", "Remote-write requests retried after 429, 5xx or no connection."),
    ("remote_write_splits", "Rejected remote-write requests split in two."),
    ("log_lines_received", "Log lines received from agents."),
    ("log_lines_accepted", "Log lines accepted."),
    ("log_lines_rejected", "Log lines rejected at ingest."),
    ("log_lines_forwarded", "Log lines Loki accepted."),
    ("log_lines_remote_rejected", "Log lines Loki rejected (4xx other than 429)."),
    ("log_lines_returned", "Log lines not forwarded before the collector stopped "
     "(unacknowledged: their agents resend them)."),
    ("log_batches_received", "Log batches received."),
    ("log_batches_duplicate", "Log batches recognised as resends."),
    ("log_batches_invalid", "Log batches refused with INVALID_ARGUMENT."),
    ("loki_requests", "Loki push requests sent, retries included."),
    ("loki_retries", "Loki pushes retried."),
    ("spans_received", "Spans received by OTLP."),
)


def _histogram(name: str, doc: str, hist: LatencyHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=[(b, float(n)) for b, n in hist.cumulative()],
                                 sum_value=hist.total)


class TelemetryCollector(Collector):
    """Yields the received series' latest values and the collector's own counters."""

    def __init__(self, stats: Stats, latest: LatestStore, queue_depth: Callable[[], int]) -> None:
        self.stats = stats
        self.latest = latest
        self.queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        yield from self._received()
        for field, doc in _COUNTERS:
            yield CounterMetricFamily(f"aifb_collector_{field}", doc,
                                      value=getattr(self.stats, field))
        yield GaugeMetricFamily("aifb_collector_queue_depth_batches",
                                "Batches waiting in the forwarding queues.",
                                value=self.queue_depth())
        yield GaugeMetricFamily("aifb_collector_metric_samples_held",
                                "Samples accepted and not yet forwarded (unacknowledged).",
                                value=self.stats.metric_samples_held)
        yield GaugeMetricFamily("aifb_collector_log_lines_held",
                                "Log lines accepted and not yet forwarded (unacknowledged).",
                                value=self.stats.log_lines_held)
        yield GaugeMetricFamily("aifb_collector_queue_capacity_batches",
                                "Capacity of the forwarding queues.",
                                value=self.stats.queue_capacity)
        yield GaugeMetricFamily("aifb_collector_series_kept",
                                "Series whose latest value /metrics serves.",
                                value=len(self.latest.series))
        yield _histogram("aifb_collector_remote_write_duration_seconds",
                         "Remote-write request latency.", self.stats.remote_write_latency)
        yield _histogram("aifb_collector_loki_push_duration_seconds",
                         "Loki push request latency.", self.stats.loki_latency)

    def _received(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for labels, latest in sorted(self.latest.snapshot()):
            name = next((v for k, v in labels if k == "__name__"), "")
            family = families.get(name)
            if family is None:
                if latest.kind == KIND_COUNTER and name.endswith("_total"):
                    family = CounterMetricFamily(name, latest.help or name)
                else:
                    kind = "gauge" if latest.kind == KIND_GAUGE else "unknown"
                    family = Metric(name, latest.help or name, kind)
                families[name] = family
            family.add_sample(name, {k: v for k, v in labels if k != "__name__"}, latest.value)
        yield from families.values()


@dataclass
class MetricsHttpServer:
    server: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def start_metrics_server(listen: str, collector: Collector) -> MetricsHttpServer:
    """Serve `collector` on http://<listen>/metrics (port 0 picks a free port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"metrics_listen must be host:port, got {listen!r}",
                              field="collector.metrics_listen")
    host = host.strip("[]") or "127.0.0.1"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise InvalidArgument(f"cannot serve /metrics on {listen}: {exc}",
                              field="collector.metrics_listen") from exc
    log.info("collector /metrics on http://%s:%d/metrics", host, server.server_port)
    return MetricsHttpServer(server=server, thread=thread, host=host)

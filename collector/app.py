"""Assemble the collector: ingest, forwarders, /metrics, and the gRPC bindings to mount."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from aifb.collector.config import CollectorConfig
from aifb.collector.http import MetricsHttpServer, TelemetryCollector, start_metrics_server
from aifb.collector.ingest import Ingest
from aifb.collector.loki import LokiForwarder
from aifb.collector.remote_write import RemoteWriter
from aifb.collector.servicer import collector_bindings
from aifb.collector.stats import Stats
from aifb.mesh.server import ServiceBinding

__all__ = ["CollectorApp", "start_collector"]

log = logging.getLogger(__name__)


@dataclass
class CollectorApp:
    """A running collector. Mount `bindings` with `create_server`; `stop()` drains and closes."""

    config: CollectorConfig
    ingest: Ingest
    stats: Stats
    bindings: tuple[ServiceBinding, ...]
    http: MetricsHttpServer | None
    client: httpx.AsyncClient | None
    owns_client: bool = True

    async def stop(self) -> None:
        """Refuse new batches, forward what was accepted (`drain_seconds` at most), close."""
        drain = await self.ingest.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.client is not None and self.owns_client:
            await self.client.aclose()
        stats = self.stats
        log.info("collector stopped: since start %d samples and %d lines forwarded, %d samples "
                 "and %d lines refused for good by the targets; at the stop %d batches were "
                 "forwarded while draining, %d batches (%d samples, %d lines) were not "
                 "forwarded and stay with their agents (unacknowledged, resent to the next "
                 "collector), %d batches were refused as the collector was stopping; "
                 "nothing was dropped", stats.metric_samples_forwarded,
                 stats.log_lines_forwarded, stats.metric_samples_remote_rejected,
                 stats.log_lines_remote_rejected, drain.delivered_batches,
                 drain.returned_batches, drain.returned_samples, drain.returned_lines,
                 drain.refused_batches)


async def start_collector(config: CollectorConfig, *, client: httpx.AsyncClient | None = None,
                          serve_http: bool = True) -> CollectorApp:
    """Start the forwarding workers (and /metrics unless `serve_http` is False or
    `config.metrics_listen` is empty) on the running event loop. `client` replaces the HTTP
    client used for remote write and Loki (tests pass one with a mock transport)."""
    stats = Stats()
    needs_client = bool(config.remote_write_url or config.loki_url)
    owns = client is None
    if client is None and needs_client:
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=4 * config.forward_workers))
    remote = (RemoteWriter(config.remote_write_url, client, stats, config)
              if config.remote_write_url and client is not None else None)
    loki = (LokiForwarder(config, client, stats)
            if config.loki_url and client is not None else None)
    ingest = Ingest(config, stats, remote=remote, loki=loki)
    ingest.start()
    http = None
    if serve_http and config.metrics_listen:
        try:
            http = start_metrics_server(
                config.metrics_listen, TelemetryCollector(stats, ingest.latest, ingest.queue_depth))
        except BaseException:
            await ingest.stop()
            if client is not None and owns:
                await client.aclose()
            raise
    log.info("collector started: remote write %s, loki %s (%s)",
             config.remote_write_url or "off", config.loki_url or "off", config.loki_format)
    return CollectorApp(config=config, ingest=ingest, stats=stats,
                        bindings=collector_bindings(ingest), http=http, client=client,
                        owns_client=owns)

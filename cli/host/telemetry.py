"""The telemetry `aifb up` runs beside ServerService, in the same process and on the same port.

The collector (CollectorService and OTLP TraceService) is mounted among the server's bindings;
a monitor and a logger agent act as this host's node daemons: they serve MonitorService and
LoggerService on that port too, learn their targets from `WatchServices` and push to the
collector through loopback gRPC like any remote agent (same acknowledgements, same buffers).
When the server's jobs carry their own sidecars the agents do not follow jobs (each job would
be reported twice); they still report this node.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.sdk.trace.export import SpanExporter

from aifb.collector.app import CollectorApp, start_collector
from aifb.collector.config import CollectorConfig
from aifb.collector.local_spans import StoreSpanExporter
from aifb.collector.targets import check_targets
from aifb.logger.app import build_logger
from aifb.logger.config import LoggerConfig
from aifb.mesh.agent_host import AgentApp
from aifb.mesh.channel import open_channel
from aifb.mesh.config import Config, section_config
from aifb.mesh.discovery import ServiceDiscovery
from aifb.mesh.push import default_agent_id
from aifb.mesh.server import ServiceBinding
from aifb.mesh.tls import ClientTls
from aifb.monitor.app import build_monitor
from aifb.monitor.config import MonitorConfig

__all__ = ["EmbeddedTelemetry", "start_embedded_telemetry"]

log = logging.getLogger(__name__)


@dataclass
class _Loopback:
    """Channels to this process's own port, which is known only after the server binds."""

    address: str = ""
    token: str | None = None
    tls: ClientTls = field(default_factory=ClientTls)

    def __call__(self) -> grpc.aio.Channel:
        if not self.address:
            raise RuntimeError("the embedded server is not listening yet")
        return open_channel(self.address, token=self.token, ca_file=self.tls.ca_file,
                            cert_file=self.tls.cert_file, key_file=self.tls.key_file)


@dataclass
class EmbeddedTelemetry:
    collector: CollectorApp
    monitor: AgentApp
    logger: AgentApp
    loopback: _Loopback = field(default_factory=_Loopback)
    started: bool = False

    @property
    def bindings(self) -> tuple[ServiceBinding, ...]:
        """Mount these with `start_server_app(extra_bindings=...)`."""
        return (*self.collector.bindings, *self.monitor.bindings, *self.logger.bindings)

    def span_exporter(self) -> SpanExporter:
        """Where the process's own spans go: straight into the collector's trace store."""
        return StoreSpanExporter(self.collector.ingest)

    async def start_agents(self, address: str, token: str | None,
                           tls: ClientTls | None = None) -> None:
        """Start the agents once the server listens on `address` (with the mesh's client TLS
        when it speaks TLS)."""
        self.loopback.address, self.loopback.token = address, token
        self.loopback.tls = tls or ClientTls()
        await self.monitor.start()
        await self.logger.start()
        self.started = True

    async def stop_agents(self) -> None:
        """Stop the agents first (their last batches still reach the running collector)."""
        if self.started:
            self.started = False
            await self.monitor.stop()
            await self.logger.stop()

    async def stop(self) -> None:
        await self.stop_agents()
        await self.collector.stop()


def _instance_id(role: str, section: Mapping[str, Any], listen: str) -> dict[str, str]:
    """`<role>@<node>:<port>` unless configured: a node daemon on this host is another
    agent (see `aifb.mesh.push.default_agent_id`)."""
    if section.get("agent_id"):
        return {}
    node = section.get("node") or socket.gethostname().split(".", 1)[0]
    return {"agent_id": default_agent_id(role, str(node), listen)}


async def start_embedded_telemetry(
    config: Config, *, follow_jobs: bool, all_nodes: bool,
    collector_overrides: Mapping[str, Any] | None = None,
) -> EmbeddedTelemetry:
    """Start the collector and build (not yet start) the agents.

    `follow_jobs`: the agents watch the server's services (off when jobs bring sidecars);
    `all_nodes`: every service counts as on this node (the local executor's jobs)."""
    home = config.mesh.home_path
    collector_config = check_targets(
        section_config(CollectorConfig, config, "collector", collector_overrides))
    listen = config.mesh.listen
    # When jobs bring sidecars, each reports its own SLURM stats; this node's monitor must not
    # report them again (unless the config says otherwise).
    no_slurm = {} if follow_jobs or "slurm" in config.monitor else {"slurm": False}
    monitor_config = section_config(MonitorConfig, config, "monitor", {
        "all_nodes": all_nodes, "local_state_dir": str(home / "local-jobs"),
        **_instance_id("monitor", config.monitor, listen), **no_slurm})
    logger_defaults = {"state_dir": str(home / "logger"),
                       **_instance_id("logger", config.logger, listen)}
    logger_config = section_config(LoggerConfig, config, "logger",
                                   {"all_nodes": all_nodes,
                                    **{k: v for k, v in logger_defaults.items()
                                       if k not in config.logger}})
    app = await start_collector(collector_config)
    loopback = _Loopback()
    discover = loopback if follow_jobs else None
    monitor = build_monitor(monitor_config, collector=loopback, discovery=ServiceDiscovery(
        discover, node=monitor_config.node_name, all_nodes=all_nodes))
    logger = build_logger(logger_config, collector=loopback, discovery=ServiceDiscovery(
        discover, node=logger_config.node_name, all_nodes=all_nodes))
    log.info("embedded telemetry: collector (/metrics on %s), monitor every %.1fs, logger; "
             "agents %s", collector_config.metrics_listen or "off",
             monitor_config.interval_seconds,
             "follow the server's services" if follow_jobs else "report this node only")
    return EmbeddedTelemetry(collector=app, monitor=monitor, logger=logger, loopback=loopback)

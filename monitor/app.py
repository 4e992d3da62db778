"""Assemble the monitor: the agent and the MonitorService binding to mount (as `aifb.collector.app`
does for the collector). The agent knows nothing of gRPC serving; the servicer adapts it."""

from __future__ import annotations

from dataclasses import dataclass

from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery
from aifb.mesh.server import ServiceBinding
from aifb.monitor.agent import MonitorAgent
from aifb.monitor.config import MonitorConfig
from aifb.monitor.servicer import monitor_binding

__all__ = ["MonitorApp", "build_monitor"]


@dataclass
class MonitorApp:
    """Start with `agent.start()`, mount `bindings`, stop with `stop()` (flushes first)."""

    agent: MonitorAgent
    bindings: tuple[ServiceBinding, ...]

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self, flush_timeout: float = 2.0) -> None:
        await self.agent.stop(flush_timeout)


def build_monitor(config: MonitorConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None) -> MonitorApp:
    """The agent (pushing through `collector`'s channels, following `discovery`) and its
    service binding; nothing starts yet."""
    agent = MonitorAgent(config, collector=collector, discovery=discovery)
    return MonitorApp(agent, (monitor_binding(agent),))

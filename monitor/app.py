"""Assemble the monitor: the agent and the MonitorService binding to mount (as `aifb.collector.app`
does for the collector). The agent knows nothing of gRPC serving; the servicer adapts it."""

from __future__ import annotations

from aifb.mesh.agent_host import AgentApp
from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery
from aifb.monitor.agent import MonitorAgent
from aifb.monitor.config import MonitorConfig
from aifb.monitor.servicer import monitor_binding

__all__ = ["build_monitor"]


def build_monitor(config: MonitorConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None) -> AgentApp:
    """The agent (pushing through `collector`'s channels, following `discovery`) and its
    service binding; nothing starts yet."""
    agent = MonitorAgent(config, collector=collector, discovery=discovery)
    return AgentApp(agent, (monitor_binding(agent),))

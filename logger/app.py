"""Assemble the logger: the agent and the LoggerService binding to mount (as `aifb.collector.app`
does for the collector). The agent knows nothing of gRPC serving; the servicer adapts it."""

from __future__ import annotations

from aifb.logger.agent import LoggerAgent
from aifb.logger.config import LoggerConfig
from aifb.logger.servicer import logger_binding
from aifb.mesh.agent_host import AgentApp
from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery

__all__ = ["build_logger"]


def build_logger(config: LoggerConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None) -> AgentApp:
    """The agent (pushing through `collector`'s channels, following `discovery`) and its
    service binding; nothing starts yet."""
    agent = LoggerAgent(config, collector=collector, discovery=discovery)
    return AgentApp(agent, (logger_binding(agent),))

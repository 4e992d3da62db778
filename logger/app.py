"""Assemble the logger: the agent and the LoggerService binding to mount (as `aifb.collector.app`
does for the collector). The agent knows nothing of gRPC serving; the servicer adapts it."""

from __future__ import annotations

from dataclasses import dataclass

from aifb.logger.agent import LoggerAgent
from aifb.logger.config import LoggerConfig
from aifb.logger.servicer import logger_binding
from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery
from aifb.mesh.server import ServiceBinding

__all__ = ["LoggerApp", "build_logger"]


@dataclass
class LoggerApp:
    """Start with `agent.start()`, mount `bindings`, stop with `stop()` (flushes first)."""

    agent: LoggerAgent
    bindings: tuple[ServiceBinding, ...]

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self, flush_timeout: float = 2.0) -> None:
        await self.agent.stop(flush_timeout)


def build_logger(config: LoggerConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None) -> LoggerApp:
    """The agent (pushing through `collector`'s channels, following `discovery`) and its
    service binding; nothing starts yet."""
    agent = LoggerAgent(config, collector=collector, discovery=discovery)
    return LoggerApp(agent, (logger_binding(agent),))

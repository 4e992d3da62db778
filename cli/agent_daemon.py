"""What `aifb monitor serve` and `aifb logger serve` share: discovery, the collector channel,
the agent's own gRPC service, and running until a signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import typer

from aifb.mesh.config import Config

__all__ = ["AgentSettings", "serve_agent"]


class AgentSettings(Protocol):
    """The fields both agents' configs have (MonitorConfig, LoggerConfig)."""

    @property
    def server(self) -> str: ...
    @property
    def collector(self) -> str: ...
    @property
    def node_name(self) -> str: ...
    @property
    def all_nodes(self) -> bool: ...
    @property
    def agent_name(self) -> str: ...


async def serve_agent(config: Config, settings: AgentSettings, make_agent: Callable[..., Any],
                      *, kind: str, service: str, listen: str) -> None:
    """Build the agent with `make_agent(settings, discovery=..., collector=...)`, start it,
    serve its `binding()` on `listen` ('' for none) and run until SIGINT/SIGTERM."""
    from aifb.mesh.agent_host import run_daemon
    from aifb.mesh.channel import load_token
    from aifb.mesh.discovery import ServiceDiscovery, channel_factory

    mesh = config.mesh
    token = load_token(mesh.home_path)
    ca = mesh.tls_client_ca if mesh.tls else ""
    discovery = ServiceDiscovery(
        channel_factory(settings.server, token=token, ca_file=ca) if settings.server else None,
        node=settings.node_name, all_nodes=settings.all_nodes)
    agent = make_agent(settings, discovery=discovery, collector=channel_factory(
        settings.collector, token=token, ca_file=ca) if settings.collector else None)
    await agent.start()

    def listening(port: int) -> None:
        where = f"{service} on port {port}" if port else f"no {service}"
        typer.echo(f"{kind} {settings.agent_name} is up ({where}; pushing to "
                   f"{settings.collector or 'nowhere'}). Ctrl-C stops it.", err=True)

    await run_daemon(mesh, [agent.binding()], listen=listen, stop=agent.stop,
                     on_listening=listening)

"""What `aifb monitor serve` and `aifb logger serve` share: discovery, the collector channel,
the agent's own gRPC service, and running until a signal."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import typer

from aifb.mesh.config import Config

__all__ = ["AgentSettings", "instance_defaults", "serve_agent"]


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


def instance_defaults(role: str, configured: Mapping[str, Any], node: str, listen: str
                      ) -> dict[str, str]:
    """The agent id (`<role>@<node>:<port>`, see `default_agent_id`) unless the config section
    sets one: two agents on one host (a node daemon beside `aifb up`'s embedded one) must not
    push as one agent."""
    from aifb.mesh.push import default_agent_id

    if configured.get("agent_id"):
        return {}
    return {"agent_id": default_agent_id(role, node or _short_host(), listen)}


def _short_host() -> str:
    import socket

    return socket.gethostname().split(".", 1)[0]


async def serve_agent(config: Config, settings: AgentSettings, build: Callable[..., Any],
                      *, kind: str, service: str, listen: str) -> None:
    """Assemble the agent with `build(settings, discovery=..., collector=...)` (its `app`
    module's `build_monitor` / `build_logger`), start it, serve its bindings on `listen` ('' for
    none) and run until SIGINT/SIGTERM."""
    from aifb.mesh.agent_host import run_daemon
    from aifb.mesh.channel import load_token
    from aifb.mesh.discovery import ServiceDiscovery, channel_factory

    mesh = config.mesh
    token = load_token(mesh.home_path)
    ca = mesh.tls_client_ca if mesh.tls else ""
    discovery = ServiceDiscovery(
        channel_factory(settings.server, token=token, ca_file=ca) if settings.server else None,
        node=settings.node_name, all_nodes=settings.all_nodes)
    app = build(settings, discovery=discovery, collector=channel_factory(
        settings.collector, token=token, ca_file=ca) if settings.collector else None)
    await app.start()

    def listening(port: int) -> None:
        where = f"{service} on port {port}" if port else f"no {service}"
        typer.echo(f"{kind} {settings.agent_name} is up ({where}; pushing to "
                   f"{settings.collector or 'nowhere'}). Ctrl-C stops it.", err=True)

    await run_daemon(mesh, app.bindings, listen=listen, stop=app.stop,
                     on_listening=listening)

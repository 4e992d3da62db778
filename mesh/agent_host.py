"""Run one component as a daemon: start it, serve its gRPC bindings, stop cleanly on a signal.

`aifb collector serve`, `aifb monitor serve` and `aifb logger serve` share this. The component
is anything with async `start()`/`stop()` (an agent, or a started collector's wrapper); the
mesh does not import the components, they are handed in.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aifb.mesh.auth import Authenticator, TokenStore
from aifb.mesh.config import MeshConfig
from aifb.mesh.server import MeshServer, ServiceBinding, create_server, serve_until_signal

__all__ = ["AgentApp", "run_daemon"]

log = logging.getLogger(__name__)


class Agent(Protocol):
    """What the monitor and logger agents have in common for hosting."""

    async def start(self) -> None: ...
    async def stop(self, flush_timeout: float = ...) -> None: ...


@dataclass
class AgentApp:
    """An assembled agent (`aifb.monitor.app.build_monitor`, `aifb.logger.app.build_logger`):
    start it, mount `bindings`, stop it (it flushes first)."""

    agent: Agent
    bindings: tuple[ServiceBinding, ...]

    async def start(self) -> None:
        await self.agent.start()

    async def stop(self, flush_timeout: float = 2.0) -> None:
        await self.agent.stop(flush_timeout)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_daemon(mesh: MeshConfig, bindings: Sequence[ServiceBinding], *, listen: str,
                     stop: Callable[[], Awaitable[None]],
                     on_listening: Callable[[int], None] | None = None) -> None:
    """Serve `bindings` on `listen` (auth and TLS from `mesh`) until SIGTERM/SIGINT, then await
    `stop()` (the component flushes while the port still answers) and close the server. With
    an empty `listen` nothing is served; the component runs until the signal."""
    server: MeshServer | None = None
    try:
        if listen:
            auth = Authenticator(TokenStore(mesh.home_path), enabled=mesh.auth)
            server = await create_server(mesh, bindings, authenticator=auth, listen=listen)
            if on_listening is not None:
                on_listening(server.port)
            await serve_until_signal(server, mesh.shutdown_grace_seconds, on_stop=stop)
        else:
            if on_listening is not None:
                on_listening(0)
            await _wait_for_signal()
            await stop()
    except BaseException:
        if server is not None:
            await server.stop(0)
        await stop()
        raise

"""Run the server on its own event-loop thread (for `aifb demo`, benchmarks and tests)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from aifb.mesh.auth import read_token_file
from aifb.mesh.channel import open_sync_channel
from aifb.mesh.config import Config, load_config
from aifb.server.app import ServerApp, start_server_app
from aifb.server.jobs import Scheduler
from aifb.v1 import server_pb2_grpc

__all__ = ["ThreadedServer", "embedded_config"]

T = TypeVar("T")


def embedded_config(home: Path, *, listen: str = "127.0.0.1:0", **server: Any) -> Config:
    """A config for an isolated server: its own home, loopback, no user config file."""
    overrides: dict[str, dict[str, Any]] = {
        "mesh": {"home": str(home), "listen": listen},
        "server": {"scheduler": "local", "poll_interval_seconds": 0.1,
                   "poll_max_interval_seconds": 0.5, "local_kill_wait_seconds": 3.0, **server},
    }
    return load_config(environ={"AIFB_CONFIG": str(home / "no-config.yaml")},
                       overrides=overrides)


@dataclass
class ThreadedServer:
    """A ServerApp on a background event loop; `run(coro)` executes on that loop."""

    config: Config
    make_scheduler: Callable[[], Scheduler] | None = None
    tracer_provider: Any = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    app: ServerApp | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ThreadedServer:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="aifb-server")
        self._thread.start()
        sched = self.make_scheduler() if self.make_scheduler else None
        self.app = self.run(start_server_app(self.config, listen=self.config.mesh.listen,
                                             scheduler=sched,
                                             tracer_provider=self.tracer_provider))
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    @property
    def address(self) -> str:
        assert self.app is not None
        host = self.config.mesh.listen.rsplit(":", 1)[0]
        return f"{host}:{self.app.port}"

    @property
    def token(self) -> str:
        assert self.app is not None
        return read_token_file(self.app.token_path)

    def channel(self, token: str | None = None) -> grpc.Channel:
        return open_sync_channel(self.address, token=self.token if token is None else token)

    def stub(self, token: str | None = None) -> server_pb2_grpc.ServerServiceStub:
        return server_pb2_grpc.ServerServiceStub(self.channel(token))

    def cancel_all(self, *, wait: float = 60.0) -> int:
        """Delete every non-terminal service (local jobs outlive the server otherwise), then
        wait up to `wait` seconds for each to end. Returns how many were cancelled."""
        from aifb.v1 import server_pb2 as S

        stub = self.stub()
        terminal = (S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED)
        names = [s.name for s in stub.ListServices(S.ListServicesRequest(page_size=1000),
                                                   timeout=30).services
                 if s.state not in terminal]
        for name in names:
            stub.DeleteService(S.DeleteServiceRequest(name=name), timeout=30)
        if wait > 0:
            for name in names:
                for msg in stub.WatchService(S.WatchServiceRequest(name=name), timeout=wait):
                    if msg.service.state in terminal:
                        break
        return len(names)

    def stop(self, grace: float = 0.5) -> None:
        if self.app is not None:
            self.run(self.app.stop(grace))
            self.app = None
        if self._thread is not None and self._thread.is_alive():
            # Let whatever is still scheduled (gRPC's aio callbacks, stream tasks) end on the
            # loop before it stops: closing a loop with live callbacks is what made a late
            # write on its self-pipe fail with EBADF.
            with contextlib.suppress(TimeoutError):
                self.run(_drain_tasks(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if self._thread.is_alive():
                return  # a stuck loop cannot be closed; the daemon thread ends with the process
        self.loop.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _drain_tasks() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()

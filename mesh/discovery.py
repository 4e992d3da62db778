"""Agents' discovery: which services run on this node, with their job, log files and /metrics.

`ServiceDiscovery` follows `ServerService.WatchServices(include_snapshot=True)`, reconnecting
with jittered backoff, and keeps the `Target`s relevant to this node: a service whose job's
SLURM node list contains this host (or every service in local/embedded mode) and that is not
terminal. A target's metrics URL comes from the service's `metrics` (its recipe's `metrics:`
key, see `metrics_url_of`): a service that declares none is not scraped. Static targets from
the agent's config are always included. Listeners are called with the whole new target map
after each change; `wait_changed()` serves async consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import grpc

from aifb.mesh.backoff import Backoff
from aifb.mesh.channel import open_channel
from aifb.v1 import server_pb2, server_pb2_grpc

__all__ = ["ServiceDiscovery", "Target", "TargetSpec", "channel_factory", "expand_hostlist",
           "metrics_url_of", "target_from_service"]

log = logging.getLogger(__name__)

ChannelFactory = Callable[[], grpc.aio.Channel]
Listener = Callable[[Mapping[str, "Target"]], None]

_TERMINAL = {server_pb2.SERVICE_STATE_STOPPED, server_pb2.SERVICE_STATE_FAILED}
_RUNNING = {server_pb2.SERVICE_STATE_STARTING, server_pb2.SERVICE_STATE_READY,
            server_pb2.SERVICE_STATE_STOPPING}


@dataclass(frozen=True)
class Target:
    """One thing an agent watches: a service's job on this node, or a static entry."""

    service: str
    job_id: str = ""
    scheduler: str = ""
    nodes: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    # Where the service's own Prometheus metrics are, or "" when it has none (yet).
    metrics_url: str = ""
    # A known root process (static config, or an in-job sidecar's parent).
    pid: int | None = None
    log_files: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = field(default=())
    # How often the program was restarted, as the server counts it; None when unknown (a
    # static target, an in-job sidecar's own view).
    restarts: int | None = None

    def log_sources(self) -> list[tuple[str, str]]:
        """(path, stream) pairs: stdout, stderr (when a different file), then extra log files."""
        out: list[tuple[str, str]] = []
        if self.stdout_path:
            out.append((self.stdout_path, "stdout"))
        if self.stderr_path and self.stderr_path != self.stdout_path:
            out.append((self.stderr_path, "stderr"))
        out.extend((p, "file") for p in self.log_files)
        return out


@dataclass
class TargetSpec:
    """A target from an agent's config (a sidecar names its own job this way).

    A plain dataclass, checked in `__post_init__`, so that an agent reads its config without
    importing pydantic; pydantic models (LoggerConfig) validate it as a field all the same."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}
    service: str
    job_id: str = ""
    pid: int | None = None
    metrics_url: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    log_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("service", "job_id", "metrics_url", "stdout_path", "stderr_path"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: expected a string, got {getattr(self, name)!r}")
        if self.pid is not None and (isinstance(self.pid, bool) or not isinstance(self.pid, int)
                                     or self.pid <= 0):
            raise ValueError(f"pid: expected a positive integer, got {self.pid!r}")
        if not isinstance(self.log_files, list) or not all(
                isinstance(f, str) for f in self.log_files):
            raise ValueError(f"log_files: expected a list of strings, got {self.log_files!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TargetSpec:
        """From a config mapping; unknown keys are refused (ValueError naming them)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        if "service" not in data:
            raise ValueError("service: required")
        return cls(**data)

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> TargetSpec:
        """A checked copy with `update` applied (as pydantic's `model_copy`, which callers of
        the former pydantic model use)."""
        return replace(self, **dict(update or {}))

    def to_target(self) -> Target:
        return Target(service=self.service, job_id=self.job_id, pid=self.pid,
                      metrics_url=self.metrics_url, stdout_path=self.stdout_path,
                      stderr_path=self.stderr_path, log_files=tuple(self.log_files))


def channel_factory(address: str, *, token: str | None = None, ca_file: str = "",
                    cert_file: str = "", key_file: str = "") -> ChannelFactory:
    """A factory of fresh authenticated channels (agents open a new one per reconnect, so
    their own jittered backoff, not the channel's, decides when to try again)."""

    def connect() -> grpc.aio.Channel:
        return open_channel(address, token=token, ca_file=ca_file, cert_file=cert_file,
                            key_file=key_file)

    return connect


def expand_hostlist(expr: str) -> list[str]:
    """Expand a SLURM host list such as "gpu[01-03,7],login1" into host names."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", expr):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            if part.strip():
                hosts.append(part.strip())
            continue
        prefix, ranges, rest = match.groups()
        for chunk in ranges.split(","):
            lo, _, hi = chunk.partition("-")
            if not hi:
                hosts.extend(prefix + lo + tail for tail in expand_hostlist(rest) or [""])
                continue
            width = len(lo)
            for n in range(int(lo), int(hi) + 1):
                hosts.extend(f"{prefix}{n:0{width}d}{tail}" for tail in expand_hostlist(rest)
                             or [""])
    return hosts


def _short(host: str) -> str:
    return host.split(".", 1)[0]


def metrics_url_of(svc: server_pb2.Service) -> str:
    """Where to scrape a service: only one whose recipe declares `metrics:`, once READY, at
    the declared port and path on the host the job reported; "" otherwise, and for a service
    labelled `aifb.metrics=false` (the user's opt-out)."""
    if (svc.state != server_pb2.SERVICE_STATE_READY or not svc.HasField("metrics")
            or svc.labels.get("aifb.metrics", "") == "false"):
        return ""
    if svc.metrics.url:
        return svc.metrics.url
    if svc.endpoint.host and svc.metrics.port > 0:
        return f"http://{svc.endpoint.host}:{svc.metrics.port}{svc.metrics.path or '/metrics'}"
    return ""


def target_from_service(svc: server_pb2.Service) -> Target:
    """The Target of a service as WatchServices reports it (see `metrics_url_of`)."""
    metrics_url = metrics_url_of(svc)
    labels = dict(svc.labels)
    return Target(service=svc.name, job_id=svc.job.job_id, scheduler=svc.job.scheduler,
                  nodes=svc.job.nodes, stdout_path=svc.job.stdout_path,
                  stderr_path=svc.job.stderr_path, metrics_url=metrics_url,
                  labels=tuple(sorted(labels.items())), restarts=svc.restarts)


class ServiceDiscovery:
    """The services relevant to this node, kept up to date from the server's stream."""

    def __init__(self, connect: ChannelFactory | None, *, node: str | None = None,
                 all_nodes: bool = False, static: Iterable[Target] = (), filter_text: str = "",
                 backoff: Backoff | None = None) -> None:
        self.node = node or socket.gethostname()
        self.all_nodes = all_nodes
        self._connect = connect
        self._filter = filter_text
        self._backoff = backoff or Backoff(0.5, 15.0)
        self._static = {t.service: t for t in static}
        self._dynamic: dict[str, Target] = {}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.version = 0
        self.connected = False

    @property
    def targets(self) -> dict[str, Target]:
        return {**self._dynamic, **self._static}

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)
        listener(self.targets)

    def set_static(self, targets: Iterable[Target]) -> None:
        self._static = {t.service: t for t in targets}
        self._notify()

    def is_here(self, nodes: str) -> bool:
        if self.all_nodes:
            return True
        here = {self.node, _short(self.node), "localhost"}  # the local executor says localhost
        return any(h in here or _short(h) in here for h in expand_hostlist(nodes))

    def apply(self, svc: server_pb2.Service) -> bool:
        """Fold one service change in; True when the target set changed."""
        new: Target | None = None
        if svc.state in _RUNNING and self.is_here(svc.job.nodes):
            new = target_from_service(svc)
        old = self._dynamic.get(svc.name)
        if new == old:
            return False
        if new is None:
            self._dynamic.pop(svc.name, None)
        else:
            self._dynamic[svc.name] = new
        self._notify()
        return True

    async def wait_changed(self, version: int, timeout: float) -> int:
        """Wait until the version differs from `version` (or the timeout); the new version."""
        if self.version == version:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self.version

    def start(self) -> None:
        if self._connect is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="discovery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        targets = self.targets
        for listener in self._listeners:
            try:
                listener(targets)
            except Exception:
                log.exception("discovery listener failed")

    async def _run(self) -> None:
        assert self._connect is not None
        while True:
            channel = self._connect()
            try:
                stub = server_pb2_grpc.ServerServiceStub(channel)
                request = server_pb2.WatchServicesRequest(filter=self._filter,
                                                          include_snapshot=True)
                async for response in stub.WatchServices(request):
                    if not self.connected:
                        self.connected = True
                        self._backoff.reset()
                    self.apply(response.service)
                reason = "stream ended"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                self.connected = False
                await channel.close(None)
            delay = self._backoff.next_delay()
            log.info("discovery stream lost (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)

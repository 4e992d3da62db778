"""Where a run's load goes: a URL checked here, or a service resolved through the server.

`check_url` refuses anything but http(s)://host:port/path (the field is named). A service is
resolved by a `ServiceResolver`: `aifb.client.service.remote_targets.GrpcResolver` asks
ServerService over gRPC on the caller's behalf (the caller must own the service and it must be
READY, or DEGRADED when replicated), whether the server is this process (`aifb up`) or
another. A replicated service's load is spread over its READY replicas (`Target.urls`), which
`Target.follow` streams as they change. Besides the URL, the
resolution carries what a report needs to be reproducible: the recipe's source and the batch
script rendered from the same parameters (with placeholders for the job's secrets, which never
enter a report).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aifb.client.workloads.spread import Targets
from aifb.mesh.auth import Principal
from aifb.mesh.errors import InvalidArgument

__all__ = ["ServiceResolver", "Target", "check_url"]


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    service: str = ""  # "services/<id>" when resolved from a service
    trace_id: str = ""  # the service's trace, which the run's spans link to
    context: dict[str, Any] = field(default_factory=dict)  # service, recipe, batch script
    # A replicated service: its READY replicas' URLs when resolved (the load is spread over
    # them), and a stream of the same list on every change (None: no following).
    urls: tuple[str, ...] = ()
    follow: Callable[[], AsyncIterator[list[str]]] | None = None

    def load_target(self, spread: str) -> str | Targets:
        """What the load engine aims at: the URL, or the replicas with the spread strategy."""
        return Targets(self.urls, spread or "round-robin") if self.urls else self.url


def check_url(url: str, *, field_name: str = "url") -> str:
    """The URL, if it is http(s)://host[:port][/path]; InvalidArgument naming the field."""
    if len(url) > 2048 or any(ord(c) < 33 for c in url):
        raise InvalidArgument("url must be at most 2048 printable characters without spaces",
                              field=field_name)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"bad url {url!r}: {exc}", field=field_name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"bad url {url!r}: expected http://host:port/path (port and "
                              "path optional)", field=field_name)
    if port == 0:
        raise InvalidArgument(f"bad url {url!r}: port 0", field=field_name)
    return url


class ServiceResolver(Protocol):
    async def resolve(self, principal: Principal, service: str) -> Target:
        """The READY service's URL and context; NotFound / FailedPrecondition otherwise."""

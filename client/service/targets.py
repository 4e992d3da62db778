"""Where a run's load goes: a URL checked here, or a service resolved through the server.

`check_url` refuses anything but http(s)://host:port/path (the field is named). A service is
resolved by a `ServiceResolver`; `ManagerResolver` asks the server's domain directly (the
embedded mesh, where both services share a process): the caller must own the service and it must
be READY (`aifb.client.service.remote_targets.GrpcResolver` asks a remote server the same
way, for the standalone service). Besides the URL, the resolution carries what a report needs
to be reproducible: the recipe's source and the batch script rendered from the same
parameters (with placeholders for the job's secrets, which never enter a report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aifb.mesh.auth import Principal
from aifb.mesh.errors import FailedPrecondition, InvalidArgument
from aifb.server.deploy import Deployer, ResourceRequest
from aifb.server.manager import ServiceManager, parse_service_id
from aifb.server.states import ServiceState

__all__ = ["ManagerResolver", "ServiceResolver", "Target", "check_url"]


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    service: str = ""  # "services/<id>" when resolved from a service
    trace_id: str = ""  # the service's trace, which the run's spans link to
    context: dict[str, Any] = field(default_factory=dict)  # service, recipe, batch script


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


class ManagerResolver:
    """Resolution through the server's ServiceManager in the same process."""

    def __init__(self, manager: ServiceManager, deployer: Deployer) -> None:
        self.manager = manager
        self.deployer = deployer

    async def resolve(self, principal: Principal, service: str) -> Target:
        sid = parse_service_id(service)
        record = self.manager.get(principal, sid)
        if record.state != ServiceState.READY:
            raise FailedPrecondition(f"service {record.name} is {record.state.name}, not READY"
                                     + (f": {record.state_message}" if record.state_message
                                        else ""))
        url = record.endpoint_url or f"http://{record.endpoint_host}:{record.endpoint_port}/"
        res = record.resources
        context: dict[str, Any] = {
            "service": {"name": record.name, "recipe": record.recipe,
                        "parameters": dict(record.parameters), "scheduler": record.scheduler,
                        "job_id": record.job_id, "nodes": record.nodes,
                        "endpoint": url, "trace_id": record.trace_id,
                        "resources": {"nodes": res.nodes, "cpus": res.cpus,
                                      "memory_mib": res.memory_mib, "gpus": res.gpus,
                                      "time_limit_minutes": res.time_limit_minutes,
                                      "partition": res.partition, "account": res.account}},
        }
        try:
            recipe = self.deployer.catalog.get(record.recipe)
            context["recipe"] = {"name": recipe.name, "source_yaml": recipe.source_yaml}
            rendered = self.deployer.render(record.recipe, record.parameters, ResourceRequest(
                nodes=res.nodes, cpus=res.cpus, memory_mib=res.memory_mib, gpus=res.gpus,
                time_limit_minutes=res.time_limit_minutes or 0, partition=res.partition,
                account=res.account), jobs_dir=self.manager.home / "jobs")
            context["batch_script"] = rendered.script
        except Exception as exc:  # the recipe may have changed since: the run still goes
            context["recipe_error"] = str(exc)
        return Target(url=check_url(url, field_name="service"), service=record.name,
                      trace_id=record.trace_id, context=context)

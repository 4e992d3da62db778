"""Human-readable rendering of services and recipes for the terminal."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table

from aifb.v1 import server_pb2

__all__ = ["endpoint_text", "service_table", "state_name", "when"]

_STATE_STYLE = {
    "PENDING": "yellow", "STARTING": "cyan", "READY": "bold green", "STOPPING": "magenta",
    "STOPPED": "dim", "FAILED": "bold red", "DEGRADED": "bold yellow",
}


def state_name(value: int) -> str:
    return server_pb2.ServiceState.Name(value).removeprefix("SERVICE_STATE_")


def styled_state(value: int) -> str:
    name = state_name(value)
    return f"[{_STATE_STYLE.get(name, '')}]{name}[/]"


def endpoint_text(service: server_pb2.Service) -> str:
    if not service.HasField("endpoint"):
        return ""
    return service.endpoint.url or f"{service.endpoint.host}:{service.endpoint.port}"


def when(service: server_pb2.Service) -> str:
    return datetime.fromtimestamp(service.update_time.ToNanoseconds() / 1e9).strftime("%H:%M:%S")


def replica_table(replicas: list[server_pb2.Replica]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("REPLICA", "STATE", "JOB", "ENDPOINT", "RESTARTS", "LAST RESTART"):
        table.add_column(col)
    for r in replicas:
        table.add_row(r.name.removeprefix("services/"), styled_state(r.state),
                      r.job.job_id, f"{r.endpoint.host}:{r.endpoint.port}"
                      if r.endpoint.port else "", str(r.restarts),
                      (r.last_restart_reason.splitlines() or [""])[0][:60])
    return table


def service_table(services: list[server_pb2.Service]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("ID", "RECIPE", "STATE", "JOB", "ENDPOINT", "RESTARTS", "UPDATED"):
        table.add_column(col)
    for s in services:
        table.add_row(s.name.removeprefix("services/"), s.recipe, styled_state(s.state),
                      f"{s.job.scheduler}:{s.job.job_id}" if s.job.job_id else "",
                      endpoint_text(s), str(s.restarts), when(s))
    return table

"""Conversions between aifb.v1 protobuf messages and the server's domain objects."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from aifb.server.deploy import ResourceRequest
from aifb.server.jobs import ResourceSpec, RestartSpec
from aifb.server.model import ServiceRecord
from aifb.server.recipes.params import RestartOverride
from aifb.server.recipes.schema import Recipe
from aifb.server.states import ServiceState
from aifb.v1 import common_pb2, server_pb2

__all__ = [
    "metrics_to_proto", "recipe_to_proto", "resource_request_from_proto",
    "resources_to_proto", "restart_override_from_proto", "restart_to_proto",
    "service_to_proto",
]


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def resources_to_proto(spec: ResourceSpec) -> common_pb2.Resources:
    return common_pb2.Resources(
        nodes=spec.nodes, cpus=spec.cpus, memory_mib=spec.memory_mib, gpus=spec.gpus,
        time_limit_minutes=spec.time_limit_minutes or 0, partition=spec.partition,
        account=spec.account)


def resource_request_from_proto(msg: common_pb2.Resources) -> ResourceRequest:
    return ResourceRequest(
        nodes=msg.nodes, cpus=msg.cpus, memory_mib=msg.memory_mib, gpus=msg.gpus,
        time_limit_minutes=msg.time_limit_minutes, partition=msg.partition, account=msg.account)


_POLICY_KINDS = {
    "never": server_pb2.RESTART_POLICY_KIND_NEVER,
    "on-failure": server_pb2.RESTART_POLICY_KIND_ON_FAILURE,
    "always": server_pb2.RESTART_POLICY_KIND_ALWAYS,
}
_POLICY_NAMES = {kind: name for name, kind in _POLICY_KINDS.items()}


def _duration(seconds: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def restart_to_proto(spec: RestartSpec) -> server_pb2.RestartPolicy:
    return server_pb2.RestartPolicy(
        kind=_POLICY_KINDS[spec.policy], max_restarts=spec.max_restarts,
        backoff=_duration(spec.backoff_seconds), max_backoff=_duration(spec.max_backoff_seconds))


def restart_override_from_proto(msg: server_pb2.RestartPolicy) -> RestartOverride:
    """A request's restart policy: unset fields keep the recipe's (an unknown kind is named)."""
    if msg.kind and msg.kind not in _POLICY_NAMES:
        policy = f"kind {msg.kind}"  # refused by merge_restart, naming the field
    else:
        policy = _POLICY_NAMES.get(msg.kind, "")
    return RestartOverride(
        policy=policy, max_restarts=msg.max_restarts if msg.HasField("max_restarts") else None,
        backoff_seconds=(msg.backoff.ToNanoseconds() / 1e9 if msg.HasField("backoff")
                         else None),
        max_backoff_seconds=(msg.max_backoff.ToNanoseconds() / 1e9
                             if msg.HasField("max_backoff") else None))


def replica_to_proto(record: ServiceRecord) -> server_pb2.Replica:
    msg = service_to_proto(record)
    return server_pb2.Replica(
        name=msg.name, index=record.replica, state=msg.state, job=msg.job,
        endpoint=msg.endpoint if record.endpoint_host else None, restarts=record.restarts,
        last_restart_reason=record.last_restart_reason, state_message=record.state_message,
        workers=record.workers)


def service_to_proto(record: ServiceRecord,
                     replicas: Sequence[ServiceRecord] = ()) -> server_pb2.Service:
    """A service; a replicated one with its active `replicas` (their records)."""
    job = server_pb2.SchedulerJob(
        scheduler=record.scheduler, job_id=record.job_id, raw_state=record.raw_state,
        reason=record.reason, nodes=record.nodes, stdout_path=record.stdout_path,
        stderr_path=record.stderr_path)
    if record.exit_code is not None:
        job.exit_code = record.exit_code
    if record.signal is not None:
        job.signal = record.signal
    msg = server_pb2.Service(
        name=record.name, recipe=record.recipe, parameters=record.parameters,
        labels=record.labels,
        state=server_pb2.ServiceState.Name(int(record.state)), owner=record.owner, job=job,
        state_message=record.state_message, resources=resources_to_proto(record.resources),
        create_time=_timestamp(record.create_time), update_time=_timestamp(record.update_time),
        trace_id=record.trace_id, revision=record.revision,
        restart_policy=restart_to_proto(record.restart), restarts=record.restarts,
        last_restart_reason=record.last_restart_reason, workers=record.workers,
        replicas=record.replicas, min_ready=record.min_ready or record.replicas,
        replica_status=[replica_to_proto(r) for r in replicas])
    if record.renew_before:
        msg.renew_before.CopyFrom(_duration(record.renew_before))
    if record.endpoint_host:
        msg.endpoint.CopyFrom(common_pb2.Endpoint(host=record.endpoint_host,
                                                  port=record.endpoint_port,
                                                  url=record.endpoint_url))
    if record.metrics_path:
        msg.metrics.CopyFrom(metrics_to_proto(record))
    return msg


def metrics_to_proto(record: ServiceRecord) -> server_pb2.MetricsEndpoint:
    """The recipe's metrics endpoint of a service; the URL once READY on a known port (the
    endpoint URL's scheme when on the endpoint's port, else http)."""
    port = record.endpoint_port if record.metrics_on_endpoint_port else record.metrics_port
    url = ""
    if record.state == ServiceState.READY and record.endpoint_host and port > 0:
        scheme = "http"
        if record.metrics_on_endpoint_port and "://" in record.endpoint_url:
            scheme = record.endpoint_url.split("://", 1)[0]
        host = record.endpoint_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        url = f"{scheme}://{host}:{port}{record.metrics_path}"
    return server_pb2.MetricsEndpoint(port=port, path=record.metrics_path, url=url)


def recipe_to_proto(recipe: Recipe, *, runnable: tuple[bool, str]) -> server_pb2.Recipe:
    """A recipe with its parameter schema, default resources and caps, and its source."""
    params = []
    for name, p in recipe.parameters.items():
        msg = server_pb2.RecipeParameter(
            name=name, type=p.type, description=p.description, default_value=p.default_text(),
            required=p.required, pattern=p.pattern or "",
            choices=[str(c) for c in p.choices or ()])
        if p.minimum is not None:
            msg.minimum = p.minimum
        if p.maximum is not None:
            msg.maximum = p.maximum
        params.append(msg)
    caps = recipe.resources.max.limits()
    max_res = common_pb2.Resources(
        nodes=caps.get("nodes") or 0, cpus=caps.get("cpus") or 0,
        memory_mib=caps.get("memory_mib") or 0, gpus=caps.get("gpus") or 0,
        time_limit_minutes=caps.get("time_limit_minutes") or 0)
    return server_pb2.Recipe(
        name=recipe.name, description=recipe.description,
        runtime=(server_pb2.RUNTIME_KIND_APPTAINER if recipe.runtime_kind == "apptainer"
                 else server_pb2.RUNTIME_KIND_NATIVE),
        parameters=params, default_resources=resources_to_proto(recipe.resources.defaults()),
        max_resources=max_res, source_yaml=recipe.source_yaml, runnable_here=runnable[0],
        not_runnable_reason=runnable[1])

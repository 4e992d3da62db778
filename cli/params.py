"""Parsing of repeated KEY=VALUE options, resource and restart flags into request fields."""

from __future__ import annotations

import typer

from aifb.mesh.units import ValueProblem
from aifb.mesh.units import parse_memory_mib as _memory_mib
from aifb.mesh.units import parse_time_minutes as _time_minutes
from aifb.v1 import common_pb2, server_pb2

__all__ = ["parse_params", "resources_from_options", "restart_from_options"]

RESTART_KINDS = {"never": server_pb2.RESTART_POLICY_KIND_NEVER,
                 "on-failure": server_pb2.RESTART_POLICY_KIND_ON_FAILURE,
                 "always": server_pb2.RESTART_POLICY_KIND_ALWAYS}


def restart_from_options(policy: str, max_restarts: int | None,
                         backoff: float | None) -> server_pb2.RestartPolicy:
    """--restart / --max-restarts / --restart-backoff; what is not given keeps the recipe's."""
    msg = server_pb2.RestartPolicy()
    if policy:
        if policy not in RESTART_KINDS:
            raise typer.BadParameter(f"got {policy!r}, expected one of "
                                     f"{', '.join(RESTART_KINDS)}", param_hint="--restart")
        msg.kind = RESTART_KINDS[policy]
    if max_restarts is not None:
        msg.max_restarts = max_restarts
    if backoff is not None:
        msg.backoff.FromNanoseconds(round(backoff * 1e9))
    return msg


def parse_params(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        if key in out:
            raise typer.BadParameter(f"{key!r} given twice", param_hint=option)
        out[key] = value
    return out


def resources_from_options(cpus: int, memory: str, gpus: int, time_limit: str, partition: str,
                           account: str) -> common_pb2.Resources:
    """The CLI's resource flags; sizes and times parse exactly as in recipes ("" = default)."""
    if cpus < 0 or gpus < 0:
        raise typer.BadParameter("must not be negative", param_hint="--cpus/--gpus")
    try:
        memory_mib = _memory_mib(memory) if memory else 0
    except ValueProblem as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory") from exc
    try:
        minutes = (_time_minutes(time_limit) or 0) if time_limit else 0
    except ValueProblem as exc:
        raise typer.BadParameter(str(exc), param_hint="--time") from exc
    return common_pb2.Resources(cpus=cpus, memory_mib=memory_mib, gpus=gpus,
                                time_limit_minutes=minutes, partition=partition,
                                account=account)

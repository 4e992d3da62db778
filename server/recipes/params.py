"""Merge the user's parameters and resource overrides into a recipe's typed, checked values.

Parameters arrive as text (`Mapping[str, str]` from the CLI or gRPC). Only declared names get
in; each value is parsed to its declared type and checked (bounds, full-match pattern, choices,
length, no NUL or control characters unless the parameter is `multiline`). Errors are
`RecipeError` with key `parameters.<name>`. Resource overrides follow the proto's `Resources`
(zero or empty = the recipe's default) and may not exceed the recipe's caps (`resources.max`);
errors are `InvalidArgument` naming `resources.<field>`. A restart override replaces the fields
of the recipe's `restart:` it sets, within the same bounds (`restart_policy.<field>`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aifb.mesh.errors import InvalidArgument, RecipeError
from aifb.server.jobs import ResourceSpec, RestartSpec
from aifb.server.recipes.schema import Recipe
from aifb.server.recipes.values import Value, ValueProblem, check_text, short_repr

__all__ = ["ResourceOverrides", "RestartOverride", "merge_params", "merge_resources",
           "merge_restart"]

_SLURM_NAME = re.compile(r"[A-Za-z0-9_.,-]{1,64}")
_INT32_MAX = 2**31 - 1


class ResourceOverrides(Protocol):
    """What `aifb.v1.Resources` and the server's ResourceRequest both look like."""

    @property
    def nodes(self) -> int: ...
    @property
    def cpus(self) -> int: ...
    @property
    def memory_mib(self) -> int: ...
    @property
    def gpus(self) -> int: ...
    @property
    def time_limit_minutes(self) -> int: ...
    @property
    def partition(self) -> str: ...
    @property
    def account(self) -> str: ...


def merge_params(recipe: Recipe, given: Mapping[str, str]) -> dict[str, Value]:
    """Declared defaults overlaid with the user's values, every one typed and checked."""
    valid = ", ".join(sorted(recipe.parameters)) or "(none)"
    for name in given:
        if name not in recipe.parameters:
            raise RecipeError(f"unknown parameter {short_repr(name)} for recipe {recipe.name!r}",
                              key="parameters", expected=f"one of: {valid}")
    values: dict[str, Value] = {}
    for name, param in recipe.parameters.items():
        key = f"parameters.{name}"
        if name in given:
            text = given[name]
            if not isinstance(text, str):
                raise RecipeError(f"got {type(text).__name__}", key=key, expected="text")
            try:
                values[name] = param.parse(text)
            except ValueProblem as exc:
                raise RecipeError(exc.message, key=key, expected=exc.expected) from None
        elif param.required:
            raise RecipeError("is required", key=key,
                              expected=f"a value: --param {name}=...")
        else:
            default = param.default_value()
            assert default is not None  # not required -> has a default (checked at load)
            values[name] = default
    return values


def _positive(field: str, value: int, cap: int | None) -> int | None:
    """None when the override is unset (0); else the checked value."""
    if value == 0:
        return None
    if value < 0:
        raise InvalidArgument(f"resources.{field}: got {value}, expected a positive number",
                              field=f"resources.{field}")
    if value > _INT32_MAX:
        raise InvalidArgument(f"resources.{field}: got {value}, above the largest aifb accepts "
                              f"({_INT32_MAX})", field=f"resources.{field}")
    if cap is not None and value > cap:
        raise InvalidArgument(
            f"resources.{field}: {value} is above this recipe's maximum {cap}",
            field=f"resources.{field}")
    return value


def _name(field: str, value: str) -> str | None:
    if not value:
        return None
    try:
        check_text(value, max_length=64, multiline=False)
    except ValueProblem as exc:
        raise InvalidArgument(f"resources.{field}: {exc}", field=f"resources.{field}") from None
    if not _SLURM_NAME.fullmatch(value):
        raise InvalidArgument(
            f"resources.{field}: got {short_repr(value)}, expected letters, digits, _ . , -",
            field=f"resources.{field}")
    return value


def merge_resources(recipe: Recipe, overrides: ResourceOverrides | None) -> ResourceSpec:
    """The recipe's default resources with the user's non-zero overrides, within the caps."""
    spec = recipe.resources.defaults()
    if overrides is None:
        return spec
    caps = recipe.resources.max.limits()
    nums = {f: _positive(f, int(getattr(overrides, f)), caps[f])
            for f in ("nodes", "cpus", "memory_mib", "gpus", "time_limit_minutes")}
    partition = _name("partition", str(overrides.partition))
    account = _name("account", str(overrides.account))
    return ResourceSpec(
        nodes=nums["nodes"] or spec.nodes, cpus=nums["cpus"] or spec.cpus,
        memory_mib=nums["memory_mib"] or spec.memory_mib, gpus=nums["gpus"] or spec.gpus,
        time_limit_minutes=nums["time_limit_minutes"] or spec.time_limit_minutes,
        partition=partition or spec.partition, account=account or spec.account)


@dataclass(frozen=True)
class RestartOverride:
    """A request's restart policy: each field set replaces the recipe's ("" / None: keep)."""

    policy: str = ""
    max_restarts: int | None = None
    backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None


_POLICIES = ("never", "on-failure", "always")
_MAX_RESTARTS = 10000


def _seconds(field: str, value: float | None, default: float, top: float) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or not 0 <= value <= top:
        raise InvalidArgument(f"restart_policy.{field}: got {value!r}, expected 0..{top:g} "
                              "seconds", field=f"restart_policy.{field}")
    return float(value)


def merge_restart(recipe: Recipe, override: RestartOverride | None) -> RestartSpec:
    """The recipe's `restart:` with the request's fields laid over it, checked."""
    base = recipe.restart
    if override is None:
        override = RestartOverride()
    policy = override.policy or base.policy
    if policy not in _POLICIES:
        raise InvalidArgument(f"restart_policy.policy: got {short_repr(policy)}, expected one "
                              f"of {', '.join(_POLICIES)}", field="restart_policy.policy")
    count = base.max_restarts if override.max_restarts is None else override.max_restarts
    if not 0 <= count <= _MAX_RESTARTS:
        raise InvalidArgument(f"restart_policy.max_restarts: got {count}, expected "
                              f"0..{_MAX_RESTARTS}", field="restart_policy.max_restarts")
    backoff = _seconds("backoff", override.backoff_seconds, base.backoff, 3600)
    top = _seconds("max_backoff", override.max_backoff_seconds, max(base.max_backoff, backoff),
                   86400)
    if top < backoff:
        raise InvalidArgument(f"restart_policy.max_backoff: {top:g}s is below the backoff "
                              f"{backoff:g}s", field="restart_policy.max_backoff")
    return RestartSpec(policy=policy, max_restarts=count,  # type: ignore[arg-type]
                       backoff_seconds=backoff, max_backoff_seconds=top)

"""The workload registry: every built-in (and plug-in) workload by name, with its parameter schema.

A workload kind is a name, a one-line description, a pydantic model of its parameters (whose JSON
Schema `ListWorkloads` publishes) and a `build(target_url, params)` factory. Building is cheap and
picklable inputs only (a name, a URL, a dict), so Spark executors rebuild the same workload from
the same three values.

    kind = get_kind("http")
    workload = build_workload("http", "http://127.0.0.1:8080", {"path": "/", "connections": 16})

A kind whose parameters can ask for a single engine (a params model with
`single_engine_reason()`, e.g. multi-turn sessions) is refused by `check_one_engine` on worker
processes or Spark partitions, before anything starts.

Built-in kinds live in the modules named in `_BUILTIN_MODULES`; each calls `register()` at import.
Third-party kinds register through the `aifb.workloads` entry-point group (an entry point names a
module, imported for its `register()` calls).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from aifb.client.engine.workload import Workload
from aifb.client.workloads.spread import Targets, spread
from aifb.mesh.errors import InvalidArgument

__all__ = ["SingleEngine", "WorkloadKind", "all_kinds", "build_workload", "check_one_engine",
           "get_kind", "parse_params", "register"]

log = logging.getLogger(__name__)

# Modules whose import registers the built-in workloads (add new built-ins here).
_BUILTIN_MODULES: tuple[str, ...] = (
    "aifb.client.workloads.http",
    "aifb.client.workloads.openai",
    "aifb.client.workloads.vectordb.workload",
)
_ENTRY_POINT_GROUP = "aifb.workloads"

_KINDS: dict[str, WorkloadKind] = {}
_loaded = False


@dataclass(frozen=True, slots=True)
class WorkloadKind:
    """One kind of workload: how to validate its parameters and build it against a target."""

    name: str
    description: str
    params: type[BaseModel]
    build: Callable[[str, Any], Workload]  # (target base URL, validated params model)

    def schema_json(self) -> str:
        """The parameters' JSON Schema (what ListWorkloads publishes)."""
        return json.dumps(self.params.model_json_schema(), sort_keys=True)


@runtime_checkable
class SingleEngine(Protocol):
    """Parameters that may need the whole load in one engine."""

    def single_engine_reason(self) -> str:
        """Why these parameters cannot be split over several engines; "" when they can."""


def register(kind: WorkloadKind) -> WorkloadKind:
    """Add `kind`; a second kind with the same name replaces the first (plug-ins may override)."""
    _KINDS[kind.name] = kind
    return kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=_ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":", 1)[0])
        except Exception:  # a broken plug-in must not take the built-ins down
            log.exception("workload plug-in %s could not be loaded", ep.name)


def all_kinds() -> list[WorkloadKind]:
    """Every registered kind, sorted by name."""
    _load()
    return [_KINDS[name] for name in sorted(_KINDS)]


def get_kind(name: str) -> WorkloadKind:
    """The kind called `name`; InvalidArgument naming the known kinds otherwise."""
    _load()
    try:
        return _KINDS[name]
    except KeyError:
        known = ", ".join(sorted(_KINDS)) or "none"
        raise InvalidArgument(f"unknown workload {name!r} (known: {known})",
                              field="workload") from None


def parse_params(kind: WorkloadKind, params: dict[str, Any]) -> BaseModel:
    """Validate `params` against the kind's model; the first problem names its key."""
    try:
        return kind.params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "params"
        raise InvalidArgument(f"workload {kind.name!r}: parameter {key}: {err['msg']}",
                              field=f"params.{key}") from None


def build_workload(name: str, target_url: str | Targets,
                   params: dict[str, Any] | None = None) -> Workload:
    """Validate and build workload `name` against `target_url`, or against each endpoint of
    `Targets` (a replicated service: see aifb.client.workloads.spread)."""
    kind = get_kind(name)
    parsed = parse_params(kind, params or {})
    if isinstance(target_url, Targets):
        return spread(lambda url: kind.build(url, parsed), target_url)
    return kind.build(target_url, parsed)


def check_one_engine(name: str, params: dict[str, Any] | None, engines: int, *,
                     field: str) -> None:
    """InvalidArgument naming `field` when workload `name` with `params` must run in one engine
    and would run in `engines` (0: as many as a Spark cluster gives)."""
    if engines == 1:
        return
    parsed = parse_params(get_kind(name), params or {})
    reason = parsed.single_engine_reason() if isinstance(parsed, SingleEngine) else ""
    if reason:
        raise InvalidArgument(f"workload {name!r}: {reason}; run it in one engine: the "
                              "in-process engine with 1 worker, or Spark with 1 partition",
                              field=field)

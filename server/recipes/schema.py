"""The typed schema of a recipe YAML file (pydantic v2), and its published JSON Schema.

Every model forbids unknown keys and names the valid ones (parameters and resources are in
`aifb.server.recipes.parts`, re-exported here). Cross-field checks (placeholders
naming declared parameters, port references) raise `SchemaProblem`, which pydantic lets
through untouched; `aifb.server.recipes.catalog` turns both kinds of error into `RecipeError`
naming the file, the key and what was expected.

Regenerate the committed JSON Schema after changing a model:

    .venv/bin/python -m aifb.server.recipes.schema recipes/schema.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, StrictInt, model_validator

from aifb.server.recipes.health import (
    ExecCheck,
    HttpCheck,
    Liveness,
    PortRef,
    Readiness,
    Restart,
    TcpCheck,
    UrlPath,
    Workers,
)
from aifb.server.recipes.parts import (
    Parameter,
    ResourceCaps,
    Resources,
    SchemaProblem,
    Strict,
    Text,
)
from aifb.server.recipes.values import BUILTINS, PLACEHOLDER, placeholder_names

__all__ = [
    "ApptainerRuntime",
    "ExecCheck",
    "HttpCheck",
    "Liveness",
    "MetricsEndpoint",
    "NativeRuntime",
    "Parameter",
    "Readiness",
    "Recipe",
    "ResourceCaps",
    "Resources",
    "Restart",
    "SchemaProblem",
    "TcpCheck",
    "Workers",
    "json_schema_text",
    "recipe_json_schema",
    "write_json_schema",
]

# The placeholder a worker command may use for the head's host name (filled in by the job).
HEAD_HOST = "head_host"
RecipeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
ParamName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
ProgramName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._+-]{1,128}$")]
RelPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")]


class NativeRuntime(Strict):
    kind: Literal["native"] = "native"


class ApptainerRuntime(Strict):
    """`apptainer exec [--nv] [--bind ...] [--env K=V ...] IMAGE argv...`; `--nv` when gpus > 0."""

    kind: Literal["apptainer"]
    image: Annotated[str, Field(pattern=r"^[^\x00-\x20][^\x00-\x1f]{0,1023}$")]
    binds: list[Annotated[str, Field(pattern=r"^[^,\s]{1,1024}$")]] = Field(default_factory=list)
    env: dict[EnvName, Text] = Field(default_factory=dict)


class MetricsEndpoint(Strict):
    """The service's own Prometheus endpoint, scraped by the telemetry agents on the host the
    job reports; `port` absent means the readiness check's port."""

    port: PortRef | None = None
    path: UrlPath = "/metrics"


class Recipe(Strict):
    """A service template. `source_yaml` and `path` are set by the loader, not by the file."""

    name: RecipeName
    description: Text = ""
    parameters: dict[ParamName, Parameter] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    runtime: Annotated[NativeRuntime | ApptainerRuntime, Field(discriminator="kind")] = Field(
        default_factory=NativeRuntime)
    command: Annotated[list[Annotated[str, Field(max_length=65536)]],
                       Field(min_length=1, max_length=1024)]
    env: dict[EnvName, Text] = Field(default_factory=dict)
    files: dict[RelPath, Annotated[str, Field(max_length=65536)]] = Field(default_factory=dict)
    readiness: Readiness
    liveness: Liveness | None = None
    restart: Restart = Field(default_factory=Restart)
    workers: Workers | None = None
    # Replicas a service of this recipe gets unless the request says (each its own job).
    replicas: Annotated[StrictInt, Field(ge=1, le=1000)] = 1
    # Seconds before a replica's time limit at which a successor replaces it (0: never).
    renew_before: Annotated[float, Field(ge=0, le=7 * 86400)] = 0.0
    logs: list[Annotated[str, Field(pattern=r"^[^\x00-\x1f]{1,4096}$")]] = Field(
        default_factory=list)
    # Absent, null or false: the service serves no Prometheus metrics; nothing is scraped.
    metrics: MetricsEndpoint | Literal[False] | None = None
    requires: list[ProgramName] = Field(default_factory=list)

    _source_yaml: str = PrivateAttr(default="")
    _path: Path | None = PrivateAttr(default=None)

    @property
    def source_yaml(self) -> str:
        return self._source_yaml

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def runtime_kind(self) -> Literal["native", "apptainer"]:
        return self.runtime.kind

    @property
    def metrics_endpoint(self) -> MetricsEndpoint | None:
        """The declared metrics endpoint, or None (absent, null or false)."""
        return self.metrics if isinstance(self.metrics, MetricsEndpoint) else None

    def metrics_port_ref(self) -> int | str | None:
        """The metrics port as written, the readiness port when omitted; None without metrics."""
        endpoint = self.metrics_endpoint
        if endpoint is None:
            return None
        return endpoint.port if endpoint.port is not None else self.readiness.port

    def with_source(self, source_yaml: str, path: Path | None) -> Recipe:
        self._source_yaml = source_yaml
        self._path = path
        return self

    def templates(self) -> dict[str, str]:
        """Every text that may hold placeholders, by its key in the file."""
        out = {f"command[{i}]": arg for i, arg in enumerate(self.command)}
        out.update({f"env.{k}": v for k, v in self.env.items()})
        out.update({f"files.{k}": v for k, v in self.files.items()})
        out.update({f"logs[{i}]": v for i, v in enumerate(self.logs)})
        if isinstance(self.runtime, ApptainerRuntime):
            out["runtime.image"] = self.runtime.image
            out.update({f"runtime.binds[{i}]": v for i, v in enumerate(self.runtime.binds)})
            out.update({f"runtime.env.{k}": v for k, v in self.runtime.env.items()})
        for key, probe in (("readiness", self.readiness), ("liveness", self.liveness)):
            if probe is not None and probe.exec is not None:
                out.update({f"{key}.exec.command[{i}]": a
                            for i, a in enumerate(probe.exec.command)})
        if self.workers is not None:
            out.update({f"workers.command[{i}]": a for i, a in enumerate(self.workers.command)})
        return out

    def port_refs(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {}
        for key, probe in (("readiness", self.readiness), ("liveness", self.liveness)):
            if probe is not None and probe.check.port is not None:
                port = probe.check.port
                out[f"{key}.{probe.kind}.port"] = port
        endpoint = self.metrics_endpoint
        if endpoint is not None and endpoint.port is not None:
            out["metrics.port"] = endpoint.port
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        known = set(self.parameters) | BUILTINS
        for name in self.parameters:
            if name in BUILTINS:
                raise SchemaProblem(f"parameters.{name}", "reserved name",
                                    "a name other than " + ", ".join(sorted(BUILTINS)))
        for key, text in self.templates().items():
            # Only the workers know the head's host (the job fills it in).
            here = known | {HEAD_HOST} if key.startswith("workers.") else known
            for name in placeholder_names(text):
                if name not in here:
                    raise SchemaProblem(key, f"unknown placeholder {{{{ {name} }}}}",
                                        "one of: " + ", ".join(sorted(here)))
            rest = PLACEHOLDER.sub("", text)
            if "{{" in rest or "}}" in rest:
                raise SchemaProblem(key, "malformed placeholder", "{{ name }}")
        for rel in self.files:
            if any(part in ("", ".", "..") for part in rel.split("/")):
                raise SchemaProblem(f"files.{rel}", "not a plain relative path",
                                    "a path inside the workdir without '.' or '..' parts")
        programs = {"command[0]": self.command[0]}
        if self.workers is not None:
            programs["workers.command[0]"] = self.workers.command[0]
        for key, probe in (("readiness", self.readiness), ("liveness", self.liveness)):
            if probe is not None and probe.exec is not None:
                programs[f"{key}.exec.command[0]"] = probe.exec.command[0]
        for key, program in programs.items():
            if placeholder_names(program):
                raise SchemaProblem(key, "the program may not come from a parameter",
                                    "a fixed program name or path")
        for key, ref in self.port_refs().items():
            if isinstance(ref, str):
                name = placeholder_names(ref)[0]
                param = self.parameters.get(name)
                if param is None or param.type not in ("int", "port"):
                    raise SchemaProblem(key, f"{ref} is not an int or port parameter",
                                        "a port number or {{ name }} of an int/port parameter")
        for key in [*self.env, *(getattr(self.runtime, "env", {}))]:
            if key.startswith("AIFB_"):
                raise SchemaProblem(f"env.{key}", "AIFB_* variables are reserved",
                                    "a name not starting with AIFB_")
        return self


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file, as committed in recipes/schema.json."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://aifb.dev/schemas/recipe.json"
    return schema


def json_schema_text() -> str:
    return json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path) -> None:
    path.write_text(json_schema_text(), encoding="utf-8")


if __name__ == "__main__":  # python -m aifb.server.recipes.schema recipes/schema.json
    write_json_schema(Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/schema.json"))

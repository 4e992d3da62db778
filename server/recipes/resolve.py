"""From a recipe and the user's input to a ResolvedService, and from that to a JobSpec.

`resolve` types and checks the parameters and resources and substitutes placeholders;
`build_job_spec` adds what only the server knows (service id, workdir, interpreter, the
reporting environment). Substitution is one pass per text (see `aifb.server.recipes.values`),
so builtins (`{{ workdir }}`, `{{ service_id }}`) are substituted in the same pass as the
parameters, in `build_job_spec`; a port parameter whose value is 0 stays as its token
``{{ name }}`` and is listed in `auto_ports` for the in-job entry point to fill in.

The recipe's `metrics:` key becomes a `MetricsTarget` (the server publishes it in the Service
the agents discover) and two variables of the job's environment for the in-job sidecar:
`AIFB_METRICS_PATH` (the path, or "off" when the recipe declares no metrics) and
`AIFB_METRICS_PORT` (the port, an auto port's token until the entry point fills it in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from aifb.server.jobs import (
    ContainerSpec,
    JobSpec,
    LivenessSpec,
    ReadinessSpec,
    ResourceSpec,
    RestartSpec,
    WorkersSpec,
)
from aifb.server.recipes.health import HttpCheck, Liveness
from aifb.server.recipes.params import (
    ResourceOverrides,
    RestartOverride,
    merge_params,
    merge_resources,
    merge_restart,
)
from aifb.server.recipes.schema import ApptainerRuntime, Recipe
from aifb.server.recipes.values import (
    Value,
    canonical_text,
    placeholder_names,
    render,
    token,
)

__all__ = ["MetricsTarget", "ResolvedService", "build_job_spec", "resolve"]


@dataclass(frozen=True)
class MetricsTarget:
    """Where a service's own Prometheus metrics are: `path` on `port` of the host the job
    reports. `on_endpoint_port`: the port is the readiness check's (so the endpoint's, even
    when auto); otherwise `port` is fixed, or 0 for an auto port only the job learns."""

    path: str
    port: int = 0
    on_endpoint_port: bool = False


@dataclass(frozen=True)
class ResolvedService:
    """A recipe with checked values. `argv`, `env`, ... have the builtins still as tokens."""

    recipe: Recipe
    values: Mapping[str, Value]
    resources: ResourceSpec
    readiness: ReadinessSpec
    auto_ports: tuple[str, ...]
    metrics_port: int | None = None
    metrics_port_param: str = ""
    metrics_path: str = ""
    lookup: Mapping[str, str] = field(default_factory=dict)
    metrics_on_endpoint_port: bool = False
    liveness: LivenessSpec | None = None
    restart: RestartSpec = field(default_factory=RestartSpec)

    def parameter_text(self) -> dict[str, str]:
        """Every parameter's value as canonical text (auto ports read "0")."""
        return {name: canonical_text(v) for name, v in self.values.items()}

    @property
    def metrics(self) -> MetricsTarget | None:
        """The recipe's metrics endpoint with this service's values; None when it has none."""
        if not self.metrics_path:
            return None
        return MetricsTarget(path=self.metrics_path, port=self.metrics_port or 0,
                             on_endpoint_port=self.metrics_on_endpoint_port)

    def metrics_environment(self) -> dict[str, str]:
        """AIFB_METRICS_PATH / AIFB_METRICS_PORT for the in-job sidecar (see module doc)."""
        if not self.metrics_path:
            return {"AIFB_METRICS_PATH": "off"}
        port = (token(self.metrics_port_param) if self.metrics_port_param in self.auto_ports
                else str(self.metrics_port))
        return {"AIFB_METRICS_PATH": self.metrics_path, "AIFB_METRICS_PORT": port}

    def render(self, template: str, builtins: Mapping[str, str] | None = None) -> str:
        return render(template, {**self.lookup, **(builtins or {})})

    @property
    def argv(self) -> tuple[str, ...]:
        return tuple(self.render(a) for a in self.recipe.command)

    @property
    def env(self) -> dict[str, str]:
        return {k: self.render(v) for k, v in self.recipe.env.items()}

    def container(self, builtins: Mapping[str, str] | None = None) -> ContainerSpec | None:
        rt = self.recipe.runtime
        if not isinstance(rt, ApptainerRuntime):
            return None
        return ContainerSpec(
            image=self.render(rt.image, builtins),
            binds=tuple(self.render(b, builtins) for b in rt.binds),
            env={k: self.render(v, builtins) for k, v in sorted(rt.env.items())},
            nv=self.resources.gpus > 0)


def _port(ref: int | str, values: Mapping[str, Value], auto: tuple[str, ...]) -> tuple[int, str]:
    """(port, parameter name) for a readiness or metrics port reference."""
    if isinstance(ref, int):
        return ref, ""
    name = placeholder_names(ref)[0]
    value = values[name]
    return (0 if name in auto else int(value)), name


def _liveness(probe: Liveness | None, values: Mapping[str, Value],
              auto: tuple[str, ...]) -> LivenessSpec | None:
    if probe is None:
        return None
    check = probe.check
    port, port_param = (0, "") if check.port is None else _port(check.port, values, auto)
    return LivenessSpec(
        kind=probe.kind, port=port, port_param=port_param,
        path=check.path if isinstance(check, HttpCheck) else "/",
        status=(check.status or 0) if isinstance(check, HttpCheck) else 0,
        command=tuple(probe.exec.command) if probe.exec else (),
        interval_seconds=probe.interval, probe_timeout_seconds=probe.probe_timeout,
        failure_threshold=probe.failure_threshold, initial_delay_seconds=probe.initial_delay)


def resolve(recipe: Recipe, params: Mapping[str, str],
            resources: ResourceOverrides | None = None,
            restart: RestartOverride | None = None) -> ResolvedService:
    """Type and check `params`, `resources` and `restart` against `recipe`
    (RecipeError/InvalidArgument)."""
    values = merge_params(recipe, params)
    spec = merge_resources(recipe, resources)
    auto = tuple(n for n, p in recipe.parameters.items() if p.type == "port" and values[n] == 0)
    lookup = {n: canonical_text(v) for n, v in values.items() if n not in auto}
    probe = recipe.readiness
    check = probe.check
    port, port_param = _port(probe.port, values, auto)
    readiness = ReadinessSpec(
        kind=probe.kind, port=port, path=check.path if isinstance(check, HttpCheck) else "/",
        timeout_seconds=probe.timeout, port_param=port_param,
        status=(check.status or 0) if isinstance(check, HttpCheck) else 0,
        command=tuple(probe.exec.command) if probe.exec else (),
        interval_seconds=probe.interval, probe_timeout_seconds=probe.probe_timeout)
    metrics_port, metrics_param, metrics_path, on_endpoint = None, "", "", False
    metrics_ref = recipe.metrics_port_ref()
    if recipe.metrics_endpoint is not None and metrics_ref is not None:
        metrics_port, metrics_param = _port(metrics_ref, values, auto)
        metrics_path = recipe.metrics_endpoint.path
        on_endpoint = metrics_ref == probe.port or (metrics_param != ""
                                                    and metrics_param == port_param)
    return ResolvedService(recipe=recipe, values=values, resources=spec, readiness=readiness,
                           auto_ports=auto, metrics_port=metrics_port,
                           metrics_port_param=metrics_param, metrics_path=metrics_path,
                           lookup=lookup, metrics_on_endpoint_port=on_endpoint,
                           liveness=_liveness(recipe.liveness, values, auto),
                           restart=merge_restart(recipe, restart))


def build_job_spec(resolved: ResolvedService, *, service_id: str, job_name: str,
                   workdir: Path | str, python: str,
                   environment: Mapping[str, str], attempt: int = 0) -> JobSpec:
    """The JobSpec of one service: stdout/stderr go to `job.out`/`job.err` inside `workdir`
    (`job.N.out`/`job.N.err` for the N-th job that replaces an ended one, so the earlier jobs'
    output stays); `environment` (AIFB_SERVER, AIFB_SERVICE, ...) is added to the recipe's
    `env`."""
    wd = str(workdir)
    builtins = {"workdir": wd, "service_id": service_id}
    recipe = resolved.recipe
    env = {k: resolved.render(v, builtins) for k, v in recipe.env.items()}
    env.update(resolved.metrics_environment())
    env.update(environment)

    def probe_argv(command: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(resolved.render(a, builtins) for a in command)

    readiness = replace(resolved.readiness, command=probe_argv(resolved.readiness.command))
    liveness = resolved.liveness and replace(resolved.liveness,
                                             command=probe_argv(resolved.liveness.command))
    workers = None if recipe.workers is None else WorkersSpec(
        command=probe_argv(tuple(recipe.workers.command)), per_node=recipe.workers.per_node,
        on_head=recipe.workers.on_head)
    return JobSpec(
        service_id=service_id, job_name=job_name, recipe=recipe.name,
        command=tuple(resolved.render(a, builtins) for a in recipe.command),
        resources=resolved.resources, workdir=wd,
        stdout_path=str(Path(wd) / (f"job.{attempt}.out" if attempt else "job.out")),
        stderr_path=str(Path(wd) / (f"job.{attempt}.err" if attempt else "job.err")),
        readiness=readiness, liveness=liveness, restart=resolved.restart, workers=workers,
        python=python, runtime=recipe.runtime_kind,
        container=resolved.container(builtins), environment=dict(sorted(env.items())),
        auto_ports=resolved.auto_ports,
        log_files=tuple(resolved.render(p, builtins) for p in recipe.logs),
        files={k: resolved.render(v, builtins) for k, v in sorted(recipe.files.items())})

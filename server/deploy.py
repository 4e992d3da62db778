"""From recipe + parameters to a JobSpec and its batch script; recipes as protobuf messages."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aifb.mesh.config import Config
from aifb.mesh.errors import InvalidArgument
from aifb.server.batch import render_batch_script
from aifb.server.jobs import JobSpec
from aifb.server.recipes.catalog import RecipeCatalog, runnable_here
from aifb.server.recipes.params import RestartOverride
from aifb.server.recipes.resolve import MetricsTarget, build_job_spec, resolve
from aifb.server.recipes.schema import Recipe

__all__ = ["Deployer", "Prepared", "ResourceRequest", "job_name_for", "job_search_path"]

# RenderService shows the script for this id; CreateService uses the real one.
PLACEHOLDER_ID = "render-only"


def job_search_path(python: str, environ: Mapping[str, str] | None = None) -> str:
    """The PATH every job gets: the interpreter's folder first (a venv's `bin`, where pip put
    `chroma` or `aifb-fake-llm`, whether or not the venv was activated), then the server's PATH
    with relative entries made absolute: a job runs in its own workdir, where `.venv/bin` names
    nothing (the recipe list said "runnable", and the job failed "No such file or directory")."""
    env = os.environ if environ is None else environ
    entries = [str(Path(python).parent)]
    entries += [os.path.abspath(p) for p in env.get("PATH", os.defpath).split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(entries))


def job_name_for(recipe: str, service_id: str, attempt: int = 0) -> str:
    """The batch job's name: unique per service and job (`-rN` for the N-th replacement of an
    ended job), so a submission the server did not get to record (it was killed while sbatch
    ran) is found again by name, and never mistaken for the job it replaced."""
    return f"aifb-{recipe}-{service_id}" + (f"-r{attempt}" if attempt else "")


@dataclass(frozen=True)
class ResourceRequest:
    """What the user asked for on top of the recipe's defaults; zero or empty = default."""

    nodes: int = 0
    cpus: int = 0
    memory_mib: int = 0
    gpus: int = 0
    time_limit_minutes: int = 0
    partition: str = ""
    account: str = ""


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec
    script: str
    parameters: dict[str, str]
    # The recipe's `metrics:` endpoint with this service's values; None when it has none.
    metrics: MetricsTarget | None = None


class Deployer:
    def __init__(self, catalog: RecipeCatalog, *, python: str) -> None:
        self.catalog = catalog
        self.python = python
        # Added to every job's environment (the sidecar switch, see aifb.server.sidecars; the
        # PATH, see job_search_path).
        self.environment: dict[str, str] = {}

    def which(self, program: str) -> str | None:
        """Where a job finds `program`: the jobs' own PATH, so that what `runnable_here` calls
        runnable is what a job can start."""
        return shutil.which(program, path=self.environment.get("PATH"))

    def recipes(self) -> list[tuple[Recipe, tuple[bool, str]]]:
        """Every recipe, with whether its programs are found where jobs look (and why not)."""
        return [(r, runnable_here(r, self.which)) for r in self.catalog.list()]

    def default_replicas(self, name: str) -> int:
        """The recipe's `replicas:` (1 unless it asks for more)."""
        return self.catalog.get(name).replicas

    def default_renew_before(self, name: str) -> float:
        """The recipe's `renew_before:` seconds (0: no renewal)."""
        return self.catalog.get(name).renew_before

    def recipe(self, name: str) -> tuple[Recipe, tuple[bool, str]]:
        if not name:
            raise InvalidArgument("name is required", field="name")
        recipe = self.catalog.get(name)
        return recipe, runnable_here(recipe, self.which)

    @classmethod
    def from_config(cls, config: Config, *, python: str) -> Deployer:
        dirs = [Path(d).expanduser() for d in config.server.recipe_dirs]
        return cls(RecipeCatalog(dirs), python=python)

    def prepare(self, recipe: str, params: Mapping[str, str], resources: ResourceRequest, *,
                service_id: str, workdir: Path, environment: Mapping[str, str],
                restart: RestartOverride | None = None, attempt: int = 0) -> Prepared:
        resolved = resolve(self.catalog.get(recipe), params, resources, restart)
        spec = build_job_spec(resolved, service_id=service_id,
                              job_name=job_name_for(recipe, service_id, attempt),
                              workdir=workdir, python=self.python,
                              environment={**self.environment, **environment},
                              attempt=attempt)
        return Prepared(spec=spec, script=render_batch_script(spec),
                        parameters=resolved.parameter_text(), metrics=resolved.metrics)

    def render(self, recipe: str, params: Mapping[str, str], resources: ResourceRequest, *,
               jobs_dir: Path, restart: RestartOverride | None = None) -> Prepared:
        """The script CreateService would submit, with placeholders for what only a create
        makes; `jobs_dir` is the server's own (`<home>/jobs`), so the workdir shown is real."""
        env = {"AIFB_SERVICE": f"services/{PLACEHOLDER_ID}", "AIFB_SERVER": "<server address>",
               "AIFB_REPORT_TOKEN": "<generated at create time>"}
        return self.prepare(recipe, params, resources, service_id=PLACEHOLDER_ID,
                            workdir=jobs_dir / PLACEHOLDER_ID, environment=env, restart=restart)

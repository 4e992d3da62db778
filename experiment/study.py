"""A study file: which deployments to compare, under which load, how often, and within what limits.

    study = load_study_file("nginx-workers.yaml")   # InvalidArgument: "file:line:col: field: ..."
    configurations(study)                           # aifb.experiment.expand

A study is services (grids of recipe parameters and resources) x workloads (each with its load
levels: `rates`, `concurrencies`, a saturation `sweep` or a rate `search`) x `repeats`. Every
model forbids unknown keys and names the valid ones; values are kept in one normal form
(`aifb.experiment.study_fields`), so `Study.to_dict()` -> `Study.from_dict()` gives back an
equal study and the same configurations in the same order. Every problem is an
`InvalidArgument` whose message names the file, the line and column, and the field
(`nginx.yaml:12:7: workloads[0].rates[1]: must be > 0, got -5`) and whose `field` is that
dotted path; a missing key is reported where its parent is written.

Bounds: one service grid is at most 1024 configurations (before `exclude`), the study at most
10,000 trials (configurations x levels x repeats, a search counting its `max_trials`).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aifb.experiment.study_fields import (
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    MAX_LEVELS,
    MAX_RATE,
    RESOURCE_NAMES,
    Axis,
    ExcludeEntries,
    Labels,
    Ratio,
    ResourceAxesMap,
    Seconds,
    SloMap,
    TextMap,
    ZipGroups,
)
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.yamlfile import YamlDoc, describe, load_yaml, load_yaml_file, path_text, problem

__all__ = [
    "MAX_CONFIGURATIONS",
    "MAX_GRIDS",
    "MAX_GRID_ENTRIES",
    "MAX_TRIALS",
    "METRICS",
    "GridAxis",
    "Limits",
    "Load",
    "Objective",
    "Search",
    "ServiceGrid",
    "Study",
    "Sweep",
    "Workload",
    "load_study",
    "load_study_file",
]

MAX_CONFIGURATIONS = 1024  # one service grid, before `exclude`
MAX_TRIALS = 10_000
MAX_GRIDS = 64
# What one grid may list (a client may send 16 MiB of them: the grid's product and its
# excluded points are computed once per configuration and exclude rule).
MAX_GRID_ENTRIES = {"parameters": 64, "zip": 64, "exclude": MAX_CONFIGURATIONS}
METRICS = ("achieved_rate", "ok_rate", "latency_p50", "latency_p99", "ttft_p99", "tpot_p99",
           "output_tokens_per_second", "error_ratio", "best_rate")
_GRID_NAME = r"^[a-z][a-z0-9_-]{0,62}$"
_SPARK_MASTER = r"^(local(\[(\d+|\*)\])?|spark://[A-Za-z0-9.-]+:\d{1,5})$"

GridName = Annotated[str, Field(pattern=_GRID_NAME)]
ParamName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Rate = Annotated[float, Field(gt=0, le=MAX_RATE, allow_inf_nan=False)]
Concurrency = Annotated[int, Field(gt=0, le=MAX_CONCURRENCY)]
Metric = Literal["achieved_rate", "ok_rate", "latency_p50", "latency_p99", "ttft_p99",
                 "tpot_p99", "output_tokens_per_second", "error_ratio", "best_rate"]
LoadSeconds = Annotated[Seconds, Field(ge=0, le=MAX_DURATION_S)]
PositiveSeconds = Annotated[Seconds, Field(gt=0, le=MAX_DURATION_S)]


class Strict(BaseModel):
    """Unknown keys are errors naming the valid ones; values are not coerced; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise problem("unknown key; expected one of: " + ", ".join(cls.model_fields),
                                  key if isinstance(key, str | int) else str(key))
        return data


def _named_after(data: Any, source: str) -> Any:
    """A grid's `name` defaults to its recipe / workload (when that one is a valid name)."""
    if (isinstance(data, dict) and "name" not in data and isinstance(data.get(source), str)
            and re.match(_GRID_NAME, data[source])):
        return {"name": data[source], **data}
    return data


@dataclass(frozen=True, slots=True)
class GridAxis:
    """One axis of a service grid: a parameter, a resource, or a zip group (several keys that
    move together). `values[i]` holds one value per key."""

    keys: tuple[tuple[str, str], ...]  # (section, name); section "parameters" | "resources"
    values: tuple[tuple[str, ...], ...]

    @property
    def varies(self) -> bool:
        return len(self.values) > 1


class ServiceGrid(Strict):
    """One recipe and the values its configurations take.

    The product runs over the axes in this order, the last one fastest: `parameters` as
    written, then `resources` as written, then each `zip` group as one axis. A key of `zip` or
    `exclude` names a resource when it is one of nodes, cpus, memory, gpus, time, partition,
    account, and a recipe parameter otherwise."""

    name: GridName = Field("", description="unique among services; default: the recipe")
    recipe: GridName
    parameters: dict[ParamName, Axis] = Field(
        default_factory=dict, description="recipe parameter -> a value or a list of values")
    resources: ResourceAxesMap = Field(
        default_factory=dict, description="resource -> a value or a list of values")
    zip: ZipGroups = Field(default_factory=list, description=(
        "groups of axes (parameters or resources) whose equal-length lists move together"))
    exclude: ExcludeEntries = Field(default_factory=list, description=(
        "points left out of the product: every key given must match"))

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, limit in MAX_GRID_ENTRIES.items():
                value = data.get(key)
                if isinstance(value, dict | list) and len(value) > limit:
                    raise problem(f"at most {limit} entries, got {len(value)}", key)
        return _named_after(data, "recipe")

    def axes(self) -> list[GridAxis]:
        out = [GridAxis((("parameters", k),), tuple((v,) for v in vals))
               for k, vals in self.parameters.items()]
        out += [GridAxis((("resources", k),), tuple((v,) for v in vals))
                for k, vals in self.resources.items()]
        for group in self.zip:
            keys = tuple((_section(k), k) for k in group)
            out.append(GridAxis(keys, tuple(zip(*group.values(), strict=True))))
        return out

    def product_size(self) -> int:
        """Configurations before `exclude`."""
        return math.prod(len(axis.values) for axis in self.axes())

    def keys(self) -> list[tuple[str, str]]:
        """(section, name) of every value of a point, in axis order."""
        return [key for axis in self.axes() for key in axis.keys]

    def points(self) -> list[tuple[str, ...]]:
        """Every configuration's values (aligned with `keys()`), in product order, without the
        excluded ones."""
        return list(self._points)

    @functools.cached_property
    def _points(self) -> tuple[tuple[str, ...], ...]:  # (computed once: the grid is frozen)
        index = {key: i for i, key in enumerate(self.keys())}
        product = [tuple(v for level in combo for v in level)
                   for combo in itertools.product(*(axis.values for axis in self.axes()))]
        # Which points hold each (axis, value), as bits: a rule is the AND of its values'.
        holds: dict[tuple[int, str], int] = {}
        for n, point in enumerate(product):
            for i, value in enumerate(point):
                holds[(i, value)] = holds.get((i, value), 0) | 1 << n
        excluded = 0
        for entry in self.exclude:
            matched = (1 << len(product)) - 1
            for key, value in entry.items():
                matched &= holds.get((index[(_section(key), key)], value), 0)
            excluded |= matched
        return tuple(p for n, p in enumerate(product) if not excluded >> n & 1)

    @model_validator(mode="after")
    def _grid(self) -> ServiceGrid:
        axes = {("parameters", k) for k in self.parameters}
        axes |= {("resources", k) for k in self.resources}
        zipped: dict[tuple[str, str], int] = {}
        for g, group in enumerate(self.zip):
            for key in group:
                sk = (_section(key), key)
                if sk in axes:
                    raise problem(f"{key} is also a grid axis ({sk[0]}.{key}); an axis is "
                                  "either in the product or in a zip group", "zip", g, key)
                if sk in zipped:
                    raise problem(f"{key} is also in zip[{zipped[sk]}]", "zip", g, key)
                zipped[sk] = g
            lengths = {k: len(v) for k, v in group.items()}
            if len(set(lengths.values())) > 1:
                sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                raise problem(f"the lists of a zip group move together and need equal "
                              f"lengths, got {sizes}", "zip", g)
        values = {k: {lv[i] for lv in a.values} for a in self.axes() for i, k in
                  enumerate(a.keys)}
        for e, entry in enumerate(self.exclude):
            for key, value in entry.items():
                sk = (_section(key), key)
                if sk not in values:
                    known = ", ".join(k for _, k in values) or "(none)"
                    raise problem(f"not an axis of this grid; expected one of: {known}",
                                  "exclude", e, key)
                if value not in values[sk]:
                    raise problem(f"{value!r} is not one of the values of {key}: "
                                  + ", ".join(sorted(values[sk])), "exclude", e, key)
        size = self.product_size()
        if size > MAX_CONFIGURATIONS:
            sizes = " x ".join(str(len(a.values)) for a in self.axes())
            raise problem(f"{size} configurations ({sizes}); a grid holds at most "
                          f"{MAX_CONFIGURATIONS}: drop values, or zip axes that move together")
        if not self.points():
            raise problem("exclude removes every configuration of this grid", "exclude")
        return self


def _section(key: str) -> str:
    return "resources" if key in RESOURCE_NAMES else "parameters"


class Load(Strict):
    """The load options every level of a workload shares (as `aifb bench run` takes them)."""

    duration: PositiveSeconds = 10.0
    warmup: LoadSeconds = 0.0
    cooldown: LoadSeconds = 0.0
    error_budget: Ratio | None = None  # None: the BenchmarkService's default (5%)
    arrival: Literal["constant", "poisson"] = "constant"
    burstiness: Annotated[float, Field(ge=0.01, le=100)] = 1.0
    max_requests: Annotated[int, Field(ge=0, le=1_000_000_000)] = 0  # 0: no bound
    engine: Literal["inprocess", "spark"] = "inprocess"
    spark_master: Annotated[str, Field(pattern=_SPARK_MASTER)] | None = None
    partitions: Annotated[int, Field(ge=0, le=1024)] = 0  # 0: the Spark master's parallelism
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    record_samples: bool = False
    slo: SloMap = Field(default_factory=dict)

    @property
    def trial_seconds(self) -> float:
        """How long one trial at one level runs: warmup + duration + cooldown."""
        return self.warmup + self.duration + self.cooldown

    @model_validator(mode="after")
    def _budget(self) -> Load:
        if self.error_budget == 0:
            # The wire (proto3) cannot tell 0 from unset: the BenchmarkService would read it
            # as its 5 % default. Say so rather than run with a budget nobody asked for.
            raise problem("0 cannot be sent (it reads as the service's 5 % default); give "
                          "a small ratio such as 0.0001 for (almost) no errors",
                          "error_budget")
        return self


class Sweep(Strict):
    """The BenchmarkService's saturation sweep (closed loop up to `max_concurrency`): one trial."""

    max_concurrency: Concurrency = 64


class Search(Strict):
    """The highest rate that meets `slo`, by bisection between a passing and a failing rate.

    `min` / `max` absent mean start/1024 and start*1024 (capped at 1e6): `min_rate` and
    `max_rate` give the bounds in force."""

    slo: SloMap
    start: Rate
    min: Rate | None = None
    max: Rate | None = None
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    max_trials: Annotated[int, Field(ge=1, le=100)] = 12

    @property
    def min_rate(self) -> float:
        return self.min if self.min is not None else self.start / 1024

    @property
    def max_rate(self) -> float:
        return self.max if self.max is not None else min(self.start * 1024, MAX_RATE)

    @model_validator(mode="after")
    def _bounds(self) -> Search:
        if not self.slo:
            raise problem("a search needs an SLO to meet, such as {p99: 50ms, errors: 1%}",
                          "slo")
        if self.min is not None and self.min > self.start:
            raise problem(f"must be <= start ({self.start:g}), got {self.min:g}", "min")
        if self.max is not None and self.max < self.start:
            raise problem(f"must be >= start ({self.start:g}), got {self.max:g}", "max")
        if self.min_rate <= 0:  # start / 1024 underflows: the search could not run
            raise problem(f"too small for the default min (start / 1024), got {self.start:g}: "
                          "give min", "start")
        return self


_LEVEL_KEYS = ("rates", "concurrencies", "sweep", "search")


def _distinct(name: str, values: list[Any]) -> None:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise problem(f"duplicate level {value:g} (also at [{values.index(value)}])", name, i)


class Workload(Strict):
    """A BenchmarkService workload (`http`, `openai-chat`, `openai-completions`, `vectordb`, or
    a plug-in's; the service checks the kind and its parameters) and exactly one of `rates`
    (open loop), `concurrencies` (closed loop), `sweep` or `search`."""

    name: GridName = Field("", description="unique among workloads; default: the workload")
    workload: GridName = Field(description="http, openai-chat, openai-completions, vectordb")
    parameters: TextMap = Field(default_factory=dict)
    load: Load = Field(default_factory=Load)
    rates: Annotated[list[Rate], Field(min_length=1, max_length=MAX_LEVELS)] | None = Field(
        None, description="open loop: requests/s, one trial each")
    concurrencies: Annotated[list[Concurrency],
                             Field(min_length=1, max_length=MAX_LEVELS)] | None = Field(
        None, description="closed loop: concurrent users, one trial each")
    sweep: Sweep | None = Field(None, description="the saturation sweep: one trial")
    search: Search | None = Field(None, description="the highest rate that meets an SLO")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        return _named_after(data, "workload")

    @property
    def level_kind(self) -> Literal["rate", "concurrency", "sweep", "search"]:
        if self.rates is not None:
            return "rate"
        if self.concurrencies is not None:
            return "concurrency"
        return "sweep" if self.sweep is not None else "search"

    def trial_count(self) -> int:
        """Trials per configuration and repeat, at most (a search counts its max_trials)."""
        if self.rates is not None:
            return len(self.rates)
        if self.concurrencies is not None:
            return len(self.concurrencies)
        return 1 if self.search is None else self.search.max_trials

    @model_validator(mode="after")
    def _levels(self) -> Workload:
        given = [k for k in _LEVEL_KEYS if getattr(self, k) is not None]
        if not given:
            raise problem("missing its load levels: give exactly one of rates, concurrencies, "
                          "sweep or search")
        if len(given) > 1:
            raise problem(f"{given[0]} and {given[1]} both given; a workload runs exactly one "
                          "of rates, concurrencies, sweep or search", given[1])
        if self.rates is not None:
            _distinct("rates", self.rates)
        if self.concurrencies is not None:
            _distinct("concurrencies", self.concurrencies)
        if self.load.arrival == "poisson" and self.rates is None and self.search is None:
            raise problem(f"poisson arrivals apply to rates and search, not {given[0]}",
                          "load", "arrival")
        if self.load.engine == "spark" and self.sweep is not None:
            raise problem("a sweep runs on the in-process engine only (its steps depend on "
                          "each other's results)", "load", "engine")
        return self


class Objective(Strict):
    """What `best` means: exactly one of `maximize` or `minimize`, naming a metric."""

    maximize: Metric | None = None
    minimize: Metric | None = None

    @property
    def metric(self) -> str:
        return str(self.maximize or self.minimize)

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.maximize is not None else "minimize"

    @model_validator(mode="after")
    def _one(self) -> Objective:
        if (self.maximize is None) == (self.minimize is None):
            raise problem("give exactly one of maximize or minimize, such as "
                          "{maximize: achieved_rate}")
        return self


class Limits(Strict):
    """How far an experiment may go. `trial_timeout` absent: 3 x a trial's length + 60 s
    (`aifb.experiment.expand.trial_timeout`); `budget` absent: no limit, else the trials not
    started when it is spent are SKIPPED."""

    parallel_deployments: Annotated[int, Field(ge=1, le=64)] = 1
    deploy_timeout: PositiveSeconds = 600.0
    trial_timeout: PositiveSeconds | None = None
    budget: Annotated[Seconds, Field(gt=0, le=30 * 86400.0)] | None = None


class Study(Strict):
    """The whole study file (see the module docstring)."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
    description: Annotated[str, Field(max_length=4096)] = ""
    services: Annotated[list[ServiceGrid], Field(min_length=1, max_length=MAX_GRIDS)]
    workloads: Annotated[list[Workload], Field(min_length=1, max_length=MAX_GRIDS)]
    repeats: Annotated[int, Field(ge=1, le=100)] = 1
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    objective: Objective = Field(default_factory=lambda: Objective(maximize="achieved_rate"),
                                 description="default: {maximize: achieved_rate}")
    limits: Limits = Field(default_factory=Limits)
    on_failure: Literal["continue", "abort"] = "continue"
    labels: Labels = Field(default_factory=dict)

    def configuration_count(self) -> int:
        return sum(len(grid.points()) for grid in self.services)

    def trial_count(self) -> int:
        """Trials at most: configurations x levels x repeats (a search counts max_trials)."""
        levels = sum(w.trial_count() for w in self.workloads)
        return self.configuration_count() * levels * self.repeats

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; `Study.from_dict(s.to_dict()) == s`."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> Study:
        """A study from `to_dict()`'s form (or a file's data); InvalidArgument names the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            loc, message = describe(exc)
            path = path_text(loc)
            raise InvalidArgument(f"{path}: {message}" if path else message,
                                  field=path) from None

    @model_validator(mode="after")
    def _whole(self) -> Study:
        for field in ("services", "workloads"):
            seen: dict[str, int] = {}
            for i, item in enumerate(getattr(self, field)):
                if item.name in seen:
                    raise problem(f"duplicate name {item.name!r} (also {field}[{seen[item.name]}]"
                                  "); give each one its own name", field, i, "name")
                seen[item.name] = i
        if self.objective.metric == "best_rate" and all(w.search is None
                                                        for w in self.workloads):
            raise problem("best_rate is the result of a rate search, and no workload has "
                          "search", "objective", self.objective.direction)
        trials = self.trial_count()
        if trials > MAX_TRIALS:
            levels = sum(w.trial_count() for w in self.workloads)
            raise problem(f"{trials} trials ({self.configuration_count()} configurations x "
                          f"{levels} levels x {self.repeats} repeats); a study runs at most "
                          f"{MAX_TRIALS}: drop values, levels or repeats", "workloads")
        return self


def _from_doc(doc: YamlDoc) -> Study:
    if not isinstance(doc.data, dict):
        got = "an empty file" if doc.data is None else type(doc.data).__name__
        raise doc.error((), f"expected a mapping with name, services and workloads, got {got}")
    return doc.validate(Study)


def load_study(text: str, *, file: str) -> Study:
    """Parse and check a study from YAML text; `file` is how errors name it."""
    return _from_doc(load_yaml(text, file=file))


def load_study_file(path: str | Path) -> Study:
    """Read, parse and check a study file (at most 1 MiB of UTF-8)."""
    return _from_doc(load_yaml_file(path))

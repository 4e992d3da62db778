"""A study's grid, spelled out: its configurations, each workload's levels, and how many trials.

    for config in configurations(study):          # 0, 1, 2, ... in a stable order
        config.key()                               # "nginx worker_processes=2 cpus=1"
    levels(study.workloads[0])                     # [Level("rate", 100.0), Level("rate", 200.0)]

Order: services in file order; within one, the product of its axes (`ServiceGrid.axes`:
`parameters` as written, then `resources` as written, then each `zip` group as one axis), the
last axis fastest, with the excluded points left out. Indices count over the whole study, so a
configuration keeps its index when the same study is loaded again (from the file, or from
`Study.to_dict()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aifb.experiment.study import Study, Workload
from aifb.mesh.units import parse_memory_mib, parse_time_minutes

__all__ = ["SWEEP_STEPS", "Configuration", "Level", "configurations", "levels", "trial_count",
           "trial_timeout"]

# A sweep runs the synchronous step, SWEEP_POINTS (6) open-loop rates and the maximum: eight
# steps of the load's length each (aifb.client.runs.options.plan).
SWEEP_STEPS = 8


@dataclass(frozen=True)
class Configuration:
    """One deployment of one service grid: its recipe parameters and resource overrides as the
    ServerService takes them (text). `varying` holds the values of the grid's axes that take
    more than one value, in axis order: what tells this configuration from its siblings.
    (Holds dicts: key tables by `index` or `key()`, not by the object.)"""

    index: int
    service: str  # the grid's name
    recipe: str
    parameters: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    varying: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        """A short stable text for tables: `nginx worker_processes=2 cpus=1`."""
        return " ".join([self.service, *(f"{k}={v}" for k, v in self.varying.items())])

    def resource_request(self) -> dict[str, int | str]:
        """The resource overrides under `aifb.v1.Resources`' field names (`memory_mib`,
        `time_limit_minutes`, ...); absent keys keep the recipe's defaults. (The ServerService
        reads 0 as "the recipe's default": `gpus: 0` asks for no more than that.)"""
        out: dict[str, int | str] = {}
        for name, text in self.resources.items():
            if name == "memory":
                out["memory_mib"] = parse_memory_mib(text)
            elif name == "time":
                out["time_limit_minutes"] = parse_time_minutes(text) or 0  # never None here
            elif name in ("partition", "account"):
                out[name] = text
            else:
                out[name] = int(text)
        return out


@dataclass(frozen=True, slots=True)
class Level:
    """One load level of a workload: a rate (requests/s), a concurrency (users), or the one
    trial of a sweep or a search (`value` 0: the sweep and the search choose their own)."""

    kind: Literal["rate", "concurrency", "sweep", "search"]
    value: float = 0.0


def configurations(study: Study) -> list[Configuration]:
    """Every configuration of the study, in the documented order."""
    out: list[Configuration] = []
    for grid in study.services:
        axes = grid.axes()
        keys = grid.keys()
        shown = {key for axis in axes if axis.varies for key in axis.keys}
        for point in grid.points():
            params = {n: v for (s, n), v in zip(keys, point, strict=True) if s == "parameters"}
            res = {n: v for (s, n), v in zip(keys, point, strict=True) if s == "resources"}
            varying = {n: v for (s, n), v in zip(keys, point, strict=True) if (s, n) in shown}
            out.append(Configuration(len(out), grid.name, grid.recipe, params, res, varying))
    return out


def levels(workload: Workload) -> list[Level]:
    """The workload's levels in the order written (a sweep or a search is one level)."""
    if workload.rates is not None:
        return [Level("rate", r) for r in workload.rates]
    if workload.concurrencies is not None:
        return [Level("concurrency", float(c)) for c in workload.concurrencies]
    return [Level(workload.level_kind)]


def trial_count(study: Study) -> int:
    """Trials at most: configurations x levels x repeats, a search counting its max_trials."""
    return study.trial_count()


def trial_timeout(study: Study, workload: Workload) -> float:
    """Seconds one trial of `workload` may take: `limits.trial_timeout`, else 3 x its length
    (warmup + duration + cooldown; a sweep's eight steps) + 60 s."""
    if study.limits.trial_timeout is not None:
        return study.limits.trial_timeout
    steps = SWEEP_STEPS if workload.sweep is not None else 1
    return 3 * workload.load.trial_seconds * steps + 60.0

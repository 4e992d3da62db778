"""Conversions between aifb.v1 experiment messages and the experiment's domain objects.

A study travels as `aifb.v1.Study` (the CLI turns the YAML into it; any client may build one);
the service turns it back into the study model, which checks it by the same rules as a file
(errors name the field, e.g. `study.workloads[0].rates[1]`).
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from aifb.experiment.expand import configurations
from aifb.experiment.model import ExperimentRecord, ExperimentState, TrialState
from aifb.experiment.study import MAX_GRID_ENTRIES, MAX_GRIDS, Study
from aifb.experiment.study_fields import MAX_ENTRIES, RESOURCE_NAMES
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from aifb.v1 import experiment_pb2 as E

__all__ = ["experiment_to_proto", "study_from_proto", "study_to_proto"]

_STATES = {s: getattr(E, f"EXPERIMENT_STATE_{s.value}") for s in ExperimentState}
_TRIAL_STATES = {s: getattr(E, f"TRIAL_STATE_{s.value}") for s in TrialState}
_ON_FAILURE = {"continue": E.ON_FAILURE_CONTINUE, "abort": E.ON_FAILURE_ABORT}
_ENGINES = {"inprocess": C.LOAD_ENGINE_INPROCESS, "spark": C.LOAD_ENGINE_SPARK}


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _axes(axes: dict[str, list[str]]) -> list[E.GridAxis]:
    return [E.GridAxis(name=k, values=v) for k, v in axes.items()]


def study_to_proto(study: Study) -> E.Study:
    d = study.to_dict()
    msg = E.Study(name=d["name"], description=d["description"], repeats=d["repeats"],
                  seed=d["seed"], on_failure=_ON_FAILURE[d["on_failure"]])
    for g in d["services"]:
        msg.services.append(E.ServiceGrid(
            name=g["name"], recipe=g["recipe"], parameters=_axes(g["parameters"]),
            resources=_axes(g["resources"]),
            zip=[E.ZipGroup(axes=_axes(z)) for z in g["zip"]],
            exclude=[E.GridPoint(values=x) for x in g["exclude"]]))
    for w in d["workloads"]:
        load = w["load"]
        profile = C.LoadProfile(
            mode=(C.LOAD_MODE_POISSON if load["arrival"] == "poisson"
                  else C.LOAD_MODE_UNSPECIFIED),
            duration=_duration(load["duration"]), warmup=_duration(load["warmup"]),
            cooldown=_duration(load["cooldown"]), error_budget=load["error_budget"] or 0.0,
            burstiness=load["burstiness"], max_requests=load["max_requests"], slo=load["slo"],
            engine=_ENGINES[load["engine"]], spark_master=load["spark_master"] or "",
            partitions=load["partitions"], record_samples=load["record_samples"],
            workers=load["workers"])
        sw = E.StudyWorkload(name=w["name"], workload=w["workload"],
                             parameters=w["parameters"], load=profile)
        if w["rates"] is not None:
            sw.rates.rates.extend(w["rates"])
        elif w["concurrencies"] is not None:
            sw.concurrencies.concurrencies.extend(w["concurrencies"])
        elif w["sweep"] is not None:
            sw.sweep.max_concurrency = w["sweep"]["max_concurrency"]
        else:
            s = w["search"]
            sw.search.CopyFrom(E.RateSearch(slo=s["slo"], start=s["start"], min=s["min"] or 0.0,
                                            max=s["max"] or 0.0, tolerance=s["tolerance"],
                                            max_trials=s["max_trials"]))
        msg.workloads.append(sw)
    objective = d["objective"]
    msg.objective.CopyFrom(E.Objective(metric=objective["minimize"] or objective["maximize"],
                                       minimize=bool(objective["minimize"])))
    limits = d["limits"]
    msg.limits.parallel_deployments = limits["parallel_deployments"]
    msg.limits.deploy_timeout.CopyFrom(_duration(limits["deploy_timeout"]))
    if limits["trial_timeout"]:
        msg.limits.trial_timeout.CopyFrom(_duration(limits["trial_timeout"]))
    if limits["budget"]:
        msg.limits.budget.CopyFrom(_duration(limits["budget"]))
    return msg


def _load_dict(p: C.LoadProfile, at: str) -> dict[str, Any]:
    engines = {v: k for k, v in _ENGINES.items()}
    out: dict[str, Any] = {
        "arrival": "poisson" if p.mode == C.LOAD_MODE_POISSON else "constant",
        "error_budget": p.error_budget or None, "burstiness": p.burstiness or 1.0,
        "max_requests": p.max_requests, "engine": engines.get(p.engine, "inprocess"),
        "spark_master": p.spark_master or None, "partitions": p.partitions,
        "workers": p.workers or 1, "record_samples": p.record_samples, "slo": dict(p.slo)}
    for name in ("duration", "warmup", "cooldown"):
        if p.HasField(name):
            out[name] = _seconds(getattr(p, name))
    if p.engine and p.engine not in engines:
        raise InvalidArgument(f"{at}.engine: unknown engine {p.engine}", field=f"{at}.engine")
    if p.mode not in (C.LOAD_MODE_UNSPECIFIED, C.LOAD_MODE_CONSTANT, C.LOAD_MODE_POISSON):
        raise InvalidArgument(f"{at}.mode: a study workload's load is constant or poisson "
                              "arrivals (its levels set the rest), got mode "
                              f"{p.mode}", field=f"{at}.mode")
    return out


def _axis_map(axes: Sequence[E.GridAxis], at: str) -> dict[str, list[str]]:
    """Repeated axes as the file's mapping; a name given twice is refused, not merged."""
    out: dict[str, list[str]] = {}
    for i, axis in enumerate(axes):
        if axis.name in out:
            field = f"{at}[{i}].name"
            raise InvalidArgument(f"{field}: duplicate axis {axis.name[:80]!r}", field=field)
        out[axis.name] = list(axis.values)
    return out


def _check_counts(msg: E.Study) -> None:
    """The repeated fields' lengths, before anything is converted: 10 MB of empty grids or
    workloads took 10 to 15 s to turn into the model's input, refused only then."""
    def check(items: Sized, limit: int, field: str) -> None:
        if len(items) > limit:
            raise InvalidArgument(f"{field}: at most {limit} entries, got {len(items)}",
                                  field=field)

    check(msg.services, MAX_GRIDS, "study.services")
    check(msg.workloads, MAX_GRIDS, "study.workloads")
    for s, g in enumerate(msg.services):
        at = f"study.services[{s}]"
        for key, limit in MAX_GRID_ENTRIES.items():
            check(getattr(g, key), limit, f"{at}.{key}")
        check(g.resources, len(RESOURCE_NAMES), f"{at}.resources")
        for n, z in enumerate(g.zip):
            check(z.axes, MAX_ENTRIES, f"{at}.zip[{n}].axes")
        for n, x in enumerate(g.exclude):
            check(x.values, MAX_ENTRIES, f"{at}.exclude[{n}]")


def study_from_proto(msg: E.Study) -> Study:
    """The study model, checked by the same rules as a file; errors name `study.<field>`."""
    _check_counts(msg)
    # An empty name is absent, so the model names the grid (workload) after its recipe
    # (workload), as the proto documents.
    at = "study.services"
    services = [{**({"name": g.name} if g.name else {}), "recipe": g.recipe,
                 "parameters": _axis_map(g.parameters, f"{at}[{s}].parameters"),
                 "resources": _axis_map(g.resources, f"{at}[{s}].resources"),
                 "zip": [_axis_map(z.axes, f"{at}[{s}].zip[{n}].axes")
                         for n, z in enumerate(g.zip)],
                 "exclude": [dict(x.values) for x in g.exclude]}
                for s, g in enumerate(msg.services)]
    workloads = []
    for i, w in enumerate(msg.workloads):
        item: dict[str, Any] = {**({"name": w.name} if w.name else {}), "workload": w.workload,
                                "parameters": dict(w.parameters),
                                "load": _load_dict(w.load, f"study.workloads[{i}].load")}
        which = w.WhichOneof("levels")
        if which == "rates":
            item["rates"] = list(w.rates.rates)
        elif which == "concurrencies":
            item["concurrencies"] = list(w.concurrencies.concurrencies)
        elif which == "sweep":
            item["sweep"] = {"max_concurrency": w.sweep.max_concurrency or 64}
        elif which == "search":
            s = w.search
            item["search"] = {"slo": dict(s.slo), "start": s.start, "min": s.min or None,
                              "max": s.max or None, "tolerance": s.tolerance or 0.05,
                              "max_trials": s.max_trials or 12}
        workloads.append(item)
    limits: dict[str, Any] = {"parallel_deployments": msg.limits.parallel_deployments or 1}
    for name in ("deploy_timeout", "trial_timeout", "budget"):
        if msg.limits.HasField(name):
            limits[name] = _seconds(getattr(msg.limits, name))
    objective = {"maximize": "achieved_rate"}
    if msg.objective.metric:
        objective = {"minimize" if msg.objective.minimize else "maximize": msg.objective.metric}
    if msg.on_failure not in (E.ON_FAILURE_UNSPECIFIED, *_ON_FAILURE.values()):
        raise InvalidArgument(f"study.on_failure: unknown value {msg.on_failure}",
                              field="study.on_failure")
    on_failure = {v: k for k, v in _ON_FAILURE.items()}.get(msg.on_failure, "continue")
    data = {"name": msg.name, "description": msg.description, "services": services,
            "workloads": workloads, "repeats": msg.repeats or 1, "seed": msg.seed,
            "objective": objective, "limits": limits, "on_failure": on_failure}
    try:
        return Study.from_dict(data)
    except InvalidArgument as exc:
        raise InvalidArgument(f"study.{exc.message}", field=f"study.{exc.field}") from None


def _figures(figures: dict[str, float], slo_met: bool | None) -> E.TrialFigures:
    core = ("achieved_rate", "ok_rate", "error_ratio", "latency_p50_seconds",
            "latency_p99_seconds")
    return E.TrialFigures(**{k: figures[k] for k in core if k in figures},
                          slo_met=bool(slo_met),
                          extra={k: v for k, v in figures.items() if k not in core})


def experiment_to_proto(record: ExperimentRecord) -> E.Experiment:
    study = Study.from_dict(record.study)
    configs = configurations(study)
    msg = E.Experiment(
        name=record.name, state=_STATES[record.state], state_message=record.state_message,
        owner=record.owner, study=study_to_proto(study), labels=record.labels,
        create_time=_timestamp(record.create_time), start_time=_timestamp(record.start_time),
        end_time=_timestamp(record.end_time), trace_id=record.trace_id)
    for config, run in zip(configs, record.configurations, strict=True):
        msg.configurations.append(E.Configuration(
            index=config.index, grid=config.service, recipe=config.recipe,
            parameters=config.parameters, resources=config.resources, key=config.key(),
            service=run.service, failure=run.failure))
    for t in record.trials:
        msg.trials.append(E.Trial(
            name=f"{record.name}/trials/{t.n}", configuration=t.configuration,
            workload=t.workload, level_kind=t.level_kind, level=t.level, repeat=t.repeat,
            search_step=t.search_step, state=_TRIAL_STATES[t.state],
            state_message=t.state_message, benchmark=t.benchmark,
            figures=_figures(t.figures, t.slo_met), start_time=_timestamp(t.start_time),
            end_time=_timestamp(t.end_time), samples=t.samples))
    for s in record.searches:
        msg.searches.append(E.SearchOutcome(
            configuration=s.configuration, workload=s.workload, repeat=s.repeat,
            best_rate=s.best_rate or 0.0, failed_rate=s.failed_rate or 0.0,
            converged=s.converged, reason=s.reason))
    return msg

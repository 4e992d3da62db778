"""The experiment's report: every trial, each figure over repeats with its 95 % confidence
interval, which configuration is best for the objective and whether its lead is beyond the
noise, the rate searches' results; as JSON, markdown, HTML (tables and plots) or Parquet.

A *group* is one configuration at one level of one workload: its repeats. Figures are the
benchmark runs' own (`figures`), so the report matches the underlying runs exactly; a group's
mean and interval come from `aifb.experiment.stats`. Comparisons are made level by level
against the best configuration for the objective: a difference whose 95 % interval contains 0
is "within the noise" (Welch's t-test; needs two repeats or more on both sides).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from aifb.experiment.charts import pareto_front, rate_latency_chart
from aifb.experiment.expand import Configuration, configurations
from aifb.experiment.figures import headline
from aifb.experiment.model import ExperimentRecord, TrialState
from aifb.experiment.pages import to_html, to_markdown
from aifb.experiment.stats import Summary, compare, summarize
from aifb.experiment.study import Study
from aifb.mesh.auth import write_private_file
from aifb.mesh.errors import InvalidArgument

__all__ = ["FORMATS", "build_document", "render_report"]

SCHEMA_VERSION = 1
FORMATS = ("json", "md", "html", "parquet")
_FILES = {"json": "report.json", "md": "report.md", "html": "report.html",
          "parquet": "trials.parquet"}
def _summary(s: Summary) -> dict[str, Any]:
    return {"n": s.n, "mean": s.mean, "stdev": s.stdev, "ci_low": s.ci_low,
            "ci_high": s.ci_high, "ci_known": s.ci_known}


def _groups(record: ExperimentRecord) -> list[dict[str, Any]]:
    keyed: dict[tuple[int, str, str, float], list[Any]] = {}
    for t in record.trials:
        if t.level_kind == "search":
            continue
        keyed.setdefault((t.configuration, t.workload, t.level_kind, t.level), []).append(t)
    groups = []
    for (config, workload, kind, level), trials in sorted(keyed.items()):
        done = [t for t in trials if t.state is TrialState.SUCCEEDED]
        names = sorted({k for t in done for k in t.figures})
        figures = {name: _summary(summarize([t.figures[name] for t in done
                                             if name in t.figures]))
                   for name in names}
        groups.append({"configuration": config, "workload": workload, "level_kind": kind,
                       "level": level, "trials": [t.n for t in trials],
                       "succeeded": len(done), "figures": figures,
                       "slo_met": (all(t.slo_met for t in done) if done else None)})
    return groups


def _searches(record: ExperimentRecord) -> list[dict[str, Any]]:
    keyed: dict[tuple[int, str], list[Any]] = {}
    for s in record.searches:
        keyed.setdefault((s.configuration, s.workload), []).append(s)
    out = []
    for (config, workload), runs in sorted(keyed.items()):
        best = [s.best_rate for s in runs if s.done and s.best_rate is not None]
        out.append({"configuration": config, "workload": workload,
                    "best_rate": _summary(summarize(best)) if best else None,
                    "repeats": [{"repeat": s.repeat, "best_rate": s.best_rate,
                                 "failed_rate": s.failed_rate, "converged": s.converged,
                                 "reason": s.reason, "done": s.done} for s in runs]})
    return out


def _search_groups(searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"configuration": s["configuration"], "workload": s["workload"],
             "level_kind": "search", "level": 0.0, "figures": {"best_rate": s["best_rate"]}}
            for s in searches if s["best_rate"] is not None]


def _objective(record: ExperimentRecord) -> tuple[str, bool]:
    objective = record.study.get("objective") or {}
    if objective.get("minimize"):
        return str(objective["minimize"]), True
    return str(objective.get("maximize") or "achieved_rate"), False


def _metric_name(metric: str) -> str:
    """The objective's metric as a figure name (`latency_p99` -> `latency_p99_seconds`)."""
    if metric in ("latency_p50", "latency_p99", "ttft_p99", "tpot_p99"):
        return f"{metric}_seconds"
    return metric


def _comparisons(groups: list[dict[str, Any]], metric: str, minimize: bool
                 ) -> list[dict[str, Any]]:
    """Per workload and level: the best configuration, and each other one against it."""
    by_level: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for g in groups:
        if metric in g["figures"]:
            by_level.setdefault((g["workload"], g["level_kind"], g["level"]), []).append(g)
    out = []
    for (workload, kind, level), rows in sorted(by_level.items()):
        rows.sort(key=lambda g: g["figures"][metric]["mean"], reverse=not minimize)
        best = rows[0]
        others = []
        for g in rows[1:]:
            a = _as_summary(best["figures"][metric])
            b = _as_summary(g["figures"][metric])
            c = compare(a, b)
            others.append({"configuration": g["configuration"], "mean": b.mean,
                           "diff": c.diff, "ratio": c.ratio, "within_noise": c.within_noise})
        out.append({"workload": workload, "level_kind": kind, "level": level,
                    "metric": metric, "best": best["configuration"],
                    "best_mean": best["figures"][metric]["mean"], "others": others})
    return out


def _as_summary(d: dict[str, Any]) -> Summary:
    return Summary(n=d["n"], mean=d["mean"], stdev=d["stdev"], ci_low=d["ci_low"],
                   ci_high=d["ci_high"], ci_known=d["ci_known"],
                   half_width=(d["ci_high"] - d["ci_low"]) / 2, values=())


def build_document(record: ExperimentRecord) -> dict[str, Any]:
    groups = _groups(record)
    searches = _searches(record)
    metric, minimize = _objective(record)
    figure = _metric_name(metric)
    configs = configurations(Study.from_dict(record.study))
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": {"name": record.name, "state": record.state.value,
                       "state_message": record.state_message, "owner": record.owner,
                       "study": record.study.get("name", ""),
                       "description": record.study.get("description", ""),
                       "labels": dict(record.labels), "trace_id": record.trace_id,
                       "create_time": record.create_time, "start_time": record.start_time,
                       "end_time": record.end_time},
        "objective": {"metric": figure, "minimize": minimize},
        "study": record.study,
        "configurations": [_configuration(record, c) for c in configs],
        "trials": [{**t.to_dict(), "name": f"{record.name}/trials/{t.n}"}
                   for t in record.trials],
        "groups": groups,
        "figures": headline({k for g in groups for k in g["figures"]}),
        "searches": searches,
        # The searches' best rates compare like any figure (objective: maximize best_rate).
        "comparisons": [c for c in _comparisons(groups + _search_groups(searches), figure,
                                                minimize) if c["others"]],
        "pareto": pareto_front(groups),
    }


def _configuration(record: ExperimentRecord, config: Configuration) -> dict[str, Any]:
    run = record.configurations[config.index]
    return {"index": config.index, "grid": config.service, "recipe": config.recipe,
            "key": config.key(), "parameters": dict(config.parameters),
            "resources": dict(config.resources), "service": run.service,
            "failure": run.failure}


def _parquet(doc: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted({k for t in doc["trials"] for k in t["figures"]})
    rows: dict[str, list[Any]] = {c: [] for c in (
        "experiment", "trial", "configuration", "configuration_key", "workload", "level_kind",
        "level", "repeat", "search_step", "state", "benchmark", "slo_met", "samples", *names)}
    keys = {c["index"]: c["key"] for c in doc["configurations"]}
    for t in doc["trials"]:
        rows["experiment"].append(doc["experiment"]["name"])
        rows["trial"].append(t["n"])
        rows["configuration_key"].append(keys.get(t["configuration"], ""))
        for c in ("configuration", "workload", "level_kind", "level", "repeat", "search_step",
                  "state", "benchmark", "slo_met", "samples"):
            rows[c].append(t[c])
        for name in names:
            rows[name].append(t["figures"].get(name))
    table = pa.table({k: pa.array(v, type=pa.float64() if k in names else None)
                      for k, v in rows.items()})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def render_report(record: ExperimentRecord, fmt: str, directory: Path) -> bytes:
    """The report's bytes; the same bytes (and for html/md the plot) land in `directory`."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown report format {fmt!r} (known: {', '.join(FORMATS)})",
                              field="format")
    doc = build_document(record)
    if fmt == "json":
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    elif fmt == "parquet":
        data = _parquet(doc)
    else:
        chart = rate_latency_chart(doc)
        if chart:
            write_private_file(directory / "rate-latency.svg", chart.encode())
        text = to_markdown(doc, bool(chart)) if fmt == "md" else to_html(doc, chart)
        data = text.encode()
    write_private_file(directory / _FILES[fmt], data)
    return data

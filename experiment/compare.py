"""Two experiments' reports side by side, and the CI gate of `aifb experiment compare
--fail-on`.

Groups are matched by what they measured, not by index: the configuration (its recipe with
every parameter and resource), the workload and the level. For each figure both have, the row
gives both means, b / a and whether the difference is within the noise (Welch, 95 %). A
threshold names a figure by its report name or a short alias (`p99` is `latency_p99_seconds`,
`p50`, `ttft_p99`, `tpot_p99`, `rate` is `achieved_rate`); it is judged on every matched group
that has the figure, and a group whose figure is missing on one side is reported, not passed.
"""

from __future__ import annotations

from typing import Any

from aifb.experiment.stats import Summary, Threshold, compare

__all__ = ["ALIASES", "compare_documents"]

ALIASES = {"p50": "latency_p50_seconds", "p99": "latency_p99_seconds",
           "latency_p50": "latency_p50_seconds", "latency_p99": "latency_p99_seconds",
           "ttft_p99": "ttft_p99_seconds", "tpot_p99": "tpot_p99_seconds",
           "rate": "achieved_rate", "errors": "error_ratio"}


def _summary(d: dict[str, Any]) -> Summary:
    return Summary(n=d["n"], mean=d["mean"], stdev=d["stdev"], ci_low=d["ci_low"],
                   ci_high=d["ci_high"], half_width=(d["ci_high"] - d["ci_low"]) / 2,
                   values=(), ci_known=d["ci_known"])


def _level(g: dict[str, Any]) -> str:
    kind = str(g["level_kind"])
    return {"rate": f"{g['level']:g} req/s", "concurrency": f"{g['level']:g} users"}.get(kind,
                                                                                        kind)


def _identity(config: dict[str, Any]) -> str:
    """What was deployed, whatever else the study varied: the recipe with every parameter and
    resource (a configuration's `key` names only the axes its own grid varies)."""
    values = {**config["parameters"], **{f"resources.{k}": v
                                          for k, v in config["resources"].items()}}
    return " ".join([config["recipe"], *(f"{k}={v}" for k, v in sorted(values.items()))])


def _groups(doc: dict[str, Any]) -> dict[tuple[str, str, str, float], dict[str, Any]]:
    ids = {c["index"]: _identity(c) for c in doc["configurations"]}
    return {(ids.get(g["configuration"], str(g["configuration"])), g["workload"],
             g["level_kind"], g["level"]): g for g in doc["groups"]}


def compare_documents(a: dict[str, Any], b: dict[str, Any], thresholds: list[Threshold]
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, breaches): one row per matched group and figure; one line per breached
    threshold (or threshold that could not be judged)."""
    ga, gb = _groups(a), _groups(b)
    shown = {_identity(c): c["key"] for c in a["configurations"]}  # how a's tables name them
    rows: list[dict[str, Any]] = []
    breaches: list[str] = []
    for key in sorted(set(ga) & set(gb)):
        fa, fb = ga[key]["figures"], gb[key]["figures"]
        for figure in [f for f in a["figures"] if f in fa and f in fb]:
            c = compare(_summary(fa[figure]), _summary(fb[figure]))
            rows.append({"configuration": shown.get(key[0], key[0]), "workload": key[1],
                         "level": _level(ga[key]), "figure": figure,
                         "a": fa[figure]["mean"], "b": fb[figure]["mean"], "ratio": c.ratio,
                         "within_noise": c.within_noise})
        for t in thresholds:
            figure = ALIASES.get(t.figure, t.figure)
            where = f"{shown.get(key[0], key[0])} / {key[1]} / {_level(ga[key])}"
            if figure not in fa or figure not in fb:
                breaches.append(f"{where}: {t} cannot be judged: {figure} is missing")
                continue
            va, vb = fa[figure]["mean"], fb[figure]["mean"]
            if t.breached(va, vb):
                breaches.append(f"{where}: {t.describe(va, vb)}")
    if thresholds and not set(ga) & set(gb):
        breaches.append("the two experiments have no configuration, workload and level in "
                        "common: nothing to compare")
    return rows, breaches

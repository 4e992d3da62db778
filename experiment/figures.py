"""A trial's figures, read from its benchmark's JSON report (GetBenchmarkReport, format JSON).

The report is the benchmark service's own document, so a trial's figures are exactly the
benchmark run's: nothing is measured twice or recomputed. Flattened to one number per name:

- `achieved_rate`, `ok_rate`, `error_ratio` (the run's figures);
- `<histogram>_p50_seconds`, `_p90_seconds`, `_p99_seconds`, `_mean_seconds` for each latency
  histogram the run kept (`latency`, `service`, `ttft`, `itl`, `tpot`, ...);
- `<value>_per_second` for each rate of a workload value (e.g. `output_tokens_per_second`);
- the workload's `extra` figures (`recall_at_k`, `insert_vectors_per_s`, ...) as they are.

The SLO verdict is the report's: every objective the run was given must be met; one without
data (no requests of that kind) counts as missed.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["HEADLINE", "USAGE", "figures_from_report", "headline"]

# What the tables show first, in this order, when the trials have them.
HEADLINE = ("achieved_rate", "error_ratio", "latency_p50_seconds", "latency_p99_seconds",
            "ttft_p50_seconds", "ttft_p99_seconds", "itl_p99_seconds", "tpot_p99_seconds",
            "output_tokens_per_second")
# What the service used during the trial (`aifb.experiment.usage`).
USAGE = ("cpu_cores", "memory_rss_bytes", "gpu_memory_bytes", "gpu_utilization",
         "gpu_power_watts", "achieved_rate_per_cpu_core", "output_tokens_per_second_per_cpu_core",
         "achieved_rate_per_gpu", "output_tokens_per_second_per_gpu", "achieved_rate_per_watt",
         "output_tokens_per_second_per_watt")
_PERCENTILES = {"p50": "p50", "p90": "p90", "p99": "p99", "mean": "mean"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def figures_from_report(doc: dict[str, Any]) -> tuple[dict[str, float], bool]:
    figures = doc.get("figures") or {}
    out: dict[str, float] = {}
    for name in ("achieved_rate", "ok_rate", "error_ratio"):
        if (v := _number(figures.get(name))) is not None:
            out[name] = v
    for hist, summary in sorted((figures.get("histograms") or {}).items()):
        for key, label in _PERCENTILES.items():
            if (v := _number(summary.get(key))) is not None:
                out[f"{hist}_{label}_seconds"] = v
    for value, rate in sorted((figures.get("value_rates") or {}).items()):
        if (v := _number(rate)) is not None:
            out[f"{value}_per_second"] = v
    for name, extra in sorted((figures.get("extra") or {}).items()):
        if (v := _number(extra)) is not None and name not in out:
            out[name] = v
    slos = doc.get("slo") or []
    met = all(s.get("met") is True for s in slos)
    return out, met


def headline(names: set[str]) -> list[str]:
    """The figures a table shows: the headline ones present, then the others, sorted."""
    first = [n for n in HEADLINE if n in names]
    return first + sorted(names - set(first))

"""The report document: every figure of a finished run in one JSON-ready dict.

Built from the run's record, its stored result (exact HDR histograms and the per-second series)
and its context (target, recipe and batch script, node facts and versions). Latencies are in
seconds here (the engine's microseconds / 1e6) so every consumer reads one unit; each
histogram also keeps its HdrHistogram V2 encoding so a reader can merge or re-query it.
"""

from __future__ import annotations

from typing import Any

from aifb.client.engine.histogram import PERCENTILES, LatencyHistogram
from aifb.client.engine.results import LoadResult
from aifb.client.report.slices import time_slices
from aifb.client.report.turns import session_figures
from aifb.client.report.usage import usage_check
from aifb.client.runs.options import parse_slo
from aifb.client.runs.record import BenchmarkRecord

__all__ = ["SCHEMA_VERSION", "build_document", "histogram_figures", "series_rows"]

SCHEMA_VERSION = 1


def _pct_key(p: float) -> str:
    return "p" + f"{p:g}".replace(".", "_")


def histogram_figures(h: LatencyHistogram) -> dict[str, Any]:
    out: dict[str, Any] = {"count": h.count, "min": h.min_us / 1e6, "max": h.max_us / 1e6,
                           "mean": round(h.mean_us / 1e6, 9)}
    for p in PERCENTILES:
        out[_pct_key(p)] = h.percentile_us(p) / 1e6
    out["hdr"] = h.encode().decode("ascii")
    return out


def series_rows(result: LoadResult) -> list[dict[str, Any]]:
    """One row per interval: counts, rates, latency and lag quantiles (seconds)."""
    rows = []
    for s in result.series:
        lat, lag = s.latency, s.lag
        rows.append({"second": s.second, "sent": s.sent, "completed": s.completed,
                     "errors": s.errors, "dropped": s.dropped, "cancelled": s.cancelled,
                     "in_flight": s.in_flight,
                     "target_rate": s.target_rate, "achieved_rate": float(s.completed),
                     "latency_p50_s": lat.percentile_us(50) / 1e6,
                     "latency_p90_s": lat.percentile_us(90) / 1e6,
                     "latency_p99_s": lat.percentile_us(99) / 1e6,
                     "latency_max_s": lat.max_us / 1e6,
                     "lag_p99_s": lag.percentile_us(99) / 1e6})
    return rows


def _figures(result: LoadResult) -> dict[str, Any]:
    return {"state": result.state.value, "reason": result.reason, "mode": result.mode,
            "workers": result.workers, "users": result.users,
            "target_rate": result.target_rate, "achieved_rate": round(result.achieved_rate, 4),
            "ok_rate": round(result.ok_rate, 4),
            "achieved_ratio": (round(result.achieved_rate / result.target_rate, 5)
                               if result.target_rate else None),
            "error_ratio": round(result.error_ratio, 6), "measured_s": result.measured_s,
            "counters": dict(result.counters), "errors_by_kind": dict(result.errors_by_kind),
            "values": dict(result.values), "value_rates": result.value_rates(),
            "extra": dict(result.extra),
            "histograms": {k: histogram_figures(h) for k, h in result.histograms.items()
                           if h.count},
            "usage_check": usage_check(result.values)}


def _slo_results(record: BenchmarkRecord, result: LoadResult) -> list[dict[str, Any]]:
    out = []
    for slo in parse_slo(record.load.slo):
        if slo.metric == "errors":
            measured = result.error_ratio
            out.append({"slo": slo.key, "limit": slo.limit_ratio, "measured": measured,
                        "met": measured <= slo.limit_ratio})
            continue
        hist = result.histograms.get(slo.metric)
        if hist is None or not hist.count:
            out.append({"slo": slo.key, "limit_s": slo.limit_s, "measured_s": None,
                        "met": None})
            continue
        measured = hist.percentile_us(slo.percentile) / 1e6
        out.append({"slo": slo.key, "limit_s": slo.limit_s, "measured_s": measured,
                    "met": measured <= slo.limit_s})
    return out


def build_document(record: BenchmarkRecord, stored: dict[str, Any],
                   context: dict[str, Any]) -> dict[str, Any]:
    """The whole report of a terminal run."""
    result = LoadResult.from_dict(stored["result"]) if stored.get("result") else (
        LoadResult(state=record.state, reason=record.state_message))
    steps = []
    for step in stored.get("steps", []):
        res = LoadResult.from_dict(step["result"])
        lat = res.histograms["latency"]
        steps.append({"name": step["name"], "target_rate": step["target_rate"],
                      "achieved_rate": round(res.achieved_rate, 4),
                      "error_ratio": round(res.error_ratio, 6), "state": res.state.value,
                      "latency": {_pct_key(p): lat.percentile_us(p) / 1e6 for p in PERCENTILES}
                      if lat.count else {}})
    return {
        "schema_version": SCHEMA_VERSION,
        "benchmark": {"name": record.name, "state": record.state.value,
                      "state_message": record.state_message, "owner": record.owner,
                      "workload": record.workload, "service": record.service,
                      "url": record.url, "resolved_url": record.resolved_url,
                      "labels": dict(record.labels), "trace_id": record.trace_id,
                      "create_time": record.create_time, "start_time": record.start_time,
                      "end_time": record.end_time},
        "configuration": {"workload": record.workload, "parameters": dict(record.parameters),
                          "load": record.load.to_dict()},
        "figures": _figures(result),
        "slo": _slo_results(record, result),
        # Multi-turn runs: sessions completed/failed/cut and per-turn figures, else None.
        "sessions": session_figures(result),
        "series": series_rows(result),
        # The run per time slice (warm-up and drain included); the rows add up to "total".
        "slices": time_slices(result.series, record.load.time_slice_s),
        "sweep": {"steps": steps, "stop_reason": stored.get("stop_reason", "")}
        if steps else None,
        # Per-request rows (samples.parquet) when the run recorded them: rows kept, requests
        # seen, the limit and whether it was reached.
        "samples": stored.get("samples"),
        "target": context.get("target", {}),
        "service": context.get("service"),
        "recipe": context.get("recipe"),
        "batch_script": context.get("batch_script"),
        "node": context.get("facts", {}),
    }

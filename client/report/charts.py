"""The report's plots, drawn from the document: latency CDF (and TTFT/ITL/TPOT CDFs for LLM
runs), throughput and latency over time, and latency percentiles against rate for sweeps.
Each is an SVG string keyed by file name."""

from __future__ import annotations

import base64
from typing import Any

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.report.svg import Line, line_chart

__all__ = ["charts"]


def _cdf(hdr: str) -> tuple[list[float], list[float]]:
    hist = LatencyHistogram.decode(hdr.encode("ascii"))
    buckets = sorted(hist.bucket_counts().items())
    total = sum(n for _, n in buckets) or 1
    xs, ys, seen = [], [], 0
    for value_us, count in buckets:
        seen += count
        xs.append(value_us / 1000)
        ys.append(seen / total)
    return xs, ys


def charts(doc: dict[str, Any]) -> dict[str, str]:
    """{file name: SVG} for every plot that has data."""
    out: dict[str, str] = {}
    hists = doc["figures"]["histograms"]
    if "latency" in hists:
        lines: list[Line] = [("latency", *_cdf(hists["latency"]["hdr"]))]
        if "service" in hists:
            lines.append(("service time", *_cdf(hists["service"]["hdr"])))
        out["latency_cdf.svg"] = line_chart("Latency CDF", "latency (ms)",
                                            "fraction of requests", lines, step=True)
    tokens: list[Line] = [(label, *_cdf(hists[name]["hdr"]))
                          for name, label in (("ttft", "TTFT"), ("itl", "ITL"), ("tpot", "TPOT"))
                          if name in hists]
    if tokens:
        out["token_latency_cdf.svg"] = line_chart("Token latency CDF (LLM)", "latency (ms)",
                                                  "fraction", tokens, step=True)
    rows = doc["series"]
    if rows:
        t = [float(r["second"]) for r in rows]
        tput: list[Line] = [("achieved req/s", t, [r["achieved_rate"] for r in rows])]
        if any(r["target_rate"] for r in rows):
            tput.append(("target req/s", t, [r["target_rate"] for r in rows]))
        if any(r["errors"] for r in rows):
            tput.append(("errors/s", t, [float(r["errors"]) for r in rows]))
        out["throughput.svg"] = line_chart("Throughput over time", "second", "requests/s",
                                           tput)
        out["latency_time.svg"] = line_chart(
            "Latency over time", "second", "latency (ms)",
            [("p50", t, [r["latency_p50_s"] * 1000 for r in rows]),
             ("p99", t, [r["latency_p99_s"] * 1000 for r in rows])])
    sweep = doc.get("sweep")
    if sweep and sweep["steps"]:
        steps = [s for s in sweep["steps"] if s["latency"]]
        rates = [s["achieved_rate"] for s in steps]
        out["sweep.svg"] = line_chart(
            "Latency percentiles against rate", "achieved requests/s", "latency (ms)",
            [(p, rates, [s["latency"][p] * 1000 for s in steps])
             for p in ("p50", "p90", "p99")])
    return out


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()

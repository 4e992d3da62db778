"""Time slices: a run's figures per slice of whole seconds, so warm-up and degradation show.

A run's totals hide how it moved: a server that warms up, or one whose queue grows until it
falls behind, can give the same p99 as a steady one. The engine keeps one `SecondStats` per
interval (by completion time, warm-up, cool-down and drain included) with its own histograms,
so a slice is the exact merge of its seconds: requests, errors, cancelled, throughput, latency
p50/p99, and TTFT/ITL p50 for streaming runs. The slices partition the series, so their counts
add up exactly to the `total` row (the whole series). The measured figures of a report cover
the measurement window only, by intended send time: they differ from `total` when a run has a
warm-up or a cool-down.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.results import SecondStats

__all__ = ["DEFAULT_SLICES", "slice_length", "time_slices"]

DEFAULT_SLICES = 10  # without a slice length: about this many slices over the run
_COUNTS = ("sent", "completed", "errors", "cancelled", "dropped")


def slice_length(seconds: int, wanted_s: float) -> int:
    """Whole seconds per slice: the wanted length, or about DEFAULT_SLICES over the run."""
    if wanted_s >= 1:
        return int(wanted_s)
    return max(1, math.ceil(seconds / DEFAULT_SLICES))


def _merge(seconds: Iterable[SecondStats]) -> dict[str, Any]:
    counts = dict.fromkeys(_COUNTS, 0)
    span = 0.0
    latency, ttft, itl = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for sec in seconds:
        for name in _COUNTS:
            counts[name] += getattr(sec, name)
        span += sec.span_s or 1.0  # results from before span_s: a whole interval
        latency.add(sec.latency)
        if sec.ttft is not None:
            ttft.add(sec.ttft)
        if sec.itl is not None:
            itl.add(sec.itl)
    row: dict[str, Any] = {
        "requests": counts["completed"], "ok": counts["completed"] - counts["errors"],
        "errors": counts["errors"], "cancelled": counts["cancelled"], "sent": counts["sent"],
        "dropped": counts["dropped"], "span_s": round(span, 6),
        "rate": round(counts["completed"] / span, 4) if span > 0 else 0.0,
        "ok_rate": round((counts["completed"] - counts["errors"]) / span, 4) if span > 0
        else 0.0,
        "latency_p50_s": latency.percentile_us(50) / 1e6 if latency.count else None,
        "latency_p99_s": latency.percentile_us(99) / 1e6 if latency.count else None}
    if ttft.count:
        row["ttft_p50_s"] = ttft.percentile_us(50) / 1e6
    if itl.count:
        row["itl_p50_s"] = itl.percentile_us(50) / 1e6
    return row


def time_slices(series: list[SecondStats], wanted_s: float = 0.0) -> dict[str, Any] | None:
    """{"slice_s", "rows": [one per slice, from its start], "total": the whole series}, or
    None for a run with no series. A row has requests (completed, ok or not), ok, errors,
    cancelled, sent, dropped, rate and ok_rate (per second of the slice), latency p50/p99 (s,
    None without a successful request), and ttft_p50_s / itl_p50_s when there were tokens."""
    if not series:
        return None
    length = slice_length(series[-1].second + 1, wanted_s)
    groups: dict[int, list[SecondStats]] = {}
    for sec in series:
        groups.setdefault(sec.second // length, []).append(sec)
    rows = []
    for index in sorted(groups):
        row = _merge(groups[index])
        rows.append({"slice": index, "start_s": index * length, **row})
    return {"slice_s": length, "rows": rows, "total": _merge(series)}

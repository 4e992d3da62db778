"""The report's plot: achieved rate against p99 latency, one line per configuration (its levels
in order, each point the mean over repeats), and the Pareto front of those points: the ones no
other point beats on both rate (higher) and p99 (lower). Plain SVG, no plotting library."""

from __future__ import annotations

import itertools
import math
from html import escape
from typing import Any

__all__ = ["pareto_front", "rate_latency_chart"]

_W, _H, _PAD = 720, 420, 60
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
            "#e377c2")
_X, _Y = "achieved_rate", "latency_p99_seconds"


def _points(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        f = g["figures"]
        if _X in f and _Y in f:
            out.append({"configuration": g["configuration"], "workload": g["workload"],
                        "level": g["level"], "rate": f[_X]["mean"], "p99": f[_Y]["mean"]})
    return out


def pareto_front(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per workload (different workloads' requests are not comparable), the points
    (configuration, level) that no other point of that workload beats on both rate and p99."""
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for p in _points(groups):
        by_workload.setdefault(p["workload"], []).append(p)
    front = []
    for points in by_workload.values():
        # Highest rate first (O(n log n): 10,000 groups compared pairwise took 42 s): a point
        # is beaten by a lower p99 at a higher rate, or at its own rate.
        points.sort(key=lambda p: -p["rate"])
        best_above = math.inf  # the lowest p99 at any higher rate
        for _, same in itertools.groupby(points, key=lambda p: p["rate"]):
            level = list(same)
            lowest = min(p["p99"] for p in level)
            front += [p for p in level if best_above > p["p99"] and lowest >= p["p99"]]
            best_above = min(best_above, lowest)
    return sorted(front, key=lambda p: (p["workload"], p["rate"]))


def rate_latency_chart(doc: dict[str, Any]) -> str:
    """The SVG, or "" when no group has both figures."""
    points = _points(doc["groups"])
    if not points:
        return ""
    x_max = max(p["rate"] for p in points) * 1.05 or 1.0
    y_max = max(p["p99"] for p in points) * 1.05 or 1.0

    def xy(p: dict[str, Any]) -> tuple[float, float]:
        return (_PAD + p["rate"] / x_max * (_W - 2 * _PAD),
                _H - _PAD - p["p99"] / y_max * (_H - 2 * _PAD))

    keys = {c["index"]: c["key"] for c in doc["configurations"]}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W + 280}" height="{_H}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="13">achieved rate '
             f'(req/s) against p99 latency (ms), mean over repeats</text>',
             f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" '
             f'stroke="#333"/>',
             f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#333"/>']
    for i in range(5):
        fx, fy = x_max * i / 4, y_max * i / 4
        x = _PAD + i / 4 * (_W - 2 * _PAD)
        y = _H - _PAD - i / 4 * (_H - 2 * _PAD)
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD + 16}" text-anchor="middle">'
                     f'{fx:.4g}</text>')
        parts.append(f'<text x="{_PAD - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{fy * 1000:.4g}</text>')
    by_config: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for p in points:
        by_config.setdefault((p["configuration"], p["workload"]), []).append(p)
    for n, ((config, workload), line) in enumerate(sorted(by_config.items())):
        colour = _COLOURS[n % len(_COLOURS)]
        line.sort(key=lambda p: p["level"])
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, line))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        for p in line:
            x, y = xy(p)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        label = escape(f"{keys.get(config, config)} · {workload}")
        parts.append(f'<text x="{_W - _PAD + 4}" y="{_PAD + 14 * n}" fill="{colour}">'
                     f'{label}</text>')
    front = pareto_front(doc["groups"])
    for workload in sorted({p["workload"] for p in front}):
        line = [p for p in front if p["workload"] == workload]
        if len(line) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, line))
            parts.append(f'<polyline points="{coords}" fill="none" stroke="#000" '
                         f'stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"

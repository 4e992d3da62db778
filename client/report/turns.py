"""Per-turn figures of a multi-turn run (`aifb.client.engine.sessions`), for the reports.

`session_figures` gathers the session counters and, per turn index, the turns answered and
failed, the mean input and output tokens (the server's `usage` when it sent it) and TTFT and
latency percentiles in seconds: input tokens grow with the history, and a server that caches
prefixes keeps the TTFT of later turns from growing with them. `session_rows` (the summary) and
`turn_table` (the Markdown and HTML table) format them.
"""

from __future__ import annotations

from typing import Any

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.results import LoadResult
from aifb.client.engine.sessions import parse_turn_key

__all__ = ["TURN_HEAD", "session_figures", "session_rows", "turn_table"]

TURN_HEAD = ("turn", "answered", "failed", "input tokens (mean)", "output tokens (mean)",
             "TTFT p50", "TTFT p99", "latency p50", "latency p99")


def _mean(total: float, count: float) -> float | None:
    return round(total / count, 3) if count else None


def session_figures(result: LoadResult) -> dict[str, Any] | None:
    """Sessions started/completed/failed/cut and one row per turn; None without sessions."""
    c = result.counters
    if "sessions_started" not in c:
        return None
    numbers: dict[int, dict[str, float]] = {}
    hists: dict[int, dict[str, LatencyHistogram]] = {}
    for key, value in result.values.items():
        found = parse_turn_key(key)
        if found is not None:
            numbers.setdefault(found[0], {})[found[1]] = value
    for key, hist in result.histograms.items():
        found = parse_turn_key(key)
        if found is not None and hist.count:
            hists.setdefault(found[0], {})[found[1]] = hist
    turns = []
    for k in sorted(set(numbers) | set(hists)):
        n, h = numbers.get(k, {}), hists.get(k, {})
        ok = n.get("requests", 0.0)
        row: dict[str, Any] = {"turn": k, "requests": int(ok), "errors": int(n.get("errors", 0)),
                               "input_tokens_mean": _mean(n.get("input_tokens", 0.0), ok),
                               "output_tokens_mean": _mean(n.get("output_tokens", 0.0), ok)}
        for name in ("ttft", "latency"):
            found_hist = h.get(name)
            for p in (50, 99):
                row[f"{name}_p{p}_s"] = (found_hist.percentile_us(p) / 1e6
                                         if found_hist is not None else None)
        turns.append(row)
    return {"started": c.get("sessions_started", 0), "completed": c.get("sessions_completed", 0),
            "failed": c.get("sessions_failed", 0), "cut": c.get("sessions_cut", 0),
            "turns": turns}


def session_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    s = doc.get("sessions")
    if not s:
        return []
    return [("sessions", f"{s['completed']:,} completed, {s['failed']:,} failed, {s['cut']:,} "
                         f"cut by the end of the run, of {s['started']:,} started")]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.3f} ms"


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def turn_table(doc: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per turn, under TURN_HEAD (empty without sessions)."""
    s = doc.get("sessions")
    if not s:
        return []
    return [(str(t["turn"]), str(t["requests"]), str(t["errors"]),
             _tokens(t["input_tokens_mean"]), _tokens(t["output_tokens_mean"]),
             _ms(t["ttft_p50_s"]), _ms(t["ttft_p99_s"]), _ms(t["latency_p50_s"]),
             _ms(t["latency_p99_s"])) for t in s["turns"]]

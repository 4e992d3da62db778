"""Two runs side by side: the headline figures of each and how the second differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CompareRow", "compare"]

_LATENCY_KEYS = ("p50", "p90", "p99", "p99_9", "max")


@dataclass(frozen=True, slots=True)
class CompareRow:
    figure: str
    unit: str
    a: float | None
    b: float | None

    @property
    def diff(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def ratio(self) -> float | None:
        return None if not self.a or self.b is None else self.b / self.a

    def to_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "unit": self.unit, "a": self.a, "b": self.b,
                "diff": self.diff, "ratio": self.ratio}


def _figures(doc: dict[str, Any]) -> dict[str, tuple[str, float | None]]:
    f = doc["figures"]
    out: dict[str, tuple[str, float | None]] = {
        "requests": ("count", float(f["counters"].get("completed", 0))),
        "errors": ("count", float(f["counters"].get("errors", 0))),
        "error ratio": ("ratio", f["error_ratio"]),
        "achieved rate": ("req/s", f["achieved_rate"]),
        "target rate": ("req/s", f["target_rate"] or None),
    }
    for name in ("latency", "service", "lag", "ttft", "itl", "tpot"):
        hist = f["histograms"].get(name)
        for key in _LATENCY_KEYS:
            out[f"{name} {key.replace('_', '.')}"] = (
                "s", hist.get(key) if hist is not None else None)
    rates = f.get("value_rates", {})
    values = f["values"]
    out["output tokens/s"] = ("tokens/s", rates.get("output_tokens"))
    out["goodput"] = ("req/s", rates.get("good_requests"))
    out["recall@k"] = ("ratio", values["recall_hits"] / values["recall_checked"]
                       if values.get("recall_checked") else None)
    out["insert throughput"] = ("vectors/s", f["extra"].get("insert_vectors_per_s"))
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[CompareRow]:
    """Rows for every figure either run has (report documents as `build_document` makes)."""
    fa, fb = _figures(a), _figures(b)
    rows = []
    for name, (unit, va) in fa.items():
        vb = fb[name][1]
        if va is None and vb is None:
            continue
        rows.append(CompareRow(name, unit, va, vb))
    return rows

"""A load run's result: counters, HDR histograms and a per-second series; bytes in, exact merge.

`LoadResult` is what one engine (one worker) produces and what a report reads. `to_bytes` /
`from_bytes` carry it between workers (JSON, histograms in the HdrHistogram V2 base64 encoding),
and `merge_results` combines workers exactly: counters and histogram buckets add, the per-second
series adds second by second (each second keeps its own histograms, so merged percentiles are
exact too), the target rate adds and the measured window is the longest.

A request cancelled on purpose (`LoadSpec.cancel_fraction`) is counted in `cancelled`, apart
from `completed` and `errors`: it is in no latency histogram and spends no error budget.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aifb.client.engine.histogram import LatencyHistogram

if TYPE_CHECKING:
    from aifb.client.engine.samples import RequestLog, SampleSet

__all__ = ["COUNTERS", "HISTOGRAMS", "LoadResult", "RunState", "SecondStats", "merge_results"]

COUNTERS = ("sent", "completed", "ok", "errors", "dropped", "excluded", "unfinished", "late",
            "cancelled")
HISTOGRAMS = ("latency", "service", "lag", "ttft", "itl", "tpot")


class RunState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


_SEVERITY = {RunState.SUCCEEDED: 0, RunState.CANCELLED: 1, RunState.FAILED: 2}


@dataclass(slots=True)
class SecondStats:
    """One progress interval (by completion time), all requests, warm-up included.

    `ttft` and `itl` exist only once a streaming request recorded one (an HDR histogram holds
    ~190 kB of buckets, too much to keep empty ones for every second of a plain HTTP run).
    `span_s` is how long the interval really lasted (the last one is cut short by the end)."""

    second: int
    sent: int = 0
    completed: int = 0
    errors: int = 0
    dropped: int = 0
    in_flight: int = 0
    target_rate: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    cancelled: int = 0
    span_s: float = 0.0
    ttft: LatencyHistogram | None = None
    itl: LatencyHistogram | None = None

    def add(self, other: SecondStats) -> None:
        self.sent += other.sent
        self.completed += other.completed
        self.errors += other.errors
        self.dropped += other.dropped
        self.cancelled += other.cancelled
        self.in_flight += other.in_flight
        self.target_rate += other.target_rate
        self.span_s = max(self.span_s, other.span_s)
        self.latency.add(other.latency)
        self.lag.add(other.lag)
        if other.ttft is not None:
            if self.ttft is None:
                self.ttft = LatencyHistogram()
            self.ttft.add(other.ttft)
        if other.itl is not None:
            if self.itl is None:
                self.itl = LatencyHistogram()
            self.itl.add(other.itl)

    def to_dict(self) -> dict[str, Any]:
        out = {"second": self.second, "sent": self.sent, "completed": self.completed,
               "errors": self.errors, "dropped": self.dropped, "cancelled": self.cancelled,
               "in_flight": self.in_flight, "target_rate": self.target_rate,
               "span_s": self.span_s, "latency": self.latency.encode().decode("ascii"),
               "lag": self.lag.encode().decode("ascii")}
        for name, hist in (("ttft", self.ttft), ("itl", self.itl)):
            if hist is not None:
                out[name] = hist.encode().decode("ascii")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecondStats:
        extra = {name: LatencyHistogram.decode(d[name].encode("ascii"))
                 for name in ("ttft", "itl") if d.get(name)}
        return cls(second=int(d["second"]), sent=int(d["sent"]), completed=int(d["completed"]),
                   errors=int(d["errors"]), dropped=int(d["dropped"]),
                   cancelled=int(d.get("cancelled", 0)), in_flight=int(d["in_flight"]),
                   target_rate=float(d["target_rate"]), span_s=float(d.get("span_s", 0.0)),
                   latency=LatencyHistogram.decode(d["latency"].encode("ascii")),
                   lag=LatencyHistogram.decode(d["lag"].encode("ascii")), **extra)


@dataclass(slots=True)
class LoadResult:
    """Statistics cover requests whose intended send time fell in the measurement window."""

    state: RunState = RunState.PENDING
    reason: str = ""
    mode: str = ""
    workload: str = ""
    workers: int = 1
    users: int = 0
    target_rate: float = 0.0  # mean intended rate over the window (open loop), else 0
    measured_s: float = 0.0  # length of the measurement window actually run
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {name: LatencyHistogram() for name in HISTOGRAMS})
    series: list[SecondStats] = field(default_factory=list)
    # Per-request rows when the run recorded them (not in to_bytes or merges): one engine run's
    # RequestLog, or a SampleSet of several (a sweep's steps, a Spark run's partitions).
    samples: RequestLog | SampleSet | None = None

    @property
    def achieved_rate(self) -> float:
        """Requests intended in the window and completed (ok or not), per second of window."""
        return self.counters["completed"] / self.measured_s if self.measured_s > 0 else 0.0

    @property
    def ok_rate(self) -> float:
        return self.counters["ok"] / self.measured_s if self.measured_s > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        done = self.counters["completed"]
        return self.counters["errors"] / done if done else 0.0

    def value_rates(self) -> dict[str, float]:
        """Each summed per-request value per second of window (output_tokens: tokens/s;
        good_requests: request goodput)."""
        if self.measured_s <= 0:
            return {}
        return {k: round(v / self.measured_s, 3) for k, v in self.values.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready report: counters, rates and every histogram's percentiles (µs)."""
        return {"state": self.state.value, "reason": self.reason, "mode": self.mode,
                "workload": self.workload, "workers": self.workers, "users": self.users,
                "target_rate": self.target_rate, "achieved_rate": round(self.achieved_rate, 3),
                "achieved_ratio": (round(self.achieved_rate / self.target_rate, 5)
                                   if self.target_rate else None),
                "measured_s": round(self.measured_s, 3), "counters": dict(self.counters),
                "errors_by_kind": dict(self.errors_by_kind), "values": dict(self.values),
                "value_rates": self.value_rates(), "extra": dict(self.extra),
                "histograms": {k: h.summary() for k, h in self.histograms.items() if h.count}}

    def to_bytes(self) -> bytes:
        """`to_dict` as compact JSON: how results travel between processes."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LoadResult:
        return cls.from_dict(json.loads(data))

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready values (histograms in HDR's compressed text), as
        result.json keeps it; `from_dict` reads it back exactly."""
        return {"v": 1, "state": self.state.value, "reason": self.reason, "mode": self.mode,
               "workload": self.workload, "workers": self.workers, "users": self.users,
               "target_rate": self.target_rate, "measured_s": self.measured_s,
               "counters": self.counters, "errors_by_kind": self.errors_by_kind,
               "values": self.values, "extra": self.extra,
               "histograms": {k: h.encode().decode("ascii") for k, h in self.histograms.items()},
               "series": [s.to_dict() for s in self.series]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        if d.get("v") != 1:
            raise ValueError(f"unknown LoadResult encoding version {d.get('v')!r}")
        counters = dict.fromkeys(COUNTERS, 0)
        counters.update({k: int(v) for k, v in d["counters"].items()})
        hists = {name: LatencyHistogram() for name in HISTOGRAMS}
        hists.update({k: LatencyHistogram.decode(v.encode("ascii"))
                      for k, v in d["histograms"].items()})
        return cls(state=RunState(d["state"]), reason=d["reason"], mode=d["mode"],
                   workload=d["workload"], workers=int(d["workers"]), users=int(d["users"]),
                   target_rate=float(d["target_rate"]), measured_s=float(d["measured_s"]),
                   counters=counters, errors_by_kind={k: int(v) for k, v in
                                                      d["errors_by_kind"].items()},
                   values={k: float(v) for k, v in d["values"].items()},
                   extra={k: float(v) for k, v in d["extra"].items()}, histograms=hists,
                   series=[SecondStats.from_dict(s) for s in d["series"]])


def merge_results(results: Iterable[LoadResult]) -> LoadResult:
    """Combine workers' results exactly (inputs are not modified)."""
    out = LoadResult(workers=0, state=RunState.SUCCEEDED)
    reasons: list[str] = []
    by_second: dict[int, SecondStats] = {}
    for res in results:
        if _SEVERITY.get(res.state, 0) > _SEVERITY.get(out.state, 0):
            out.state = res.state
        if res.reason and res.reason not in reasons:
            reasons.append(res.reason)
        out.mode = out.mode or res.mode
        out.workload = out.workload or res.workload
        out.workers += res.workers
        out.users += res.users
        out.target_rate += res.target_rate
        out.measured_s = max(out.measured_s, res.measured_s)
        for table_out, table_in in ((out.counters, res.counters),
                                    (out.errors_by_kind, res.errors_by_kind)):
            for k, n in table_in.items():
                table_out[k] = table_out.get(k, 0) + n
        for key, value in res.values.items():
            out.values[key] = out.values.get(key, 0.0) + value
        for key, value in res.extra.items():
            out.extra[key] = out.extra.get(key, 0.0) + value
        for name, hist in res.histograms.items():
            out.histograms.setdefault(name, LatencyHistogram()).add(hist)
        for sec in res.series:
            by_second.setdefault(sec.second, SecondStats(sec.second)).add(sec)
    out.reason = "; ".join(reasons)
    out.series = [by_second[k] for k in sorted(by_second)]
    return out

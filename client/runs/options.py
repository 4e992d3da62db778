"""A run's load options as the service receives them, and how they become an engine plan.

`LoadOptions` mirrors `aifb.v1.LoadProfile` in plain Python (seconds, strings, dicts) so the run
store can keep it as JSON and the CLI and the servicer share one validation. `plan(options)`
turns it into what the engine runs: a `LoadSpec` (closed, constant, Poisson, ramp, step, a
trace replay) or a `SweepSpec`. Every problem is an `InvalidArgument` whose field is the
request's path (`load.rate`, `load.slo.p99`), so a client can point at what it got wrong.

A ramp raises the rate from `start_rate` to `rate`, or, given `concurrency` and no rate, the
closed loop's users from `start_concurrency` to `concurrency` (a closed loop with
`start_concurrency` ramps the same way). A trace replay (`trace`) reads the arrival times of
`trace_file` here (`aifb.client.workloads.trace`), divided by `time_scale`; it runs in one
engine (request n must be entry n). `workload_defaults` gives the workload parameters these
options imply: a replay's trace, so the requests carry its entries.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from aifb.client.engine.budget import ErrorBudget
from aifb.client.engine.profiles import Profile, Stage, ramp
from aifb.client.engine.samples import DEFAULT_SAMPLE_LIMIT, MAX_SAMPLE_LIMIT
from aifb.client.engine.schedule import Arrival
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.sweep import SweepSpec
from aifb.client.workloads.trace import read_trace, trace_offsets_ns
from aifb.mesh.errors import InvalidArgument

__all__ = ["MODES", "LoadOptions", "Plan", "Slo", "parse_duration", "parse_slo", "plan",
           "workload_defaults"]

MODES = ("closed", "constant", "poisson", "ramp", "step", "sweep", "trace")
ENGINES = ("inprocess", "spark")
DEFAULT_ERROR_BUDGET = 0.05
SWEEP_POINTS = 6  # open-loop rates between the synchronous and the maximum rate
MAX_DURATION_S = 7 * 24 * 3600.0
# What one engine can honour: one in-process engine sends ~10-30k requests/s per core here, so
# 100k/s is already past any machine's reach, never a number that makes it spin for nothing;
# Spark multiplies it by its partitions.
MAX_RATE_PER_ENGINE = 100_000.0
MAX_PARTITIONS = 1024
MAX_WORKERS = 256
MAX_REQUESTS = 1_000_000_000
MAX_CONCURRENCY = 100_000
# Gamma arrivals' shape: below 0.01 the gaps degenerate into huge bursts and long silences.
BURSTINESS_RANGE = (0.01, 100.0)
MAX_TIME_SCALE = 1000.0
_TRACE_TAIL_S = 0.001  # a trace replay's run ends this long after its last arrival
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SLO_KEY = re.compile(r"^(?:(ttft|itl|tpot|service)_)?p(\d{1,2}(?:\.\d{1,3})?)$")
_SPARK_MASTER = re.compile(r"^(local(\[(\d+|\*)\])?|spark://[A-Za-z0-9.-]+:\d{1,5})$")


def parse_duration(text: str, *, field: str = "duration") -> float:
    """'60s', '500ms', '2m', '1h' or a plain number of seconds -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidArgument(f"bad duration {text!r}: expected a number with ms, s, m or h",
                              field=field)
    return float(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True, slots=True)
class Slo:
    """One objective: `metric` ('latency', 'ttft', ...) at `percentile` under `limit_s`, or the
    error ratio under `limit_ratio` (metric 'errors')."""

    key: str
    metric: str
    percentile: float = 0.0
    limit_s: float = 0.0
    limit_ratio: float = 0.0


def parse_slo(slo: dict[str, str]) -> list[Slo]:
    """{'p99': '50ms', 'ttft_p90': '200ms', 'errors': '1%'} -> objectives, validated."""
    out: list[Slo] = []
    for key, value in sorted(slo.items()):
        where = f"load.slo.{key}"
        if key in ("errors", "error_ratio"):
            text = value.strip()
            try:
                ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise InvalidArgument(f"bad error SLO {value!r}: expected 1% or 0.01",
                                      field=where) from None
            if not 0 <= ratio <= 1:
                raise InvalidArgument("the error SLO must be within 0..1 (0%..100%)", field=where)
            out.append(Slo(key, "errors", limit_ratio=ratio))
            continue
        m = _SLO_KEY.match(key)
        if not m:
            raise InvalidArgument(f"unknown SLO {key!r}: expected pNN, ttft_pNN, itl_pNN, "
                                  "tpot_pNN, service_pNN or errors", field=where)
        pct = float(m.group(2))
        if not 0 < pct < 100:
            raise InvalidArgument("an SLO percentile must be within (0, 100)", field=where)
        limit = parse_duration(value, field=where)
        if limit <= 0:
            raise InvalidArgument("an SLO limit must be > 0", field=where)
        out.append(Slo(key, m.group(1) or "latency", percentile=pct, limit_s=limit))
    return out


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What load a run applies (seconds and plain values; see aifb.v1.LoadProfile)."""

    mode: str = ""  # "" = closed when no rate is given, else constant
    concurrency: int = 0
    rate: float = 0.0
    start_rate: float = 0.0
    step_rate: float = 0.0
    step_duration_s: float = 0.0
    burstiness: float = 1.0
    duration_s: float = 10.0
    max_requests: int = 0
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    error_budget: float = DEFAULT_ERROR_BUDGET
    slo: dict[str, str] = field(default_factory=dict)
    engine: str = "inprocess"
    spark_master: str = ""
    partitions: int = 0
    # One row per request in samples.parquet: a single run, every step of a sweep (column
    # `step`), or every Spark partition (column `partition`, the limit split between them).
    record_samples: bool = False
    max_samples: int = 0  # rows kept at most over the whole run (0: DEFAULT_SAMPLE_LIMIT)
    workers: int = 1  # in-process engine: worker processes sharing the load
    seed: int | None = None  # the schedule's random choices; None: new ones each run
    start_concurrency: int = 0  # > 0: the closed loop's users ramp from this to concurrency
    trace_file: str = ""  # the trace mode's arrival times (and the LLM workloads' content)
    time_scale: float = 1.0  # a trace replay runs this many times faster
    cancel_fraction: float = 0.0  # requests cancelled on purpose (0..1)
    cancel_after_s: float = 0.0  # ... this long after they were sent, if still unanswered
    time_slice_s: float = 0.0  # the report's time slices (whole seconds; 0: about ten slices)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("constant" if self.rate > 0 else "closed")

    @property
    def sample_limit(self) -> int:
        """How many per-request rows the run keeps (0: none recorded)."""
        if not self.record_samples:
            return 0
        return self.max_samples or DEFAULT_SAMPLE_LIMIT


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine runs: one LoadSpec, or a sweep of them."""

    load: LoadSpec | None
    sweep: SweepSpec | None
    slos: list[Slo]

    @property
    def budget(self) -> ErrorBudget:
        """The run's error budget (every step of a sweep has the same)."""
        spec = self.load if self.load is not None else self.sweep.step if self.sweep else None
        assert spec is not None
        return spec.budget

    @property
    def total_s(self) -> float:
        if self.load is not None:
            return self.load.total_s
        assert self.sweep is not None
        return self.sweep.step.total_s * (self.sweep.points + 2)


def _finite(name: str, value: float, *, low: float = 0.0, strict: bool = False,
            high: float = math.inf) -> None:
    if not math.isfinite(value) or value < low or (strict and value == low) or value > high:
        op = ">" if strict else ">="
        raise InvalidArgument(f"load.{name} must be a finite number {op} {low:g}"
                              + (f" and <= {high:g}" if math.isfinite(high) else "")
                              + f", got {value:g}", field=f"load.{name}")


def _check(o: LoadOptions) -> None:
    if o.mode and o.mode not in MODES:
        raise InvalidArgument(f"unknown load mode {o.mode!r} (known: {', '.join(MODES)})",
                              field="load.mode")
    if o.engine not in ENGINES:
        raise InvalidArgument(f"unknown engine {o.engine!r} (known: {', '.join(ENGINES)})",
                              field="load.engine")
    if not 1 <= o.workers <= MAX_WORKERS:
        raise InvalidArgument(f"load.workers must be within 1..{MAX_WORKERS}, got {o.workers}",
                              field="load.workers")
    for name, bound in (("concurrency", MAX_CONCURRENCY), ("max_requests", MAX_REQUESTS),
                        ("partitions", MAX_PARTITIONS), ("start_concurrency", MAX_CONCURRENCY)):
        if not 0 <= getattr(o, name) <= bound:
            raise InvalidArgument(f"load.{name} must be within 0..{bound}, got "
                                  f"{getattr(o, name)}", field=f"load.{name}")
    engines = max(o.partitions, 1) if o.engine == "spark" else o.workers
    max_rate = MAX_RATE_PER_ENGINE * engines
    for name in ("rate", "start_rate", "step_rate"):
        _finite(name, getattr(o, name), high=max_rate)
    for name in ("step_duration_s", "warmup_s", "cooldown_s", "cancel_after_s",
                 "time_slice_s"):
        _finite(name, getattr(o, name), high=MAX_DURATION_S)
    # 0 is "the whole trace" for a replay, and no duration at all for any other mode
    _finite("duration_s", o.duration_s, strict=o.resolved_mode != "trace", high=MAX_DURATION_S)
    _finite("time_scale", o.time_scale, strict=True, high=MAX_TIME_SCALE)
    _finite("cancel_fraction", o.cancel_fraction, high=1.0)
    if o.cancel_fraction > 0 and o.cancel_after_s <= 0:
        raise InvalidArgument("cancelling requests needs load.cancel_after > 0 (how long after "
                              "its send a request is given up on)", field="load.cancel_after")
    if o.time_slice_s and (o.time_slice_s < 1 or o.time_slice_s != int(o.time_slice_s)):
        raise InvalidArgument(f"load.time_slice must be a whole number of seconds (the series is "
                              f"per second), got {o.time_slice_s:g} s", field="load.time_slice")
    _check_mode_fields(o)
    _finite("burstiness", o.burstiness, low=BURSTINESS_RANGE[0], high=BURSTINESS_RANGE[1])
    _finite("error_budget", o.error_budget, high=1.0)
    if o.max_samples < 0 or o.max_samples > MAX_SAMPLE_LIMIT:
        raise InvalidArgument(f"load.max_samples must be within 0..{MAX_SAMPLE_LIMIT}, got "
                              f"{o.max_samples}", field="load.max_samples")
    if o.engine == "spark" and o.resolved_mode == "sweep":
        raise InvalidArgument("a sweep runs on the in-process engine only (its steps depend on "
                              "each other's results); drop --engine spark, or run fixed rates "
                              "on Spark one by one", field="load.engine")
    if o.engine == "spark" and o.spark_master and not _SPARK_MASTER.match(o.spark_master):
        raise InvalidArgument(f"bad Spark master {o.spark_master!r}: expected local, local "
                              "with N in square brackets, or spark://host:port",
                              field="load.spark_master")


def _check_mode_fields(o: LoadOptions) -> None:
    """Options that only one mode reads are refused elsewhere, never silently ignored."""
    mode = o.resolved_mode
    if o.start_concurrency and not (mode == "closed" or (mode == "ramp" and o.rate <= 0)):
        raise InvalidArgument("load.start_concurrency ramps a closed loop's users: use it with "
                              "the closed or ramp mode, a concurrency and no rate",
                              field="load.start_concurrency")
    if mode != "trace":
        if o.trace_file:
            raise InvalidArgument("load.trace_file is the trace mode's schedule: set the mode "
                                  "to trace (an LLM workload's trace parameter alone takes "
                                  "the content, not the times)", field="load.trace_file")
        if o.time_scale != 1.0:
            raise InvalidArgument("load.time_scale speeds up a trace replay: set the mode to "
                                  "trace", field="load.time_scale")
        return
    if not o.trace_file:
        raise InvalidArgument("a trace replay needs load.trace_file", field="load.trace_file")
    if o.engine == "spark":
        raise InvalidArgument("a trace replay runs on the in-process engine only (request n "
                              "is the trace's entry n, one schedule)", field="load.engine")
    if o.workers > 1:
        raise InvalidArgument("a trace replay runs in one worker (request n is the trace's "
                              "entry n, one schedule)", field="load.workers")


def _base(o: LoadOptions, **kw: Any) -> LoadSpec:
    kw.setdefault("duration_s", o.duration_s)
    try:
        return LoadSpec(warmup_s=o.warmup_s, cooldown_s=o.cooldown_s,
                        max_requests=o.max_requests, burstiness=o.burstiness, seed=o.seed,
                        budget=ErrorBudget(max_ratio=o.error_budget),
                        cancel_fraction=o.cancel_fraction, cancel_after_s=o.cancel_after_s,
                        **kw)
    except InvalidArgument as exc:
        fld = exc.field.removesuffix("_s")
        fld = {"users": "concurrency", "budget.max_ratio": "error_budget",
               "offsets_ns": "trace_file"}.get(fld, fld)
        raise InvalidArgument(f"load: {exc.message}", field=f"load.{fld}") from None


def _trace_spec(o: LoadOptions) -> LoadSpec:
    """The replay: entry n due at its timestamp / time_scale; a duration > 0 keeps the entries
    due before it. The run ends just after the last arrival (then drains)."""
    offsets = trace_offsets_ns(read_trace(o.trace_file, field="load.trace_file"), o.time_scale)
    if o.duration_s > 0:
        offsets = offsets[:bisect.bisect_left(offsets, round(o.duration_s * 1e9))]
        if not offsets:
            raise InvalidArgument(f"no entry of the trace is due in the first "
                                  f"{o.duration_s:g} s", field="load.duration")
    return _base(o, mode=Mode.OPEN, offsets_ns=offsets,
                 duration_s=offsets[-1] / 1e9 + _TRACE_TAIL_S)


def _users(o: LoadOptions) -> LoadSpec:
    """A closed loop: `concurrency` users, or a ramp to them from `start_concurrency`."""
    if o.concurrency < 1:
        raise InvalidArgument("closed loop needs load.concurrency >= 1 (or give a rate)",
                              field="load.concurrency")
    if o.resolved_mode == "ramp" or o.start_concurrency:
        prof = ramp(o.start_concurrency, o.concurrency, o.duration_s)
        return _base(o, mode=Mode.CLOSED, users=o.concurrency, profile=prof)
    return _base(o, mode=Mode.CLOSED, users=o.concurrency)


def workload_defaults(o: LoadOptions) -> dict[str, str]:
    """Workload parameters these options imply, for a workload that declares them and was not
    given them: in a trace replay, `trace` (the replayed file, so the requests are its
    entries). The load's seed is not one of them: an experiment gives each trial its own load
    seed and keeps the same prompts across trials; the CLI's --seed sets both."""
    if o.resolved_mode == "trace" and o.trace_file:
        return {"trace": o.trace_file}
    return {}


def _step_profile(o: LoadOptions) -> Profile:
    if o.step_rate <= 0 or o.step_duration_s <= 0:
        raise InvalidArgument("a step profile needs step_rate > 0 and step_duration > 0",
                              field="load.step_rate" if o.step_rate <= 0
                              else "load.step_duration")
    start = o.start_rate or o.step_rate
    levels: list[float] = []
    level = start
    while level <= o.rate + 1e-9 and len(levels) < 1000:
        levels.append(level)
        level += o.step_rate
    if not levels:
        raise InvalidArgument("start_rate is above rate: no step to run", field="load.start_rate")
    return Profile(tuple(Stage(o.step_duration_s, lv, lv) for lv in levels))


def plan(o: LoadOptions) -> Plan:
    """Validate `o` and build the engine's plan (InvalidArgument names the field)."""
    _check(o)
    slos = parse_slo(o.slo)
    mode = o.resolved_mode
    if mode == "closed" or (mode == "ramp" and o.rate <= 0 and o.concurrency > 0):
        return Plan(_users(o), None, slos)
    if mode == "trace":
        return Plan(_trace_spec(o), None, slos)
    if mode in ("constant", "poisson", "ramp", "step") and o.rate <= 0:
        raise InvalidArgument(f"{mode} load needs load.rate > 0, got {o.rate:g}",
                              field="load.rate")
    if mode == "constant":
        return Plan(_base(o, mode=Mode.OPEN, rate=o.rate), None, slos)
    if mode == "poisson":
        return Plan(_base(o, mode=Mode.OPEN, rate=o.rate, arrival=Arrival.POISSON), None, slos)
    if mode == "ramp":
        if o.start_rate > o.rate:
            raise InvalidArgument("a ramp goes up: start_rate must be <= rate",
                                  field="load.start_rate")
        prof = ramp(o.start_rate, o.rate, o.duration_s)
        return Plan(_base(o, mode=Mode.OPEN, profile=prof), None, slos)
    if mode == "step":
        return Plan(_base(o, mode=Mode.OPEN, profile=_step_profile(o)), None, slos)
    latency = [s for s in slos if s.metric == "latency"]
    errors = [s for s in slos if s.metric == "errors"]
    step = _base(o, mode=Mode.CLOSED, users=1)
    sweep = SweepSpec(step=step, max_users=o.concurrency or 64,
                      points=SWEEP_POINTS,
                      slo_percentile=latency[0].percentile if latency else 99.0,
                      slo_latency_us=round(latency[0].limit_s * 1e6) if latency else 0,
                      slo_error_ratio=errors[0].limit_ratio if errors else 1.0)
    return Plan(None, sweep, slos)

"""A rate sweep: synchronous, then maximum throughput, then open-loop rates in between.

Step 1 runs one closed-loop user (the synchronous rate), step 2 `max_users` users (the maximum
throughput); then `points` open-loop rates evenly spaced strictly between the two run in
increasing order. The sweep stops at the first rate that breaches the SLO (latency percentile
over its limit, or an error ratio over its limit) or saturates the server (achieved rate below
`saturation_ratio` of the target, or requests dropped). Each step is a normal LoadRun.

With `sample_limit` each step records per-request rows into the budget the steps before it
left (the first `sample_limit` completions of the whole sweep are kept); `sweep_samples` puts
them into one SampleSet, each step's rows tagged with its index, name and target rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from aifb.client.engine.load import ProgressCallback, run_load
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.samples import RequestLog, SamplePart, SampleSet
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.engine.workload import Workload
from aifb.mesh.errors import InvalidArgument

__all__ = ["StepRunner", "SweepResult", "SweepSpec", "SweepStep", "run_sweep", "sweep_samples"]


@dataclass(frozen=True, slots=True)
class SweepSpec:
    step: LoadSpec = field(default_factory=LoadSpec)  # duration, warm-up, budgets per step
    max_users: int = 64
    points: int = 8
    slo_percentile: float = 99.0
    slo_latency_us: int = 0  # 0 = no latency SLO
    slo_error_ratio: float = 1.0
    saturation_ratio: float = 0.97

    def __post_init__(self) -> None:
        if not 1 <= self.max_users <= 100_000:
            raise InvalidArgument("max_users must be in 1..100000", field="max_users")
        if not 0 <= self.points <= 100:
            raise InvalidArgument("points must be in 0..100", field="points")
        if not 0 < self.saturation_ratio <= 1:
            raise InvalidArgument("saturation_ratio must be in (0, 1]", field="saturation_ratio")


@dataclass(frozen=True, slots=True)
class SweepStep:
    name: str  # "synchronous" | "throughput" | "rate"
    target_rate: float
    result: LoadResult


@dataclass(slots=True)
class SweepResult:
    steps: list[SweepStep] = field(default_factory=list)
    stop_reason: str = ""  # empty when every planned rate ran


def _breach(spec: SweepSpec, res: LoadResult) -> str:
    if res.state is not RunState.SUCCEEDED:
        return f"step ended {res.state.value}: {res.reason}"
    lat = res.histograms["latency"].percentile_us(spec.slo_percentile)
    if spec.slo_latency_us and lat > spec.slo_latency_us:
        return f"SLO breached: p{spec.slo_percentile:g} {lat} us > {spec.slo_latency_us} us"
    if res.error_ratio > spec.slo_error_ratio:
        return f"SLO breached: error ratio {res.error_ratio:.4f} > {spec.slo_error_ratio}"
    return ""


def _saturated(spec: SweepSpec, res: LoadResult) -> str:
    if res.counters["dropped"]:
        return f"saturated: {res.counters['dropped']} requests dropped"
    if res.target_rate and res.achieved_rate < spec.saturation_ratio * res.target_rate:
        return (f"saturated: achieved {res.achieved_rate:.1f}/s < "
                f"{spec.saturation_ratio:g} x target {res.target_rate:.1f}/s")
    return ""


def sweep_samples(steps: list[SweepStep], limit: int) -> SampleSet:
    """The steps' per-request rows as one set: `step` (index in `steps`), `step_name`,
    `target_rate` (0 for the closed-loop steps). A step that recorded nothing (the budget was
    spent, or it failed before its start) adds its request count only."""
    out = SampleSet(limit)
    for i, st in enumerate(steps):
        tags: dict[str, int | float | str] = {"step": i, "step_name": st.name,
                                              "target_rate": st.target_rate}
        res = st.result
        if isinstance(res.samples, RequestLog):
            out.parts.append(SamplePart(tags, res.samples))
        else:
            out.parts.append(SamplePart(tags, requests=res.counters["completed"]
                                        + res.counters["excluded"]))
    return out


# (load, on_progress, rows to keep) -> the step's result, run wherever the caller runs load.
StepRunner = Callable[[LoadSpec, ProgressCallback | None, int], Awaitable[LoadResult]]


async def run_sweep(spec: SweepSpec, make_workload: Callable[[], Workload], *,
                    on_progress: ProgressCallback | None = None,
                    on_step: Callable[[SweepStep], None] | None = None,
                    sample_limit: int = 0, run_step: StepRunner | None = None) -> SweepResult:
    """Run the sweep; a fresh workload per step (`make_workload`) keeps steps independent.
    `sample_limit` > 0: per-request rows, at most that many over all steps. `run_step` runs
    one step elsewhere (the BenchmarkService: in a worker process) instead of in this loop."""
    out = SweepResult()

    async def step(name: str, load: LoadSpec, target: float) -> SweepStep:
        left = max(sample_limit - sum(s.result.samples.rows for s in out.steps
                                      if s.result.samples is not None), 0)
        if run_step is not None:
            res = await run_step(load, on_progress, left)
        else:
            res = await run_load(load, make_workload(), on_progress=on_progress,
                                 record_samples=left)
        st = SweepStep(name, target, res)
        out.steps.append(st)
        if on_step is not None:
            on_step(st)
        return st

    base = replace(spec.step, profile=None)
    sync = await step("synchronous", replace(base, mode=Mode.CLOSED, users=1), 0.0)
    if reason := _breach(spec, sync.result):
        out.stop_reason = reason
        return out
    peak = await step("throughput", replace(base, mode=Mode.CLOSED, users=spec.max_users), 0.0)
    low, high = sync.result.achieved_rate, peak.result.achieved_rate
    if high <= low or spec.points == 0:
        return out
    for i in range(1, spec.points + 1):
        rate = low + (high - low) * i / (spec.points + 1)
        res = (await step("rate", replace(base, mode=Mode.OPEN, rate=rate), rate)).result
        if reason := _breach(spec, res) or _saturated(spec, res):
            out.stop_reason = reason
            break
    return out

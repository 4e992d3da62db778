"""Execute one run's plan: the engine in worker processes, a sweep of it, or Spark executors.

Load never runs on the caller's event loop (the control plane's, in `aifb up`): a single run and
every sweep step run in `options.workers` worker processes (`aifb.client.scaleout.processes`), whose
progress is relayed to this loop; Spark runs on its executors.

The runner knows time and engines, not records or gRPC. It reports every interval through
`on_progress` (numbered across sweep steps, so a watcher sees one continuous run), can be
cancelled with what was measured kept, and returns a `RunOutcome`: the main result (the single
run, or the last sweep step) and, for sweeps, every step. After the engine finishes, the error
budget is checked once more over the whole run (the engine checks it live once enough requests
completed), so a short run against a failing target still ends FAILED. The outcome also
lists the run's phases in wall-clock time (prepare, warm-up, measurement, cool-down; or one per
sweep step), which the manager turns into child spans of the run's trace.

Per-request samples (`options.sample_limit`): a single run's `RequestLog`; for a sweep, every
step's rows in one `SampleSet` (tagged by step, within one budget); on Spark, the partitions'
rows, which the Spark engine gathers into a `SampleSet` itself. Either lands in
`result.samples`, which the manager writes to samples.parquet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aifb.client.engine.progress import Progress
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.spec import LoadSpec
from aifb.client.engine.sweep import SweepStep, run_sweep, sweep_samples
from aifb.client.runs.options import LoadOptions, Plan
from aifb.client.scaleout.processes import ProcessLoad
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.spread import Targets

__all__ = ["Phase", "RunOutcome", "Runner", "final_progress"]


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the run, in wall-clock nanoseconds: what a child span of the run covers."""

    name: str  # prepare, warmup, measure, cooldown; or step (a sweep's)
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOutcome:
    result: LoadResult
    steps: list[SweepStep] = field(default_factory=list)
    stop_reason: str = ""
    phases: list[Phase] = field(default_factory=list)
    # Spark: the per-partition results `result` was merged from (partition order).
    partitions: list[LoadResult] = field(default_factory=list)


def final_progress(result: LoadResult, last: Progress | None) -> Progress:
    """The run's own figures (its measurement window, not its last second) in the shape of a
    progress sample, phase "final": what `aifb bench list` and the live gauges show once the
    run has ended."""
    counters = result.counters
    latency, lag = result.histograms["latency"], result.histograms["lag"]
    return Progress(
        second=(last.second + 1) if last else 1, elapsed_s=result.measured_s,
        requests=counters["completed"], errors=counters["errors"],
        achieved_rate=result.achieved_rate, target_rate=result.target_rate,
        p50_s=latency.percentile_us(50) / 1e6, p99_s=latency.percentile_us(99) / 1e6,
        in_flight=0, lag_p99_s=lag.percentile_us(99) / 1e6,
        total_requests=last.total_requests if last else counters["completed"],
        total_errors=last.total_errors if last else counters["errors"], phase="final",
        dropped=counters["dropped"], cancelled=counters["cancelled"],
        total_cancelled=last.total_cancelled if last else counters["cancelled"])


class Runner:
    def __init__(self, plan: Plan, options: LoadOptions, workload: str, url: str | Targets,
                 params: dict[str, Any], on_progress: Callable[[Progress], None]) -> None:
        self.plan = plan
        self.options = options
        self.workload = workload
        self.url = url
        self.params = params
        self._on_progress = on_progress
        self._second = 0
        self._offset_requests = 0
        self._offset_errors = 0
        self._last: Progress | None = None
        self._run: ProcessLoad | None = None  # the single run or the sweep step running now
        self._task: asyncio.Task[Any] | None = None
        self._steps: list[SweepStep] = []
        self._spark_load: Any = None
        self.cancel_reason = ""
        self._began_ns = 0  # wall clock: run() called
        self._load_start_ns = 0  # wall clock: the engine's second 0 (after prepare)
        self._step_start_ns = 0
        self._phases: list[Phase] = []

    def _progress(self, sample: Progress) -> None:
        if not self._load_start_ns:
            self._load_start_ns = time.time_ns() - round(sample.elapsed_s * 1e9)
        self._second += 1
        self._last = sample
        # Seconds run on across sweep steps, and so do the totals.
        self._on_progress(dataclasses.replace(
            sample, second=self._second,
            total_requests=sample.total_requests + self._offset_requests,
            total_errors=sample.total_errors + self._offset_errors))

    def _step_done(self, step: SweepStep) -> None:
        now = time.time_ns()
        res = step.result
        self._phases.append(Phase("step", self._step_start_ns or self._began_ns, now, {
            "aifb.step": step.name, "aifb.target_rate": step.target_rate,
            "aifb.achieved_rate": round(res.achieved_rate, 3), "aifb.state": res.state.value,
            "aifb.requests": res.counters["completed"]}))
        self._step_start_ns = now
        self._steps.append(step)
        if self._last is not None:
            self._offset_requests += self._last.total_requests
            self._offset_errors += self._last.total_errors
            self._last = None

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        if self._task is not None:  # a sweep: the step's workers stop with its task
            self._task.cancel()
        elif self._run is not None:
            self._run.cancel(reason)
        elif self._spark_load is not None:
            self._spark_load.cancel(reason)

    def endpoints(self, urls: list[str]) -> None:
        """Follow a replicated target: spread over `urls` (its READY replicas) from now on,
        in the load running now and in every sweep step after it."""
        if not isinstance(self.url, Targets) or not urls:
            return
        self.url = Targets(tuple(urls), self.url.strategy)
        for load in (self._run, self._spark_load):
            if load is not None:
                load.endpoints(list(urls))

    def _relay(self) -> Callable[[Progress], None]:
        """Progress arrives on the workers' hub thread: hand it to this loop."""
        loop = asyncio.get_running_loop()

        def relay(sample: Progress) -> None:
            loop.call_soon_threadsafe(self._progress, sample)

        return relay

    async def _in_workers(self, load: LoadSpec, on_progress: Callable[[Progress], None],
                          sample_limit: int, workers: int) -> LoadResult:
        run = self._run = ProcessLoad(load, self.workload, self.url, self.params,
                                      workers=workers, on_progress=on_progress,
                                      sample_limit=sample_limit)
        if self.cancel_reason:
            run.cancel(self.cancel_reason)
        try:
            return await asyncio.to_thread(run.run)
        except asyncio.CancelledError:  # the sweep's task: the workers stop too
            run.cancel(self.cancel_reason or "cancelled")
            raise

    async def run(self) -> RunOutcome:
        self._began_ns = time.time_ns()
        if self.options.engine == "spark":
            outcome = await self._spark()
        elif self.plan.sweep is not None:
            outcome = await self._sweep()
        else:
            assert self.plan.load is not None
            outcome = RunOutcome(await self._in_workers(
                self.plan.load, self._relay(), self.options.sample_limit, self.options.workers))
        self.plan.budget.judge(outcome.result)
        outcome.phases = self._phases if self.plan.sweep is not None else self._load_phases()
        return outcome

    def _load_phases(self) -> list[Phase]:
        """prepare, then warm-up, measurement and cool-down as the plan placed them from the
        engine's second 0, each cut at the run's end (the last one runs to it: drain too)."""
        end = time.time_ns()
        t0 = self._load_start_ns
        if not t0:  # no second was measured: the run ended while preparing
            return [Phase("prepare", self._began_ns, end)]
        load = self.plan.load
        assert load is not None
        w0 = t0 + round(load.warmup_s * 1e9)
        w1 = t0 + round((load.total_s - load.cooldown_s) * 1e9)
        bounds = [("warmup", t0, w0), ("measure", w0, w1),
                  ("cooldown", w1, t0 + round(load.total_s * 1e9))]
        out = [Phase("prepare", self._began_ns, max(t0, self._began_ns))]
        for name, a, b in bounds:
            if a < b and a < end:
                out.append(Phase(name, a, min(b, end)))
        if len(out) > 1:
            last = out[-1]
            out[-1] = Phase(last.name, last.start_ns, end)
        return out

    async def _sweep(self) -> RunOutcome:
        sweep = self.plan.sweep
        assert sweep is not None
        limit = self.options.sample_limit
        relay = self._relay()

        async def step(load: LoadSpec, _: object, rows: int) -> LoadResult:
            # One worker per step: a sweep's steps are single closed loops it compares.
            return await self._in_workers(load, relay, rows, 1)

        self._task = asyncio.ensure_future(run_sweep(
            sweep, lambda: build_workload(self.workload, self.url, self.params),
            on_progress=self._progress, on_step=self._step_done, sample_limit=limit,
            run_step=step))
        try:
            done = await self._task
        except asyncio.CancelledError:
            if not self.cancel_reason:
                raise
            main = self._steps[-1].result if self._steps else LoadResult(workload=self.workload)
            main.state, main.reason = RunState.CANCELLED, self.cancel_reason
            return RunOutcome(self._with_samples(main, self._steps, limit), list(self._steps),
                              self.cancel_reason)
        if not done.steps:
            return RunOutcome(LoadResult(state=RunState.FAILED, reason="the sweep ran no step"))
        main = done.steps[-1].result
        if main.state is RunState.FAILED and len(done.steps) > 2:
            # A step failing past saturation ends the sweep; the sweep itself succeeded.
            main.state = RunState.SUCCEEDED
        return RunOutcome(self._with_samples(main, done.steps, limit), list(done.steps),
                          done.stop_reason)

    @staticmethod
    def _with_samples(main: LoadResult, steps: list[SweepStep], limit: int) -> LoadResult:
        """`main` (the last step's result) carrying every step's rows, when recorded."""
        if limit > 0:
            main.samples = sweep_samples(steps, limit)
        return main

    async def _spark(self) -> RunOutcome:
        from aifb.client.scaleout.spark import SparkLoad  # lazily: pyspark and a JVM when asked

        load = self.plan.load
        if load is None:
            raise NotImplementedError("sweeps run on the in-process engine only")
        loop = asyncio.get_running_loop()

        def relay(sample: Progress) -> None:  # called on the driver's threads
            loop.call_soon_threadsafe(self._progress, sample)

        spark = self._spark_load = SparkLoad(
            load, self.workload, self.url, self.params,
            master=self.options.spark_master or "local[2]",
            partitions=self.options.partitions or None, on_progress=relay,
            sample_limit=self.options.sample_limit)
        if self.cancel_reason:
            spark.cancel(self.cancel_reason)
        result: LoadResult = await asyncio.to_thread(spark.run)
        return RunOutcome(result, partitions=list(spark.partition_results))



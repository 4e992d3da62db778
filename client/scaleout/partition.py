"""What runs on each Spark executor: rebuild the workload, agree on the start, run the engine.

Each partition gets one `PartitionTask` (picklable: a LoadSpec, a workload name, a URL and a
params dict) and runs the same in-process engine as `aifb bench run` does, on its own event loop
in the Python worker. Start alignment: the driver proposes a wall-clock instant a little ahead;
after `prepare()` (connections open) every partition joins one barrier `allGather` with the
instant it became ready, and all compute the same start, `max(proposed, latest ready + margin)`,
plus the partition's stagger. The margin covers Spark's barrier, which answers each task up to
about a second after the last one arrived (it polls once a second). Each worker converts the
agreed epoch to its own `perf_counter_ns`. A partition that fails before the start still joins
the barrier (with `failed:<reason>`), so the others fail at once instead of waiting.

The task returns `(index, info JSON, LoadResult.to_bytes(), samples)` (info: partition, host,
pid, agreed start, how late it began, the worker's CPU seconds, and with per-request samples
their `rows`/`requests`/`limit`); `samples` is the partition's rows as Parquet (times from the
common start, so partitions line up; empty when none were recorded), built here so the driver
only concatenates. `run_task` is the plain-Python core (the barrier is passed in), so it can run
without Spark. `shared` is the state of a `SharedSetup` workload's driver-side setup
(`aifb.client.scaleout.shared`), adopted before `prepare()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from aifb.client.engine.load import LoadRun
from aifb.client.engine.results import LoadResult, RunState
from aifb.client.engine.samples import RequestLog
from aifb.client.engine.spec import LoadSpec
from aifb.client.scaleout.hub import ProgressLink
from aifb.client.scaleout.shared import SharedSetup
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.spread import Targets

__all__ = ["GATHER_MARGIN_NS", "PartitionTask", "TaskRow", "run_partition", "run_share",
           "run_task"]

GATHER_MARGIN_NS = 1_500_000_000
Gather = Callable[[str], list[str]]
TaskRow = tuple[int, str, bytes, bytes]


@dataclass(frozen=True, slots=True)
class PartitionTask:
    index: int
    spec: LoadSpec
    workload: str
    target_url: str | Targets  # one URL, or a replicated service's endpoints
    params: dict[str, Any] = field(default_factory=dict)
    start_epoch_ns: int = 0  # the driver's proposed common start (time.time_ns)
    stagger_ns: int = 0
    progress: tuple[str, int, str] | None = None  # the driver's hub: host, port, token
    sample_limit: int = 0  # > 0: keep up to this many per-request rows
    # Spark's barrier answers up to a second late; local worker processes need far less.
    gather_margin_ns: int = GATHER_MARGIN_NS


def _run_loop(main: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # uvloop is a dependency, but a foreign worker may lack it
        return asyncio.run(main)
    return uvloop.run(main)


def _encode_samples(task: PartitionTask, log: RequestLog, info: dict[str, Any]) -> bytes:
    """The rows as Parquet, timed from the common start: this partition's schedule began
    `stagger_ns` after it, so its times shift by that much."""
    from aifb.client.report.parquet import samples_parquet

    info["samples"] = {"rows": log.rows, "requests": log.seen, "limit": log.limit}
    log.start_ns -= task.stagger_ns
    if "start_epoch_ns" in info:  # the agreed start, exactly, on this host's clock
        log.wall_start_ns = int(info["start_epoch_ns"]) - task.stagger_ns
    try:
        return samples_parquet("", task.workload, log)
    except Exception as exc:  # the run's figures stand without its rows
        info["samples"]["error"] = f"{type(exc).__name__}: {exc}"
        return b""


def run_task(task: PartitionTask, gather: Gather, shared: object = None) -> TaskRow:
    """Run one partition's share; `gather` is the barrier (every partition calls it once)."""
    info, result = run_share(task, gather, shared)
    samples = (_encode_samples(task, result.samples, info)
               if isinstance(result.samples, RequestLog) else b"")
    return task.index, json.dumps(info), result.to_bytes(), samples


def run_share(task: PartitionTask, gather: Gather, shared: object = None
              ) -> tuple[dict[str, Any], LoadResult]:
    """Run one share on a fresh event loop: its info (see the module) and its result, whose
    `samples` is the share's RequestLog when rows were recorded."""
    info: dict[str, Any] = {"partition": task.index, "host": socket.gethostname(),
                            "pid": os.getpid()}
    cpu0 = time.process_time()
    joined = False

    async def start_at() -> int:
        nonlocal joined
        joined = True
        msgs = gather(f"ready:{time.time_ns()}")
        failed = [m.removeprefix("failed:") for m in msgs if m.startswith("failed:")]
        if failed:
            raise RuntimeError(f"{len(failed)} other partition(s) failed before the start: "
                               f"{failed[0]}")
        latest = max(int(m.removeprefix("ready:")) for m in msgs)
        start_epoch = max(task.start_epoch_ns, latest + task.gather_margin_ns) + task.stagger_ns
        now_epoch, now_perf = time.time_ns(), perf_counter_ns()
        info["start_epoch_ns"] = start_epoch
        info["start_late_ns"] = max(now_epoch - start_epoch, 0)
        return now_perf + (start_epoch - now_epoch)

    async def main() -> LoadResult:
        workload = build_workload(task.workload, task.target_url, task.params)
        if shared is not None:
            if not isinstance(workload, SharedSetup):
                raise TypeError(f"workload {task.workload} has no shared setup to adopt")
            workload.adopt_shared(shared)
        link = ProgressLink.connect(task.progress, task.index) if task.progress else None
        run = LoadRun(task.spec, workload, start_at=start_at,
                      on_progress=link.send if link else None,
                      record_samples=task.sample_limit)
        if link is not None:
            update = getattr(workload, "update", None)  # a spread over replicas follows them
            link.on_cancel(run.cancel, update if callable(update) else None)
        try:
            run.start()
            return await run.wait()
        finally:
            if link is not None:
                link.close()

    try:
        result = _run_loop(main())
    except Exception as exc:  # a broken partition becomes a FAILED result, not a Spark retry
        result = LoadResult(state=RunState.FAILED, mode=task.spec.mode.value,
                            workload=task.workload,
                            reason=f"partition {task.index}: {type(exc).__name__}: {exc}")
    if not joined:
        gather(f"failed:partition {task.index}: {result.reason}")
    info["cpu_s"] = time.process_time() - cpu0  # this Python worker's CPU for the whole task
    return info, result


def run_partition(tasks: Iterable[PartitionTask], shared: object = None) -> Iterator[TaskRow]:
    """The barrier-stage function: one PartitionTask per partition (`shared`: see run_task)."""
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    for task in tasks:
        yield run_task(task, lambda msg: list(ctx.allGather(msg)), shared)

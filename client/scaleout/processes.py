"""The load engine in worker processes: benchmark load never runs on the control plane's loop.

`ProcessLoad` runs one LoadSpec in `workers` fresh Python processes (spawned: no gRPC threads,
no server state), each the same engine `aifb bench run` always ran, on its own uvloop. The load
is split as the Spark engine splits it (`aifb.client.scaleout.split`: rates divided, constant
schedules interleaved, users spread), the workers start together (a barrier through this
process, then a common instant a little ahead), each interval's progress arrives merged over the
same loopback link the Spark engine uses, and the results merge exactly (HDR histograms add).

So a saturating benchmark costs the server nothing but the relay of one progress line a second:
health checks, Watch streams and job reports keep their latency, and `workers` cores of the node
generate load. A cancel reaches every worker, whose engine stops like an in-process run
(CANCELLED, statistics kept). A worker that dies is a FAILED share, never a hang; workers die
with their parent (PR_SET_PDEATHSIG), so a killed server leaves no load running. `run()` blocks:
call it in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from aifb.client.engine.load import ProgressCallback
from aifb.client.engine.results import LoadResult, RunState, merge_results
from aifb.client.engine.samples import RequestLog, SamplePart, SampleSet, split_limit
from aifb.client.engine.spec import LoadSpec
from aifb.client.scaleout.hub import ProgressHub
from aifb.client.scaleout.partition import PartitionTask, run_share
from aifb.client.scaleout.shared import SharedSetup
from aifb.client.scaleout.split import split_spec
from aifb.client.workloads.registry import build_workload, check_one_engine
from aifb.client.workloads.spread import Targets

__all__ = ["MAX_WORKERS", "ProcessLoad", "run_process_load"]

log = logging.getLogger(__name__)

MAX_WORKERS = 256
START_LEAD_S = 0.2  # the proposed common start, after the workers' imports
BARRIER_MARGIN_NS = 50_000_000  # the barrier is this process: answered at once
_Share = tuple[int, dict[str, Any], bytes, RequestLog | None]
_T = TypeVar("_T")


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the process that started it dies (any way it dies)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(task: PartitionTask, conn: Connection, shared: object = None) -> None:
    """A worker process: run the share, with the barrier through the parent (`shared`: the
    parent's SharedSetup state, adopted before prepare)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which cancels

    def gather(message: str) -> list[str]:
        conn.send(("gather", message))
        reply: list[str] = conn.recv()
        return reply

    info, result = run_share(task, gather, shared)
    samples = result.samples if isinstance(result.samples, RequestLog) else None
    conn.send(("result", task.index, info, result.to_bytes(), samples))
    conn.close()


class ProcessLoad:
    """One load run in worker processes; `run()` blocks, `cancel()` from anywhere."""

    def __init__(self, spec: LoadSpec, workload_name: str, target_url: str | Targets,
                 params: dict[str, Any] | None = None, *, workers: int = 1,
                 on_progress: ProgressCallback | None = None, sample_limit: int = 0) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be within 1..{MAX_WORKERS}, got {workers}")
        check_one_engine(workload_name, params, workers, field="workers")
        self.spec = spec
        self.workload_name = workload_name
        self.target_url = target_url
        self.params = params or {}
        self.workers = workers
        self.on_progress = on_progress
        self.sample_limit = sample_limit
        self.partition_info: list[dict[str, Any]] = []
        self.partition_results: list[LoadResult] = []
        self._cancelled = threading.Event()
        self._reason = "cancelled"
        self._hub: ProgressHub | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        self._reason = reason
        self._cancelled.set()
        hub = self._hub
        if hub is not None:
            hub.cancel()

    def endpoints(self, urls: list[str]) -> None:
        """A replicated target's READY replicas now: every worker spreads over these."""
        hub = self._hub
        if hub is not None:
            hub.endpoints(urls)

    def run(self) -> LoadResult:
        """A workload with a SharedSetup (`vectordb`'s insert phase) runs it once here, before
        the workers start, as Spark's driver does (`aifb.client.scaleout.shared`): run by every
        worker it would recreate the one collection N times under the others' queries."""
        shared = self._shared_setup() if self.workers > 1 else None
        if shared is None:
            return self._run(None)
        try:
            state = self._in_loop(shared.setup_shared())
        except asyncio.CancelledError:
            self._teardown(shared)
            return self._failed(RunState.CANCELLED, self._reason)
        except Exception as exc:
            log.warning("workload %s: the shared setup failed: %s", self.workload_name, exc)
            self._teardown(shared)
            return self._failed(RunState.FAILED, f"workload prepare failed: {exc}")
        try:
            result = self._run(state)
        finally:
            self._teardown(shared)
        if self.partition_results:
            result.extra = {**result.extra,
                            **shared.merge_extra([p.extra for p in self.partition_results]),
                            **shared.shared_metrics()}
        return result

    def _shared_setup(self) -> SharedSetup | None:
        workload = build_workload(self.workload_name, self.target_url, self.params)
        return workload if isinstance(workload, SharedSetup) else None

    def _failed(self, state: RunState, reason: str) -> LoadResult:
        return LoadResult(state=state, mode=self.spec.mode.value, workload=self.workload_name,
                          workers=0, reason=reason)

    def _teardown(self, shared: SharedSetup) -> None:
        try:
            self._in_loop(shared.teardown_shared(), cancellable=False)
        except Exception as exc:  # the run's figures stand; a failed clean-up is logged
            log.warning("workload %s: the shared teardown failed: %s", self.workload_name, exc)

    def _in_loop(self, work: Coroutine[Any, Any, _T], *, cancellable: bool = True) -> _T:
        """Run a coroutine of the parent on a loop of its own; a cancel() stops it (raising
        CancelledError here) when `cancellable`."""

        async def main() -> _T:
            task = asyncio.ensure_future(work)
            while cancellable and not task.done():
                await asyncio.wait([task], timeout=0.1)
                if self._cancelled.is_set() and not task.done():
                    task.cancel()
            return await task

        return asyncio.run(main())

    def _run(self, shared: object) -> LoadResult:
        plans = split_spec(self.spec, self.workers)
        limits = split_limit(self.sample_limit, len(plans))
        hub = self._hub = ProgressHub(len(plans), self.on_progress or (lambda _: None))
        start = time.time_ns() + int(START_LEAD_S * 1e9)
        tasks = [PartitionTask(p.index, p.spec, self.workload_name, self.target_url,
                               self.params, start, p.stagger_ns, hub.link,
                               sample_limit=limits[p.index], gather_margin_ns=BARRIER_MARGIN_NS)
                 for p in plans]
        ctx = multiprocessing.get_context("spawn")
        procs: list[multiprocessing.process.BaseProcess] = []
        conns: list[Connection] = []
        try:
            for task in tasks:
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(task, child, shared), daemon=True,
                                   name=f"aifb-load-{task.index}")
                proc.start()
                child.close()
                procs.append(proc)
                conns.append(parent)
            shares = self._drive(procs, conns)
        finally:
            hub.close()
            self._hub = None
            for started in procs:
                if started.is_alive():
                    started.terminate()
                started.join(5)
                if started.is_alive():
                    started.kill()
                    started.join(5)
            for conn in conns:
                conn.close()
        return self._merge(shares)

    def _drive(self, procs: list[Any], conns: list[Connection]) -> list[_Share]:
        """The barrier (every worker's message, then the list to all), then the results; a
        worker that exits without one is a FAILED share."""
        n = len(procs)
        gathered: dict[int, str] = {}
        shares: dict[int, _Share] = {}
        replied = False
        open_conns = dict(enumerate(conns))

        def failed(i: int, why: str) -> None:
            gathered.setdefault(i, f"failed:worker {i}: {why}")
            shares.setdefault(i, (i, {"partition": i}, LoadResult(
                state=RunState.FAILED, mode=self.spec.mode.value, workload=self.workload_name,
                reason=f"worker {i}: {why}").to_bytes(), None))

        while len(shares) < n:
            if self._cancelled.is_set() and self._hub is not None:
                self._hub.cancel()  # links made since the cancel hear it too
            if not replied and len(gathered) == n:
                if self._cancelled.is_set():  # not started yet: nobody starts
                    answer = [f"failed:{self._reason}"]
                else:
                    answer = [gathered[i] for i in range(n)]
                for conn in open_conns.values():
                    with contextlib.suppress(OSError):
                        conn.send(answer)
                replied = True
            waiting = [*open_conns.values(),
                       *(p.sentinel for i, p in enumerate(procs) if i not in shares)]
            for ready in wait(waiting, timeout=0.5):
                index = next((i for i, c in open_conns.items() if c is ready), None)
                if index is not None:
                    try:
                        message = open_conns[index].recv()
                    except (EOFError, OSError):
                        del open_conns[index]
                        continue
                    if message[0] == "gather":
                        gathered[index] = message[1]
                    elif message[0] == "result":
                        shares[index] = (message[1], message[2], message[3], message[4])
                    continue
                index = next(i for i, p in enumerate(procs) if p.sentinel == ready)
                pipe = open_conns.get(index)
                while pipe is not None and pipe.poll():  # what it sent before it ended
                    try:
                        message = pipe.recv()
                    except (EOFError, OSError):
                        break
                    if message[0] == "result":
                        shares[index] = (message[1], message[2], message[3], message[4])
                    elif message[0] == "gather":
                        gathered[index] = message[1]
                if index not in shares:
                    failed(index, f"the worker process exited with code {procs[index].exitcode}")
        return [shares[i] for i in range(n)]

    def _merge(self, shares: list[_Share]) -> LoadResult:
        self.partition_info = [info for _, info, _, _ in shares]
        self.partition_results = [LoadResult.from_bytes(data) for _, _, data, _ in shares]
        if len(shares) == 1:
            merged = self.partition_results[0]
            if self.sample_limit > 0 and shares[0][3] is not None:
                merged.samples = shares[0][3]
        else:
            merged = merge_results(self.partition_results)
            merged.extra["workers"] = float(len(shares))
            if self.sample_limit > 0:
                merged.samples = SampleSet(self.sample_limit, [
                    SamplePart({"partition": i}, log=log) if log is not None else
                    SamplePart({"partition": i}, requests=res.counters["completed"]
                               + res.counters["excluded"])
                    for (i, _, _, log), res in zip(shares, self.partition_results,
                                                   strict=True)])
            late = [int(i.get("start_late_ns", 0)) for i in self.partition_info]
            merged.extra["workers_start_late_max_s"] = max(late, default=0) / 1e9
        if self._cancelled.is_set():  # the workers heard "cancel"; the reason is the caller's
            merged.state, merged.reason = RunState.CANCELLED, self._reason
        return merged


def run_process_load(spec: LoadSpec, workload_name: str, target_url: str | Targets,
                     params: dict[str, Any] | None = None, *, workers: int = 1,
                     on_progress: ProgressCallback | None = None,
                     sample_limit: int = 0) -> LoadResult:
    """Run `spec` in `workers` processes and return the exactly merged result (blocking)."""
    return ProcessLoad(spec, workload_name, target_url, params, workers=workers,
                       on_progress=on_progress, sample_limit=sample_limit).run()

"""The Spark engine: the same load engine on N Spark partitions, merged exactly on the driver.

    result = run_spark_load(LoadSpec(mode=Mode.OPEN, rate=2000, duration_s=60), "http",
                            "http://10.0.0.5:8080", {"path": "/"}, master="local[4]")

The driver checks everything it can before a JVM starts (master URL, workload and parameters,
partitions against local slots), splits the spec (`aifb.client.scaleout.split`), proposes a common
start a little ahead, and runs one barrier stage of one task per partition (a barrier stage
starts all tasks together or fails clearly, which a schedule aligned across partitions needs).
Each task runs `aifb.client.scaleout.partition.run_task` and returns `LoadResult.to_bytes()`; the
driver decodes and merges them with `merge_results` (exact: HDR buckets add). Live progress and
a graceful cancel travel over a small TCP hub (`aifb.client.scaleout.hub`); if a partition
does not stop within its drain time after a cancel, the Spark job group is cancelled.
`SparkLoad` is the object form (for a caller that cancels from another thread).

With `sample_limit` > 0 each partition keeps per-request rows (the limit split between them)
and returns them as Parquet; the merged result's `samples` is a `SampleSet` with one part per
partition (column `partition`). A workload with a `SharedSetup` (`vectordb`'s insert phase)
runs that setup once here on the driver before the stage, the partitions adopt its state, and
the driver tears it down after; see `aifb.client.scaleout.shared`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from aifb.client.engine.load import ProgressCallback
from aifb.client.engine.results import LoadResult, RunState, merge_results
from aifb.client.engine.samples import MAX_SAMPLE_LIMIT, SamplePart, SampleSet, split_limit
from aifb.client.engine.spec import LoadSpec
from aifb.client.scaleout.hub import ProgressHub
from aifb.client.scaleout.partition import PartitionTask, TaskRow, run_partition
from aifb.client.scaleout.shared import SharedSetup
from aifb.client.scaleout.spark_session import check_master, get_session, local_slots
from aifb.client.scaleout.split import MAX_PARTITIONS, split_spec
from aifb.client.workloads.registry import build_workload, check_one_engine
from aifb.client.workloads.spread import Targets
from aifb.mesh.errors import Internal, InvalidArgument, Unavailable

if TYPE_CHECKING:
    from pyspark import SparkContext

__all__ = ["SETTLE_S", "SparkLoad", "cluster_slots", "run_spark_load"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
SETTLE_S = 2.0  # a cluster's slot count must hold still this long when partitions are not given


class SparkLoad:
    """One Spark load run; `run()` blocks (call it in a thread), `cancel()` from anywhere."""

    def __init__(self, spec: LoadSpec, workload_name: str, target_url: str | Targets,
                 params: dict[str, Any] | None = None, *, master: str = "local[2]",
                 partitions: int | None = None, on_progress: ProgressCallback | None = None,
                 app_name: str = "aifb-bench", conf: dict[str, str] | None = None,
                 start_lead_s: float = 2.0, executor_wait_s: float = 60.0,
                 sample_limit: int = 0) -> None:
        check_master(master)
        # Validates the name and params here; the driver's own instance runs a shared setup.
        self._workload = build_workload(workload_name, target_url, params)
        check_one_engine(workload_name, params, partitions or 0, field="partitions")
        slots = local_slots(master)
        if partitions is not None:
            if isinstance(partitions, bool) or not isinstance(partitions, int) or not (
                    1 <= partitions <= MAX_PARTITIONS):
                raise InvalidArgument(f"partitions must be an integer in 1..{MAX_PARTITIONS}",
                                      field="partitions")
            if slots is not None and partitions > slots:
                raise InvalidArgument(
                    f"{partitions} partitions need {partitions} task slots but {master} has "
                    f"{slots}: every partition must run at once", field="partitions")
        if not 0 <= start_lead_s <= 600:
            raise InvalidArgument("start_lead_s must be in 0..600", field="start_lead_s")
        if isinstance(sample_limit, bool) or not 0 <= sample_limit <= MAX_SAMPLE_LIMIT:
            raise InvalidArgument(f"sample_limit must be in 0..{MAX_SAMPLE_LIMIT}",
                                  field="sample_limit")
        self.sample_limit = sample_limit
        self.spec, self.workload_name, self.target_url = spec, workload_name, target_url
        self.params = dict(params or {})
        self.master, self.partitions, self.app_name, self.conf = master, partitions, app_name, conf
        self.on_progress = on_progress
        self.start_lead_s, self.executor_wait_s = start_lead_s, executor_wait_s
        self.partition_results: list[LoadResult] = []
        self.partition_info: list[dict[str, Any]] = []
        self.group = f"aifb-{uuid.uuid4().hex[:12]}"
        self._sc: SparkContext | None = None
        self._hub: ProgressHub | None = None
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop every partition (statistics kept); hard-cancel the Spark job if they linger."""
        if self._cancelled.is_set():
            return
        self._reason = reason
        self._cancelled.set()
        if self._hub is not None:
            self._hub.cancel()
        threading.Thread(target=self._hard_cancel, daemon=True,
                         name="aifb-spark-cancel").start()

    def endpoints(self, urls: list[str]) -> None:
        """A replicated target's READY replicas now: every partition spreads over these."""
        if self._hub is not None:
            self._hub.endpoints(urls)

    def _hard_cancel(self) -> None:
        if self._done.wait(self.spec.drain_s + 10.0):
            return
        if self._sc is not None:
            log.warning("Spark partitions did not stop; cancelling job group %s", self.group)
            self._sc.cancelJobGroup(self.group)

    def _slots(self, sc: SparkContext) -> int:
        """Task slots to run on: local[N]'s N, or what a cluster's executors offer once up.

        A cluster's executors register after the context starts, and `defaultParallelism` is
        at least 2 before any has, so the slots are read as the barrier stage counts them.
        With `partitions` set, wait until that many slots exist; without, until some exist
        and their number held still for `SETTLE_S` (executors of one application start
        together).
        """
        slots = local_slots(self.master)
        if slots is not None:
            return slots
        want = self.partitions or 1
        deadline = time.monotonic() + self.executor_wait_s
        seen, since = cluster_slots(sc), time.monotonic()
        while time.monotonic() < deadline and not self._cancelled.is_set():
            if self.partitions and seen >= want:
                return seen
            if not self.partitions and seen > 0 and time.monotonic() - since >= SETTLE_S:
                return seen
            time.sleep(0.5)
            now = cluster_slots(sc)
            if now != seen:
                seen, since = now, time.monotonic()
        if seen >= want:
            return seen
        raise Unavailable(f"{self.master} offers {seen} task slots after "
                          f"{self.executor_wait_s:.0f} s; {want} partitions need {want}")

    def run(self) -> LoadResult:
        try:
            return self._run()
        finally:
            self._done.set()

    def _run(self) -> LoadResult:
        session = get_session(self.master, self.app_name, self.conf)
        sc = self._sc = session.sparkContext
        n = self.partitions or self._slots(sc)
        if self.partitions:
            self._slots(sc)
        if self._cancelled.is_set():
            return self._cancelled_result()
        shared: SharedSetup | None = (self._workload if isinstance(self._workload, SharedSetup)
                                      else None)
        if shared is None:
            return self._stage(sc, n, None)
        try:
            state = self._in_loop(shared.setup_shared(), cancellable=True)
        except asyncio.CancelledError:
            self._teardown(shared)
            return self._cancelled_result()
        except Exception as exc:
            log.warning("workload %s: the shared setup failed: %s", self.workload_name, exc)
            self._teardown(shared)
            return LoadResult(state=RunState.FAILED, mode=self.spec.mode.value,
                              workload=self.workload_name, workers=0,
                              reason=f"workload prepare failed: {exc}")
        try:
            result = self._stage(sc, n, state)
        finally:
            self._teardown(shared)
        if self.partition_results:
            result.extra = {**result.extra,
                            **shared.merge_extra([p.extra for p in self.partition_results]),
                            **shared.shared_metrics()}
        return result

    def _teardown(self, shared: SharedSetup) -> None:
        try:
            self._in_loop(shared.teardown_shared(), cancellable=False)
        except Exception as exc:  # the run's figures stand; a failed clean-up is logged
            log.warning("workload %s: the shared teardown failed: %s", self.workload_name, exc)

    def _in_loop(self, work: Coroutine[Any, Any, _T], *, cancellable: bool) -> _T:
        """Run a driver-side coroutine on a loop of its own (cancellable: a cancel() stops it,
        raising CancelledError here)."""
        async def main() -> _T:
            task = asyncio.ensure_future(work)
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                if cancellable and self._cancelled.is_set() and not task.done():
                    task.cancel()
            return task.result()

        return asyncio.run(main())

    def _stage(self, sc: SparkContext, n: int, shared: object) -> LoadResult:
        """The barrier stage itself: one task per partition, merged."""
        if self._cancelled.is_set():
            return self._cancelled_result()
        plans = split_spec(self.spec, n)
        limits = split_limit(self.sample_limit, len(plans))
        host = "127.0.0.1" if local_slots(self.master) else str(
            sc.getConf().get("spark.driver.host") or "127.0.0.1")
        hub = self._hub = (ProgressHub(len(plans), self.on_progress, host)
                           if self.on_progress else None)
        start_epoch = time.time_ns() + int(self.start_lead_s * 1e9)
        tasks = [PartitionTask(p.index, p.spec, self.workload_name, self.target_url, self.params,
                               start_epoch, p.stagger_ns, hub.link if hub else None,
                               sample_limit=limits[p.index])
                 for p in plans]
        if self._cancelled.is_set():
            if hub is not None:
                hub.close()
            return self._cancelled_result()
        sc.setJobGroup(self.group, f"aifb load: {self.workload_name} x {len(tasks)}",
                       interruptOnCancel=True)
        # The shared state rides in the stage's function, which PySpark broadcasts when large.
        run = functools.partial(run_partition, shared=shared) if shared is not None else (
            run_partition)
        try:
            rows = sc.parallelize(tasks, len(tasks)).barrier().mapPartitions(run).collect()
        except Exception as exc:
            if self._cancelled.is_set():
                return self._cancelled_result()
            raise Internal(f"the Spark job failed: {_first_line(exc)}") from exc
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
            if hub is not None:
                hub.close()
        return self._merge(rows)

    def _merge(self, rows: list[TaskRow]) -> LoadResult:
        rows = sorted(rows, key=lambda r: r[0])
        self.partition_info = [json.loads(row[1]) for row in rows]
        self.partition_results = [LoadResult.from_bytes(row[2]) for row in rows]
        merged = merge_results(self.partition_results)
        late = [i.get("start_late_ns", 0) for i in self.partition_info]
        merged.extra["spark_partitions"] = float(len(rows))
        merged.extra["spark_start_late_max_s"] = max(late, default=0) / 1e9
        if self.sample_limit > 0:
            merged.samples = self._samples(rows)
        if self._cancelled.is_set() and merged.state is RunState.SUCCEEDED:
            merged.state, merged.reason = RunState.CANCELLED, self._reason
        return merged

    def _samples(self, rows: list[TaskRow]) -> SampleSet:
        """One part per partition: its Parquet rows, or only its request count when it kept
        none (a limit share of 0, or a failure before its start)."""
        out = SampleSet(self.sample_limit)
        for (index, _, _, data), info, res in zip(rows, self.partition_info,
                                                  self.partition_results, strict=True):
            got = info.get("samples")
            if got is None:
                out.parts.append(SamplePart({"partition": index}, requests=res.counters[
                    "completed"] + res.counters["excluded"]))
                continue
            error = got.get("error", "")
            out.parts.append(SamplePart({"partition": index}, encoded=data,
                                        rows=0 if error else int(got["rows"]),
                                        requests=int(got["requests"]),
                                        error=f"partition {index}: {error}" if error else ""))
        return out

    def _cancelled_result(self) -> LoadResult:
        return LoadResult(state=RunState.CANCELLED, reason=self._reason, mode=self.spec.mode.value,
                          workload=self.workload_name, workers=0)


def cluster_slots(sc: SparkContext) -> int:
    """Tasks the registered executors can run at once (the number a barrier stage needs)."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager()
                                             .defaultResourceProfile()))
    except Exception:  # py4j: a Spark without this internal method; the public approximation
        return int(sc.defaultParallelism)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "Error" in line or "Exception" in line:
            return line.strip()[:500]
    return (text.splitlines() or [type(exc).__name__])[0][:500]


def run_spark_load(spec: LoadSpec, workload_name: str, target_url: str | Targets,
                   params: dict[str, Any] | None = None, master: str = "local[2]",
                   partitions: int | None = None, on_progress: ProgressCallback | None = None,
                   app_name: str = "aifb-bench", **options: Any) -> LoadResult:
    """Run `spec` split over Spark partitions and return the exactly merged result (blocking)."""
    return SparkLoad(spec, workload_name, target_url, params, master=master,
                     partitions=partitions, on_progress=on_progress, app_name=app_name,
                     **options).run()

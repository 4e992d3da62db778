"""The Spark engine: the same load engine on N Spark partitions, merged exactly on the driver.

    result = run_spark_load(LoadSpec(mode=Mode.OPEN, rate=2000, duration_s=60), "http",
                            "http://10.0.0.5:8080", {"path": "/"}, master="local[4]")

The driver checks everything it can before a JVM starts (master URL, workload and parameters,
partitions against local slots), splits the spec (`aifb.client.spark.split`), proposes a common
start a little ahead, and runs one barrier stage of one task per partition (a barrier stage
starts all tasks together or fails clearly, which a schedule aligned across partitions needs).
Each task runs `aifb.client.spark.executor.run_task` and returns `LoadResult.to_bytes()`; the
driver decodes and merges them with `merge_results` (exact: HDR buckets add). Live progress and
a graceful cancel travel over a small TCP hub (`aifb.client.spark.progress`); if a partition
does not stop within its drain time after a cancel, the Spark job group is cancelled.
`SparkLoad` is the object form (for a caller that cancels from another thread).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from aifb.client.load import ProgressCallback
from aifb.client.registry import build_workload
from aifb.client.results import LoadResult, RunState, merge_results
from aifb.client.spark.executor import PartitionTask, run_partition
from aifb.client.spark.progress import ProgressHub
from aifb.client.spark.session import check_master, get_session, local_slots
from aifb.client.spark.split import MAX_PARTITIONS, split_spec
from aifb.client.spec import LoadSpec
from aifb.mesh.errors import Internal, InvalidArgument, Unavailable

if TYPE_CHECKING:
    from pyspark import SparkContext

__all__ = ["SETTLE_S", "SparkLoad", "cluster_slots", "run_spark_load"]

log = logging.getLogger(__name__)
SETTLE_S = 2.0  # a cluster's slot count must hold still this long when partitions are not given


class SparkLoad:
    """One Spark load run; `run()` blocks (call it in a thread), `cancel()` from anywhere."""

    def __init__(self, spec: LoadSpec, workload_name: str, target_url: str,
                 params: dict[str, Any] | None = None, *, master: str = "local[2]",
                 partitions: int | None = None, on_progress: ProgressCallback | None = None,
                 app_name: str = "aifb-bench", conf: dict[str, str] | None = None,
                 start_lead_s: float = 2.0, executor_wait_s: float = 60.0) -> None:
        check_master(master)
        build_workload(workload_name, target_url, params)  # validates name and params here
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
        plans = split_spec(self.spec, n)
        host = "127.0.0.1" if local_slots(self.master) else str(
            sc.getConf().get("spark.driver.host") or "127.0.0.1")
        hub = self._hub = (ProgressHub(len(plans), self.on_progress, host)
                           if self.on_progress else None)
        start_epoch = time.time_ns() + int(self.start_lead_s * 1e9)
        tasks = [PartitionTask(p.index, p.spec, self.workload_name, self.target_url, self.params,
                               start_epoch, p.stagger_ns, hub.link if hub else None)
                 for p in plans]
        if self._cancelled.is_set():
            return self._cancelled_result()
        sc.setJobGroup(self.group, f"aifb load: {self.workload_name} x {len(tasks)}",
                       interruptOnCancel=True)
        try:
            rows = sc.parallelize(tasks, len(tasks)).barrier().mapPartitions(
                run_partition).collect()
        except Exception as exc:
            if self._cancelled.is_set():
                return self._cancelled_result()
            raise Internal(f"the Spark job failed: {_first_line(exc)}") from exc
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
            if hub is not None:
                hub.close()
        return self._merge(rows)

    def _merge(self, rows: list[tuple[int, str, bytes]]) -> LoadResult:
        rows = sorted(rows, key=lambda r: r[0])
        self.partition_info = [json.loads(info) for _, info, _ in rows]
        self.partition_results = [LoadResult.from_bytes(data) for _, _, data in rows]
        merged = merge_results(self.partition_results)
        late = [i.get("start_late_ns", 0) for i in self.partition_info]
        merged.extra["spark_partitions"] = float(len(rows))
        merged.extra["spark_start_late_max_s"] = max(late, default=0) / 1e9
        if self._cancelled.is_set() and merged.state is RunState.SUCCEEDED:
            merged.state, merged.reason = RunState.CANCELLED, self._reason
        return merged

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


def run_spark_load(spec: LoadSpec, workload_name: str, target_url: str,
                   params: dict[str, Any] | None = None, master: str = "local[2]",
                   partitions: int | None = None, on_progress: ProgressCallback | None = None,
                   app_name: str = "aifb-bench", **options: Any) -> LoadResult:
    """Run `spec` split over Spark partitions and return the exactly merged result (blocking)."""
    return SparkLoad(spec, workload_name, target_url, params, master=master,
                     partitions=partitions, on_progress=on_progress, app_name=app_name,
                     **options).run()

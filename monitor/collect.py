"""One collection of everything the monitor reads, as a MetricBatch plus a NodeSummary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from aifb.mesh.discovery import Target
from aifb.mesh.push import PushStats
from aifb.monitor.gpu import GpuCollector
from aifb.monitor.host import HostCollector
from aifb.monitor.model import COUNTER, BatchBuilder, MetricSet
from aifb.monitor.procs import ProcessTreeCollector
from aifb.monitor.scrape import Scraper
from aifb.monitor.slurm import SlurmJobCollector
from aifb.v1 import monitor_pb2

__all__ = ["NodeCollector", "push_stat_samples"]


def push_stat_samples(out: MetricSet, stats: PushStats, kind: str) -> None:
    """The sender's own counters, so dropped telemetry is visible on dashboards."""
    lab = {"kind": kind}
    out.add("aifb_agent_push_dropped_batches_total", stats.dropped_batches, lab, type=COUNTER,
            help="Batches dropped because the agent's buffer overflowed.")
    out.add("aifb_agent_push_dropped_items_total", stats.dropped_items, lab, type=COUNTER,
            help="Samples or log lines dropped because the agent's buffer overflowed.")
    out.add("aifb_agent_push_acked_batches_total", stats.acked_batches, lab, type=COUNTER,
            help="Batches the collector acknowledged.")
    out.add("aifb_agent_push_resent_batches_total", stats.resent_batches, lab, type=COUNTER,
            help="Batches sent again after a reconnect.")
    out.add("aifb_agent_push_buffered_batches", stats.buffered_batches, lab,
            help="Batches waiting for the collector's acknowledgement.")


@dataclass
class NodeCollector:
    """Runs every collector once per call; the blocking reads happen in a worker thread."""

    node: str
    host: HostCollector
    procs: ProcessTreeCollector
    gpus: GpuCollector
    slurm: SlurmJobCollector | None
    scraper: Scraper
    _worker: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _builder: BatchBuilder = field(default_factory=BatchBuilder, init=False, repr=False)

    async def close(self) -> None:
        await self.scraper.close()
        self.procs.close()
        self.host.close()
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None

    def _collect_sync(self, targets: Mapping[str, Target], out: MetricSet) -> None:
        self.host.collect(out)
        self.procs.collect(targets, out)
        for name, target in targets.items():
            if target.restarts is not None:
                out.add("aifb_service_restarts_total", target.restarts, {"service": name},
                        type=COUNTER, help="Times the service's program was started again "
                        "by its restart policy (the server's count).")
        self.gpus.collect(out, self.procs.pid_owner())
        if self.slurm is not None:
            self.slurm.collect(out)

    async def collect(self, targets: Mapping[str, Target], resource: Mapping[str, str],
                      push_stats: PushStats | None = None) -> monitor_pb2.Snapshot:
        out = MetricSet()
        now_ms = int(time.time() * 1000)
        if self._worker is None:  # one thread for the blocking reads, not the default pool
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="monitor")
        loop = asyncio.get_running_loop()
        await asyncio.gather(loop.run_in_executor(self._worker, self._collect_sync, targets, out),
                             self.scraper.scrape_all(targets, out))
        if push_stats is not None:
            push_stat_samples(out, push_stats, "metrics")
        batch = self._builder.build(out.samples, now_ms, resource)
        return monitor_pb2.Snapshot(summary=self._summary(now_ms), metrics=batch)

    def _summary(self, now_ms: int) -> monitor_pb2.NodeSummary:
        stamp = Timestamp()
        stamp.FromMilliseconds(now_ms)
        summary = monitor_pb2.NodeSummary(
            node=self.node, time=stamp, cpu_ratio=self.host.cpu_ratio, load1=self.host.load1,
            memory_used_bytes=self.host.memory_used_bytes,
            memory_total_bytes=self.host.memory_total_bytes, gpu_status=self.gpus.status)
        for r in self.gpus.readings:
            gpu = monitor_pb2.GpuSummary(index=r.index, name=r.name, uuid=r.uuid)
            if r.utilization_ratio is not None:
                gpu.utilization_ratio = r.utilization_ratio
            if r.memory_used_bytes is not None:
                gpu.memory_used_bytes = r.memory_used_bytes
            if r.memory_total_bytes is not None:
                gpu.memory_total_bytes = r.memory_total_bytes
            if r.power_watts is not None:
                gpu.power_watts = r.power_watts
            if r.temperature_celsius is not None:
                gpu.temperature_celsius = r.temperature_celsius
            summary.gpus.append(gpu)
        for u in self.procs.usage:
            summary.jobs.append(monitor_pb2.JobSummary(
                service=u.service, job_id=u.job_id, processes=u.processes, cpu_ratio=u.cpu_ratio,
                rss_bytes=u.rss_bytes,
                gpu_memory_bytes=self.gpus.job_memory.get((u.service, u.job_id), 0)))
        return summary

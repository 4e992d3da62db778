"""The monitor agent: collects every interval and pushes to the collector.

`aifb.monitor.app.build_monitor` assembles it with its MonitorService binding; `aifb up`, `aifb
monitor serve` and a job's sidecars run it (the process entry points are in `aifb.cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery
from aifb.mesh.push import BatchSender
from aifb.monitor.collect import NodeCollector
from aifb.monitor.config import MonitorConfig
from aifb.monitor.gpu import GpuCollector
from aifb.monitor.host import HostCollector
from aifb.monitor.procs import ProcessTreeCollector, RootResolver
from aifb.monitor.scrape import Scraper
from aifb.monitor.slurm import SlurmJobCollector
from aifb.v1 import monitor_pb2

__all__ = ["MonitorAgent"]

log = logging.getLogger(__name__)


class MonitorAgent:
    """Owns the collectors, the sender and the latest snapshot (watchers wait on it)."""

    def __init__(self, config: MonitorConfig, *, collector: ChannelFactory | None = None,
                 discovery: ServiceDiscovery | None = None,
                 node_collector: NodeCollector | None = None) -> None:
        self.config = config
        node = config.node_name
        self.discovery = discovery or ServiceDiscovery(None, node=node,
                                                       all_nodes=config.all_nodes)
        self.discovery.set_static([t.to_target() for t in config.targets])
        self.collector = node_collector or NodeCollector(
            node=node, host=HostCollector(),
            procs=ProcessTreeCollector(
                RootResolver(local_state_dirs=[Path(config.local_state_dir).expanduser()]
                             if config.local_state_dir else []),
                refresh_seconds=config.process_refresh_seconds, count_fds=config.count_fds),
            gpus=GpuCollector(enabled=config.gpu),
            slurm=SlurmJobCollector(node, enabled=config.slurm, job_id=config.slurm_job)
            if config.slurm is not False else None,
            scraper=Scraper(config.scrape_timeout_seconds))
        self.sender = (BatchSender("metrics", config.agent_name, collector,
                                   max_batches=config.buffer_batches, window=config.window,
                                   spool_dir=Path(config.spool_dir) if config.spool_dir else None)
                       if collector is not None else None)
        self.resource = {"node": node, "agent": config.agent_name}
        self.latest: monitor_pb2.Snapshot | None = None
        self.collections = 0
        self._lock = asyncio.Lock()
        self._new_snapshot = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def collect_now(self) -> monitor_pb2.Snapshot:
        """One collection (not pushed); GetSnapshot uses it."""
        async with self._lock:
            stats = self.sender.stats if self.sender else None
            return await self.collector.collect(self.discovery.targets, self.resource, stats)

    async def tick(self) -> monitor_pb2.Snapshot:
        """Collect, push and publish one snapshot."""
        snapshot = await self.collect_now()
        if self.sender is not None:
            batch = type(snapshot.metrics)()
            batch.CopyFrom(snapshot.metrics)
            self.sender.submit(batch)
        self.collections += 1
        async with self._new_snapshot:
            self.latest = snapshot
            self._new_snapshot.notify_all()
        return snapshot

    async def wait_snapshot(self, after: monitor_pb2.Snapshot | None,
                            timeout: float) -> monitor_pb2.Snapshot | None:
        async with self._new_snapshot:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._new_snapshot.wait_for(lambda: self.latest is not after), timeout)
            return self.latest

    async def snapshots(self, interval_s: float = 0.0) -> AsyncIterator[monitor_pb2.Snapshot]:
        """Snapshots without end: with `interval_s`, a fresh collection that often; without,
        the latest one now, then each the agent publishes (WatchSnapshots)."""
        if interval_s:
            while True:
                yield await self.collect_now()
                await asyncio.sleep(interval_s)
        last = self.latest
        if last is None:
            last = await self.collect_now()
        yield last
        while True:
            nxt = await self.wait_snapshot(last, 60.0)
            if nxt is not None and nxt is not last:
                last = nxt
                yield nxt

    async def start(self) -> None:
        self.discovery.start()
        if self.sender is not None:
            self.sender.start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="monitor")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval_seconds
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("monitor collection failed")
            next_at += interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind: skip, do not burst
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def stop(self, flush_timeout: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.discovery.close()
        if self.sender is not None:
            await self.sender.close(flush_timeout)
        await self.collector.close()

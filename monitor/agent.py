"""The monitor agent: collects every interval, pushes to the collector, serves MonitorService.

Embedded (one process, `aifb up`): build `MonitorAgent(config, collector=..., discovery=...)`,
`await agent.start()`, and mount `agent.binding()` among the server's bindings. As a sidecar
inside a job or as a node daemon: `python -m aifb.monitor.agent --collector HOST:PORT ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aifb.mesh.discovery import ChannelFactory, ServiceDiscovery, TargetSpec, channel_factory
from aifb.mesh.push import BatchSender
from aifb.monitor.collect import NodeCollector
from aifb.monitor.config import ConfigError, MonitorConfig
from aifb.monitor.gpu import GpuCollector
from aifb.monitor.host import HostCollector
from aifb.monitor.procs import ProcessTreeCollector, RootResolver
from aifb.monitor.scrape import Scraper
from aifb.monitor.slurm import SlurmJobCollector
from aifb.v1 import monitor_pb2

if TYPE_CHECKING:
    from aifb.mesh.server import ServiceBinding

__all__ = ["MonitorAgent", "main"]

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

    def binding(self) -> ServiceBinding:
        from aifb.monitor.servicer import monitor_binding

        return monitor_binding(self)


def _parse(argv: Sequence[str] | None) -> tuple[MonitorConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="aifb-monitor", description=__doc__)
    p.add_argument("--config", help="YAML file with MonitorConfig keys")
    p.add_argument("--collector", default=None)
    p.add_argument("--server", default=None)
    p.add_argument("--node", default=None)
    p.add_argument("--interval", type=float, default=None)
    p.add_argument("--all-nodes", action="store_true")
    p.add_argument("--listen", default="", help="serve MonitorService here (e.g. 127.0.0.1:0)")
    p.add_argument("--service", default="", help="watch this service (sidecar)")
    p.add_argument("--job-id", default="")
    p.add_argument("--pid", type=int, default=None)
    p.add_argument("--metrics-url", default="")
    p.add_argument("--spool-dir", default=None)
    args = p.parse_args(argv)
    import yaml

    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    for key, value in (("collector", args.collector), ("server", args.server),
                       ("node", args.node), ("interval_seconds", args.interval),
                       ("spool_dir", args.spool_dir)):
        if value is not None:
            data[key] = value
    if args.all_nodes:
        data["all_nodes"] = True
    try:
        config = MonitorConfig.model_validate(data)
    except ConfigError as exc:
        p.error(f"config: {'.'.join(map(str, exc.loc))}: {exc}")
    if args.service:
        config.targets.append(TargetSpec(service=args.service, job_id=args.job_id, pid=args.pid,
                                         metrics_url=args.metrics_url))
    return config, args


async def _amain(config: MonitorConfig, listen: str) -> None:
    from aifb.mesh.channel import load_token
    from aifb.mesh.config_data import home_path, load_config_data

    # The typed mesh config (pydantic) and the server (OpenTelemetry, reflection) are loaded
    # only to serve MonitorService: a push-only agent stays small.
    token = load_token(home_path(load_config_data()))
    discovery = ServiceDiscovery(
        channel_factory(config.server, token=token) if config.server else None,
        node=config.node_name, all_nodes=config.all_nodes)
    agent = MonitorAgent(config, discovery=discovery, collector=channel_factory(
        config.collector, token=token) if config.collector else None)
    await agent.start()
    if listen:
        from aifb.mesh.auth import Authenticator, TokenStore
        from aifb.mesh.config import load_config
        from aifb.mesh.server import create_server, serve_until_signal

        mesh = load_config().mesh
        store = TokenStore(mesh.home_path)
        server = await create_server(mesh, [agent.binding()], listen=listen,
                                     authenticator=Authenticator(store, enabled=mesh.auth))
        await serve_until_signal(server, mesh.shutdown_grace_seconds, on_stop=agent.stop)
    else:
        stop = asyncio.Event()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await agent.stop()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, args = _parse(argv)
    asyncio.run(_amain(config, args.listen))


if __name__ == "__main__":
    main()

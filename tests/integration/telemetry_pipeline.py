"""Pieces of a real telemetry pipeline for integration tests.

A server on the real SLURM runs the `metrics-page` test recipe (a process with its own
/metrics page that logs one line per scrape); monitor and logger agents discover it through
`WatchServices`, as node daemons do, and push to a collector mounted on a real gRPC server,
which remote-writes to the real Prometheus and pushes logs to the strict Loki receiver.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from aifb.collector import CollectorConfig, RetryConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.logger.agent import LoggerAgent
from aifb.logger.config import LoggerConfig
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.discovery import ServiceDiscovery, channel_factory
from aifb.mesh.server import create_server
from aifb.monitor.agent import MonitorAgent
from aifb.monitor.config import MonitorConfig
from aifb.server.schedulers import make_scheduler
from aifb.v1 import server_pb2
from tests.dashboards_promql import DASHBOARD_DIR
from tests.fixtures.prometheus import PrometheusServer
from tests.fixtures.server import RunningServer, server_config
from tests.integration.flow import state_name, wait_for_state

__all__ = ["Collector", "add_collector_scrape", "agents", "collector", "metrics_page_service",
           "slurm_server", "until"]

SCRAPE_SNIPPET = DASHBOARD_DIR / "prometheus" / "aifb-collector-scrape.yml"


@contextmanager
def slurm_server(home: Path, kind: str = "slurm") -> Iterator[RunningServer]:
    """An aifb server submitting to the real SLURM through its CLI backend."""
    srv = RunningServer(server_config(home, scheduler=kind),
                        make_scheduler=lambda: make_scheduler(kind))
    srv.start()
    try:
        yield srv
    finally:
        srv.cancel_all(wait=30)
        srv.stop()


def metrics_page_service(srv: RunningServer, timeout: float = 90) -> server_pb2.Service:
    """Create the metrics-page service and wait until it is READY."""
    stub = srv.stub()
    created = stub.CreateService(server_pb2.CreateServiceRequest(
        recipe="metrics-page", parameters={"port": "0"}), timeout=60).service
    ready = wait_for_state(stub, created.name, {server_pb2.SERVICE_STATE_READY}, timeout=timeout)
    assert state_name(ready.state) == "READY", (ready.state_message, ready.job)
    return ready


@dataclass
class Collector:
    app: CollectorApp
    address: str

    @property
    def metrics_hostport(self) -> str:
        assert self.app.http is not None
        return f"{self.app.http.host}:{self.app.http.port}"


@asynccontextmanager
async def collector(**cfg: Any) -> AsyncIterator[Collector]:
    """A collector (its /metrics on a free port) mounted on a real gRPC server on port 0."""
    config = CollectorConfig(metrics_listen="127.0.0.1:0",
                             retry=RetryConfig(initial_seconds=0.05, max_seconds=0.2), **cfg)
    app = await start_collector(config)
    mesh = await create_server(MeshConfig(listen="127.0.0.1:0"), app.bindings,
                               authenticator=Authenticator(None, enabled=False),
                               listen="127.0.0.1:0")
    try:
        yield Collector(app, f"127.0.0.1:{mesh.port}")
    finally:
        await mesh.stop(0)
        await app.stop()


@asynccontextmanager
async def agents(srv: RunningServer, collector_address: str, state_dir: Path,
                 interval: float = 0.5) -> AsyncIterator[tuple[MonitorAgent, LoggerAgent]]:
    """A monitor and a logger agent on this node, discovering services from `srv`."""

    def discovery() -> ServiceDiscovery:
        return ServiceDiscovery(channel_factory(srv.address, token=srv.token))

    push = channel_factory(collector_address)
    monitor = MonitorAgent(MonitorConfig(interval_seconds=interval, slurm=True,
                                         process_refresh_seconds=1.0, agent_id="it-monitor"),
                           collector=push, discovery=discovery())
    logger = LoggerAgent(LoggerConfig(state_dir=str(state_dir), agent_id="it-logger",
                                      poll_interval_seconds=0.1, idle_flush_seconds=0.2),
                         collector=push, discovery=discovery())
    await monitor.start()
    await logger.start()
    try:
        yield monitor, logger
    finally:
        await monitor.stop()
        await logger.stop()


async def until(check: Callable[[], bool], what: str, timeout: float = 60,
                detail: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {detail()}")
        await asyncio.sleep(0.1)


def add_collector_scrape(prom: PrometheusServer, target: str, interval: str = "1s") -> None:
    """Give the running Prometheus the shipped collector scrape job (dashboards/prometheus/),
    aimed at `target` and scraping every `interval`, by rewriting its config and sending
    SIGHUP (Prometheus' reload signal) to its recorded pid; waits until the target is up."""
    snippet = yaml.safe_load(SCRAPE_SNIPPET.read_text(encoding="utf-8"))
    job = snippet["scrape_configs"][0]
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = interval
    config_path = prom.data_dir / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    config["scrape_configs"] = [job]
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    pid = int((prom.data_dir / "prometheus.pid").read_text().strip())
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = httpx.get(f"{prom.url}/api/v1/targets", timeout=5).json()
        if any(t["labels"].get("job") == job["job_name"] and t["health"] == "up"
               for t in body["data"]["activeTargets"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"prometheus did not scrape {target}: {body}")

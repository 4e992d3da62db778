"""dashboards/benchmark.json against a real run: a benchmark through the BenchmarkService with
its live metrics pushed to the collector on the same port, remote-written to a real Prometheus
beside a monitor agent's node metrics; every PromQL expression of the dashboard is evaluated
there and must parse and return data (GPU panels: parse, and are empty without a GPU)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aifb.collector import CollectorConfig, RetryConfig
from aifb.mesh.discovery import channel_factory
from aifb.monitor.agent import MonitorAgent
from aifb.monitor.config import MonitorConfig
from aifb.v1 import client_pb2 as C
from tests.dashboards_promql import (
    DASHBOARD_DIR,
    evaluate,
    extract_queries,
    is_gpu_query,
    load_dashboard,
    resolve_variables,
    shape_problems,
    substitute,
)
from tests.integration.bench_harness import bench_mesh, create, follow, seconds

if TYPE_CHECKING:
    from tests.fixtures.nginx import NginxServer
    from tests.fixtures.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

BOARD = DASHBOARD_DIR / "benchmark.json"


def _until_data(prom: PrometheusServer, promql: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not prom.query(promql):
        assert time.monotonic() < deadline, f"no data for {promql}"
        time.sleep(0.25)


def test_every_benchmark_dashboard_query_returns_data_after_a_run(
        prometheus: PrometheusServer, nginx: NginxServer, aifb_home: Path) -> None:
    board = load_dashboard(BOARD)
    assert shape_problems(board, {"aifb-prometheus": "prometheus", "aifb-loki": "loki"}) == []
    collector = CollectorConfig(remote_write_url=prometheus.write_url, metrics_listen="",
                                retry=RetryConfig(initial_seconds=0.05, max_seconds=0.2))
    with bench_mesh(aifb_home, collector_config=collector) as mesh:
        monitor = MonitorAgent(MonitorConfig(interval_seconds=0.5, slurm=False,
                                             agent_id="it-bench-monitor"),
                               collector=channel_factory(mesh.address, token=mesh.token))
        mesh.run(monitor.start())
        try:
            stub = mesh.bench_stub()
            run = create(stub, workload="http", url=nginx.base_url,
                         load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=50,
                                            duration=seconds(4)))
            final, _ = follow(stub, run.name)
            assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
            rid = run.name.removeprefix("benchmarks/")
            _until_data(prometheus, f'aifb_bench_requests_total{{run="{rid}"}}')
            _until_data(prometheus, "aifb_node_cpu_seconds_total")
            _until_data(prometheus, "aifb_node_network_transmit_bytes_total")
        finally:
            mesh.run(monitor.stop())
    # The run's counter reached what the run reports as completed (warm-up included).
    (total,) = prometheus.query(f'max_over_time(aifb_bench_requests_total{{run="{rid}"}}[5m])')
    assert float(total["value"][1]) == final.last_progress.extra["total_requests"] > 150

    at = time.time()
    queries = extract_queries(BOARD)

    def values_of(expr: str, label: str) -> list[str]:
        result, error = evaluate(prometheus.url, expr, at)
        assert not error, (expr, error)
        return [r["metric"][label] for r in result if label in r["metric"]]

    variables = resolve_variables(board, queries, values_of)
    assert rid in variables["run"]
    panels = [q for q in queries if not q.where.startswith("variable ")]
    assert len(panels) >= 12
    for query in panels:
        result, error = evaluate(prometheus.url, substitute(query.expr, variables), at)
        assert not error, (query.id, error)
        if is_gpu_query(query.expr):
            continue  # no GPU on this machine: the panel parses and stays empty
        assert result, f"{query.id} returned no data: {query.expr}"
        if "run" in query.expr and "aifb_bench" in query.expr:
            assert any(r["metric"].get("run") == rid for r in result), query.id

"""The Grafana dashboards against a real pipeline run: every PromQL expression in every
dashboard (benchmark.json and experiment.json have their own tests) is evaluated by the real
Prometheus and must return data, GPU ones must come back empty on a node without a GPU; LogQL
is checked for structure and must select the streams the collector pushed; the JSON has what
Grafana needs.

The run: the metrics-page service under the real SLURM, monitor and logger agents discovering
it, the collector remote-writing to Prometheus and pushing to the strict Loki receiver, and
Prometheus scraping the collector's own /metrics with the shipped scrape job.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dashboards_promql import (
    DASHBOARD_DIR,
    LogqlError,
    Query,
    dashboard_files,
    evaluate,
    extract_queries,
    is_gpu_query,
    load_dashboard,
    parse_logql,
    resolve_variables,
    shape_problems,
    substitute,
)
from tests.fixtures import SlurmCluster
from tests.fixtures.loki import LokiReceiver
from tests.fixtures.prometheus import PrometheusServer
from tests.integration.telemetry_pipeline import (
    add_collector_scrape,
    agents,
    collector,
    metrics_page_service,
    slurm_server,
    until,
)

pytestmark = pytest.mark.integration

OTHERS = ("benchmark.json", "experiment.json")  # written and tested elsewhere
FILES = dashboard_files(exclude=OTHERS)
PROVISIONING = DASHBOARD_DIR / "provisioning"
# The labels the logger agent puts on every stream (logger/agent.py).
LOG_LABELS = {"service", "job_id", "node", "stream", "level", "agent"}
# With a GPU, these may still be empty: ECC counts on GPUs without ECC, and per-job device
# memory (the test service uses no GPU).
MAY_BE_EMPTY_WITH_A_GPU = re.compile(r"aifb_gpu_ecc_errors_total|aifb_gpu_service_memory")


def _datasources() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.yaml")):
        for ds in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


def test_the_four_dashboards_are_there() -> None:
    assert {p.name for p in FILES} >= {"node.json", "gpu.json", "service.json",
                                       "collector.json"}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_a_dashboard_has_the_shape_grafana_loads(path: Path) -> None:
    board = load_dashboard(path)
    assert shape_problems(board, _datasources()) == []
    names = [v["name"] for v in board["templating"]["list"]]
    assert "node" in names
    if path.name == "service.json":
        assert {"service", "job"} <= set(names)


def test_dashboard_uids_are_unique_and_provisioning_points_at_the_folder() -> None:
    uids = [load_dashboard(p)["uid"] for p in dashboard_files()]
    assert len(uids) == len(set(uids))
    assert _datasources() == {"aifb-prometheus": "prometheus", "aifb-loki": "loki"}
    (provider_file,) = (PROVISIONING / "dashboards").glob("*.yaml")
    providers = yaml.safe_load(provider_file.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load(next((PROVISIONING / "datasources").glob("*.yaml")).read_text(
        encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    assert all(ds["url"] for ds in datasources["datasources"])


def test_bad_logql_is_refused_with_the_reason() -> None:
    for text, words in [('{service=~".*"}', "empty string"), ('{service="a"', "expected"),
                        ('{service=~"("}', "bad regex"), ('sum(rate({a="b"}))', "duration"),
                        ('{a="b"} | bogus', "unknown stage")]:
        with pytest.raises(LogqlError, match=words):
            parse_logql(text)
    assert [s.matchers for s in parse_logql(
        'sum by (level) (count_over_time({a="b", c=~"x|y"} |= "e" | json [15s]))')] == [
        (("a", "=", "b"), ("c", "=~", "x|y"))]


@dataclass
class Run:
    """What the pipeline run left behind for the checks."""

    prometheus: PrometheusServer
    at: float  # evaluate every query at this instant (the collector was still being scraped)
    has_gpu: bool
    node: str
    service: str
    job_id: str
    collector_instance: str
    log_streams: list[dict[str, str]]
    client: httpx.Client


@pytest.fixture
def run(slurm_cluster: SlurmCluster, prometheus: PrometheusServer, loki_receiver: LokiReceiver,
        aifb_home: Path, tmp_path: Path) -> Iterator[Run]:
    prom = prometheus
    with slurm_server(aifb_home) as srv:
        svc = metrics_page_service(srv)

        def query(promql: str) -> list[dict[str, Any]]:
            result, error = evaluate(prom.url, promql, time.time())
            assert not error, (promql, error)
            return result

        def seen(promql: str) -> bool:
            return bool(query(promql))

        async def pipeline() -> tuple[float, bool, str, str]:
            async with collector(remote_write_url=prom.write_url, loki_url=loki_receiver.url,
                                 loki_batch_wait_seconds=0.2) as coll:
                instance = coll.metrics_hostport
                await asyncio.to_thread(add_collector_scrape, prom, instance)
                async with agents(srv, coll.address, tmp_path / "logger") as (monitor, _):
                    s = f'service="{svc.name}"'
                    for promql in (f"aifb_service_processes{{{s}}} > 0",
                                   f"aifb_scrape_up{{{s}}} == 1",
                                   f"count_over_time(demo_requests_total{{{s}}}[1m]) >= 4",
                                   # Two counters with equal labels, with data in two 15 s
                                   # steps of the top-counters panel's subquery (whatever the
                                   # scrape rate a loaded machine manages).
                                   f"count_over_time(demo_errors_total{{{s}}}[1m:15s]) >= 2",
                                   f'aifb_slurm_job_info{{job_id="{svc.job.job_id}"}}',
                                   "count_over_time(aifb_node_load1[1m]) >= 4",
                                   "count_over_time(aifb_agent_push_acked_batches_total[1m]) >= 4",
                                   "increase(aifb_collector_loki_requests_total[1m]) >= 2",
                                   "increase(aifb_collector_remote_write_requests_total[1m]) >= 2",
                                   "count_over_time(aifb_collector_series_kept[1m]) >= 4"):
                        await until(functools.partial(seen, promql), promql, timeout=60)
                    at = time.time()
                    has_gpu = bool(monitor.collector.gpus.readings)
                    node = monitor.config.node_name
            return at, has_gpu, node, instance

        at, has_gpu, node, instance = asyncio.run(pipeline())
    with httpx.Client() as client:
        yield Run(prom, at, has_gpu, node, svc.name, svc.job.job_id, instance,
                  [e.labels for e in loki_receiver.entries], client)


def _label_values(run: Run, promql: str, label: str) -> list[str]:
    result, error = evaluate(run.prometheus.url, promql, run.at, client=run.client)
    assert not error, (promql, error)
    return [r["metric"][label] for r in result if label in r["metric"]]


def _check_promql(run: Run, q: Query, expr: str) -> str:
    """'' when the query is right, else what is wrong with it."""
    result, error = evaluate(run.prometheus.url, expr, run.at, client=run.client)
    if error:
        return f"{q.id}: {expr}\n    does not evaluate: {error}"
    if is_gpu_query(expr):
        if not run.has_gpu:
            return (f"{q.id}: {expr}\n    returned {len(result)} series on a node without a "
                    "GPU") if result else ""
        if not result and not MAY_BE_EMPTY_WITH_A_GPU.search(expr):
            return f"{q.id}: {expr}\n    returned no data on a node with a GPU"
        return ""
    if not result:
        return f"{q.id}: {expr}\n    returned no data"
    if q.variable and not any(q.variable in r["metric"] for r in result):
        return f"{q.id}: {expr}\n    has no label {q.variable!r} to list"
    values = [float(r["value"][1]) for r in result]
    if all(math.isnan(v) for v in values):
        return f"{q.id}: {expr}\n    returned only NaN"
    # A legend naming a label the result lacks renders empty (rate() drops __name__).
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", q.legend):
        if not all(label in r["metric"] for r in result):
            return f"{q.id}: {expr}\n    legend {q.legend!r}: some series have no {label!r}"
    return ""


def _check_logql(run: Run, q: Query, expr: str) -> str:
    try:
        selectors = parse_logql(expr)
    except LogqlError as exc:
        return f"{q.id}: {expr}\n    is not valid LogQL: {exc}"
    for sel in selectors:
        unknown = {name for name, _, _ in sel.matchers} - LOG_LABELS
        if unknown:
            return f"{q.id}: {expr}\n    uses labels the logger never sets: {sorted(unknown)}"
        if not any(sel.matches(labels) for labels in run.log_streams):
            return (f"{q.id}: {expr}\n    selects none of the pushed streams "
                    f"{sorted({tuple(sorted(s.items())) for s in run.log_streams})[:3]}")
    return ""


@pytest.mark.slurm
def test_every_dashboard_query_returns_data_after_a_pipeline_run(run: Run) -> None:
    problems: list[str] = []
    checked = {"prometheus": 0, "loki": 0, "gpu": 0}
    resolved: dict[str, dict[str, str]] = {}
    for path in FILES:
        queries = extract_queries(path)
        variables = resolve_variables(load_dashboard(path), queries,
                                      lambda promql, label: _label_values(run, promql, label))
        resolved[path.name] = variables
        for q in queries:
            expr = substitute(q.expr, variables)
            if q.datasource == "loki":
                problems.append(_check_logql(run, q, expr))
            else:
                problems.append(_check_promql(run, q, expr))
                checked["gpu"] += is_gpu_query(expr)
            checked[q.datasource] += 1
    problems = [p for p in problems if p]
    assert not problems, f"{len(problems)} dashboard queries are wrong:\n" + "\n".join(problems)
    # Every query was looked at, and the variables resolved to what the run produced.
    assert checked["prometheus"] >= 100 and checked["loki"] >= 2 and checked["gpu"] >= 15
    assert resolved["service.json"]["service"] == run.service.replace(".", "\\\\.")
    assert resolved["service.json"]["job"] == run.job_id
    assert resolved["node.json"]["node"] == run.node.replace(".", "\\\\.")
    assert resolved["collector.json"]["instance"] == run.collector_instance.replace(".", "\\\\.")
    if not run.has_gpu:
        assert resolved["gpu.json"]["gpu"] == ".+"  # no GPU: the variable has no values
    # The shipped scrape job keeps the collector's own families and nothing it relays (`up`
    # and `scrape_*` are the series Prometheus adds to every scrape).
    relayed, error = evaluate(
        run.prometheus.url,
        'count({job="aifb-collector", __name__!~"aifb_collector_.*|up|scrape_.*"})', run.at)
    assert not error and relayed == []
    own, error = evaluate(run.prometheus.url, 'count({job="aifb-collector"})', run.at)
    assert not error and float(own[0]["value"][1]) >= 30


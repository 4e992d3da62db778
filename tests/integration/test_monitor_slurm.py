"""A monitor agent on a real service under the real SLURM: the job's process metrics and its
own /metrics scrape reach the collector, relabelled with the service and its SLURM job id."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import SlurmCluster
from tests.integration.telemetry_pipeline import (
    agents,
    collector,
    metrics_page_service,
    slurm_server,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str) -> Series:
    """The collector's /metrics page as {(name, sorted labels): value}."""
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _find(series: Series, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(lab), v) for (n, lab), v in series.items()
            if n == name and all(dict(lab).get(k) == w for k, w in labels.items())]


def _page_process(job_id: str) -> psutil.Process:
    """The job's python serving the page, among the pids SLURM lists for the job."""
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True,
                            timeout=30, check=True).stdout.splitlines()[1:]
    for pid in (int(line.split()[0]) for line in listed if line.split()[0].isdigit()):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if any(part.endswith("metrics_page.py") for part in proc.cmdline()):
                return proc
    raise AssertionError(f"no metrics-page process among job {job_id}'s pids: {listed}")


def test_a_slurm_jobs_processes_and_scrape_reach_the_collector_labelled_with_service_and_job(
        slurm_cluster: SlurmCluster, aifb_home: Path, tmp_path: Path) -> None:
    with slurm_server(aifb_home) as srv:
        svc = metrics_page_service(srv)
        job_id = svc.job.job_id
        page = _page_process(job_id)

        async def run() -> Series:
            async with collector() as coll:
                assert coll.app.http is not None
                url = coll.app.http.url
                async with agents(srv, coll.address, tmp_path / "logger") as (monitor, _):
                    def arrived() -> bool:
                        s = _scrape(url)
                        counts = [v for _, v in _find(s, "demo_requests_total",
                                                      service=svc.name, job_id=job_id)]
                        return (bool(_find(s, "aifb_service_memory_rss_bytes", service=svc.name))
                                and bool(_find(s, "aifb_slurm_job_info", job_id=job_id))
                                and bool(counts) and max(counts) >= 3)

                    await until(arrived, "the job's metrics in the collector",
                                timeout=60, detail=lambda: monitor.discovery.targets)
                    return await asyncio.to_thread(_scrape, url)

        series = asyncio.run(run())
        page_rss = page.memory_info().rss

    # process-tree metrics of the job, found through `scontrol listpids <job>`
    ((labels, processes),) = _find(series, "aifb_service_processes", service=svc.name)
    assert labels["job_id"] == job_id and labels["agent"] == "it-monitor" and labels["node"]
    assert processes >= 1
    ((_, rss),) = _find(series, "aifb_service_memory_rss_bytes", service=svc.name, job_id=job_id)
    assert rss >= page_rss * 0.5  # the tree includes the python serving the page
    ((_, cpu),) = _find(series, "aifb_service_cpu_seconds_total", service=svc.name,
                        job_id=job_id)
    assert cpu > 0
    ((_, threads),) = _find(series, "aifb_service_threads", service=svc.name, job_id=job_id)
    assert threads >= processes
    # the job as SLURM reports it on this node
    ((info, one),) = _find(series, "aifb_slurm_job_info", job_id=job_id)
    assert one == 1.0 and info["state"] == "RUNNING"
    # the service's own /metrics, relabelled; its own `service` label kept as exported_service
    ((_, up),) = _find(series, "aifb_scrape_up", service=svc.name, job_id=job_id)
    assert up == 1.0
    ((req_labels, served),) = _find(series, "demo_requests_total", service=svc.name,
                                    job_id=job_id)
    assert req_labels["path"] == "/metrics" and served >= 3
    ((queue_labels, queue),) = _find(series, "demo_queue_length", job_id=job_id)
    assert queue == 7.0
    assert queue_labels["service"] == svc.name and queue_labels["exported_service"] == "inner"

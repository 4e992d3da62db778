"""Monitor collectors on this machine: names, units, labels, process trees, no GPU, scrapes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from aifb.mesh.discovery import Target
from aifb.monitor.gpu import GpuCollector
from aifb.monitor.host import HostCollector, is_pseudo_filesystem
from aifb.monitor.model import COUNTER, GAUGE, MetricSet, Sample, to_batch
from aifb.monitor.procs import ProcessTreeCollector, RootResolver
from aifb.monitor.scrape import Scraper, parse_exposition
from aifb.monitor.slurm import SlurmJobCollector, parse_duration, parse_memory

pytestmark = pytest.mark.unit


def by_name(samples: Sequence[Sample], name: str) -> list[Sample]:
    return [s for s in samples if s.name == name]


def test_host_metrics_use_base_units_prefix_and_types() -> None:
    host = HostCollector()
    out = MetricSet()
    host.collect(out)
    names = {s.name for s in out.samples}
    for expected in ("aifb_node_cpu_seconds_total", "aifb_node_load1", "aifb_node_load15",
                     "aifb_node_memory_total_bytes", "aifb_node_memory_available_bytes",
                     "aifb_node_swap_total_bytes", "aifb_node_network_receive_bytes_total",
                     "aifb_node_network_transmit_packets_total",
                     "aifb_node_filesystem_size_bytes", "aifb_node_filesystem_avail_bytes"):
        assert expected in names
    for s in out.samples:
        assert s.name.startswith("aifb_")
        assert (s.type == COUNTER) == s.name.endswith("_total"), s.name
        assert s.value >= 0, s
    modes = {dict(s.labels)["mode"] for s in by_name(out.samples, "aifb_node_cpu_seconds_total")}
    assert {"user", "system", "idle"} <= modes
    nics = {dict(s.labels)["device"]
            for s in by_name(out.samples, "aifb_node_network_receive_bytes_total")}
    assert "lo" in nics
    for s in by_name(out.samples, "aifb_node_filesystem_size_bytes"):
        labels = dict(s.labels)
        assert set(labels) == {"device", "mountpoint", "fstype"}
        assert not is_pseudo_filesystem(labels["fstype"], labels["mountpoint"])
    assert 0 < host.memory_used_bytes < host.memory_total_bytes


def test_pseudo_filesystems_are_skipped() -> None:
    assert is_pseudo_filesystem("proc", "/proc")
    assert is_pseudo_filesystem("ext4", "/sys/fs/x")
    assert is_pseudo_filesystem("overlay", "/")
    assert not is_pseudo_filesystem("ext4", "/")
    assert not is_pseudo_filesystem("xfs", "/scratch")


@pytest.fixture
def job_tree() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with two sleeping children, like a job's batch script."""
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for child in _children_of(proc.pid):
            os.kill(child, 9)


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def _wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_process_tree_of_a_child_is_attributed_to_its_service(
        job_tree: subprocess.Popen[bytes]) -> None:
    _wait_for(lambda: len(_children_of(job_tree.pid)) == 2)
    target = Target(service="services/t1", job_id="42", pid=job_tree.pid)
    procs = ProcessTreeCollector(refresh_seconds=0.0)
    out = MetricSet()
    (usage,) = procs.collect({target.service: target}, out)
    labels = (("job_id", "42"), ("service", "services/t1"))
    values = {s.name: s.value for s in out.samples if s.labels == labels}
    assert values["aifb_service_processes"] == 3
    assert values["aifb_service_threads"] >= 3
    assert values["aifb_service_open_fds"] >= 3
    assert values["aifb_service_memory_rss_bytes"] > 100_000
    assert values["aifb_service_cpu_seconds_total"] >= 0
    assert usage.pids == {job_tree.pid, *_children_of(job_tree.pid)}
    assert procs.pid_owner()[job_tree.pid] == ("services/t1", "42")
    # a child exits: fewer processes, and the CPU counter does not go backwards
    os.kill(_children_of(job_tree.pid)[0], 9)
    _wait_for(lambda: len(_children_of(job_tree.pid)) == 1)
    out2 = MetricSet()
    procs.collect({target.service: target}, out2)
    values2 = {s.name: s.value for s in out2.samples if s.labels == labels}
    assert values2["aifb_service_processes"] == 2
    assert values2["aifb_service_cpu_seconds_total"] >= values["aifb_service_cpu_seconds_total"]
    procs.close()


def test_root_resolver_uses_scontrol_listpids_and_local_pid_files(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return ("PID      JOBID    STEPID   LOCALID GLOBALID\n"
                "1234     77       batch    0       0\n"
                "1240     77       0        0       0\n"
                "-1       77       extern   -       -\n")

    resolve = RootResolver(runner)
    assert resolve(Target(service="s", job_id="77", scheduler="slurm")) == [1234, 1240]
    assert calls == [["scontrol", "listpids", "77"]]
    me = os.getpid()
    ticks = int(Path(f"/proc/{me}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    (tmp_path / "aifb-local-3.json").write_text(
        json.dumps({"job_id": "local-3", "pid": me, "start_ticks": ticks}))
    local = Target(service="s", job_id="local-3", scheduler="local",
                   stdout_path=str(tmp_path / "slurm-local-3.out"))
    assert resolve(local) == [me]
    (tmp_path / "aifb-local-4.json").write_text(
        json.dumps({"job_id": "local-4", "pid": me, "start_ticks": ticks + 1}))  # pid reused
    assert resolve(Target(service="s", job_id="local-4", scheduler="local",
                          stdout_path=str(tmp_path / "x.out"))) == []
    assert resolve(Target(service="s", pid=5)) == [5]


def test_no_gpu_gives_no_metrics_and_a_status_never_minus_one() -> None:
    gpus = GpuCollector()
    out = MetricSet()
    gpus.collect(out, {})
    assert [s for s in out.samples if s.name.startswith("aifb_gpu_")] == []
    assert gpus.status.startswith("no GPU")
    assert gpus.readings == []


class FakeNvml:
    """Just enough of pynvml: one GPU; ECC unsupported (raises), like many consumer cards."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def __init__(self) -> None:
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"h{i}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, h: str) -> str:
        return "GPU-1234"

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        return SimpleNamespace(gpu=75, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h: str) -> Any:
        return SimpleNamespace(used=2 << 30, total=140 << 30, free=138 << 30)

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 350_000

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 61

    def nvmlDeviceGetClockInfo(self, h: str, clock: int) -> int:
        return 1980 if clock == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPcieThroughput(self, h: str, counter: int) -> int:
        return 1000

    def nvmlDeviceGetTotalEccErrors(self, h: str, kind: int, counter: int) -> int:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[Any]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=1 << 30),
                SimpleNamespace(pid=5, usedGpuMemory=None)]


def test_gpu_metrics_from_nvml_in_base_units_mapped_to_jobs_and_init_once() -> None:
    nvml = FakeNvml()
    for _ in range(2):
        gpus = GpuCollector(nvml)
        out = MetricSet()
        gpus.collect(out, {4242: ("services/llm", "9")})
    assert nvml.inits == 1
    values = {(s.name, dict(s.labels).get("service", "")): s.value for s in out.samples}
    assert values[("aifb_gpu_utilization_ratio", "")] == 0.75
    assert values[("aifb_gpu_power_watts", "")] == 350.0
    assert values[("aifb_gpu_memory_total_bytes", "")] == 140 << 30
    assert values[("aifb_gpu_sm_clock_hertz", "")] == 1980e6
    assert values[("aifb_gpu_pcie_transmit_bytes_per_second", "")] == 1024000.0
    assert values[("aifb_gpu_service_memory_used_bytes", "services/llm")] == 1 << 30
    # The GPU's own utilisation and power, on the GPU the service's process uses.
    assert values[("aifb_gpu_service_utilization_ratio", "services/llm")] == 0.75
    assert values[("aifb_gpu_service_power_watts", "services/llm")] == 350.0
    assert not any(s.name == "aifb_gpu_ecc_errors_total" for s in out.samples)  # unsupported
    assert gpus.status == ""
    assert gpus.readings[0].name == "NVIDIA H200"
    assert gpus.job_memory == {("services/llm", "9"): 1 << 30}


@pytest.fixture
def exporter() -> Iterator[str]:
    """A tiny prometheus_client HTTP exporter on an ephemeral port."""
    registry = CollectorRegistry()
    c = Counter("app_requests", "Requests.", ["service"], registry=registry)
    c.labels(service="inner").inc(3)
    Gauge("app_queue_depth", "Queue.", registry=registry).set(7)
    h = Histogram("app_latency_seconds", "Latency.", buckets=(0.1, 1.0), registry=registry)
    h.observe(0.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scrape_of_a_services_metrics_is_relabelled_with_service_and_job_id(
        exporter: str) -> None:
    target = Target(service="services/web", job_id="11", metrics_url=exporter)
    broken = Target(service="services/down", job_id="12", metrics_url="http://127.0.0.1:1/m")
    scraper = Scraper(timeout=2.0)
    out = MetricSet()

    async def go() -> None:
        try:
            await scraper.scrape_all({t.service: t for t in (target, broken)}, out)
        finally:
            await scraper.close()

    asyncio.run(go())
    mine = [s for s in out.samples if dict(s.labels).get("service") == "services/web"]
    (req,) = by_name(mine, "app_requests_total")
    assert dict(req.labels) == {"service": "services/web", "job_id": "11",
                                "exported_service": "inner"}
    assert req.type == COUNTER and req.value == 3
    assert by_name(mine, "app_queue_depth")[0].type == GAUGE
    buckets = by_name(mine, "app_latency_seconds_bucket")
    assert {dict(b.labels)["le"] for b in buckets} == {"0.1", "1.0", "+Inf"}
    assert all(b.type == COUNTER for b in buckets)
    assert not any(s.name.endswith("_created") for s in mine)
    up = {dict(s.labels)["service"]: s.value for s in by_name(out.samples, "aifb_scrape_up")}
    assert up == {"services/web": 1.0, "services/down": 0.0}


def test_parse_exposition_keeps_explicit_timestamps() -> None:
    (s,) = parse_exposition("# TYPE x gauge\nx{a=\"1\"} 2 1700000000000\n", {"job_id": "1"})
    assert s.timestamp_ms == 1700000000000
    assert dict(s.labels) == {"a": "1", "job_id": "1"}


def test_batch_packs_series_with_labels_once_and_points_ascending() -> None:
    out = MetricSet()
    out.gauge("aifb_x", "X.", 1.0, a="1")
    out.gauge("aifb_x", "X.", None, a="2")  # unknown: absent
    out.add("aifb_x", 2.0, {"a": "1"}, timestamp_ms=5)
    batch = to_batch(out.samples, 10, {"node": "n1"})
    (series,) = batch.series
    assert dict(series.labels) == {"a": "1"}
    assert list(series.timestamps_ms) == [5, 10]
    assert list(series.values) == [2.0, 1.0]
    assert batch.resource.attributes["node"] == "n1"


def test_slurm_job_stats_from_squeue() -> None:
    def runner(argv: Sequence[str]) -> str:
        assert "--nodelist=n1" in argv
        # 78 spans n0 and n1 and its batch script runs on n0: n0's monitor reports it.
        return ("77|RUNNING|gpu|alice|8|16G|1-02:03:04|2-00:00:00|n1\n"
                "78|RUNNING|gpu|bob|64|1G|00:10|1:00:00|n0\n")

    slurm = SlurmJobCollector("n1", runner=runner, enabled=True)
    out = MetricSet()
    slurm.collect(out)
    values = {s.name: s.value for s in out.samples}
    assert {dict(s.labels)["job_id"] for s in out.samples} == {"77"}
    assert values["aifb_slurm_job_cpus"] == 8
    assert values["aifb_slurm_job_memory_request_bytes"] == 16 << 30
    assert values["aifb_slurm_job_elapsed_seconds"] == 93784
    assert values["aifb_slurm_job_time_limit_seconds"] == 172800
    assert parse_duration("UNLIMITED") is None
    assert parse_duration("05:00") == 300
    assert parse_memory("4000M") == 4000 << 20


def test_a_sidecar_reports_its_own_job_only() -> None:
    def runner(argv: Sequence[str]) -> str:
        assert "--jobs=78" in argv and not any(a.startswith("--nodelist") for a in argv)
        return "78|RUNNING|gpu|bob|64|1G|00:10|1:00:00|n0\n"

    slurm = SlurmJobCollector("n1", runner=runner, enabled=True, job_id="78")
    out = MetricSet()
    slurm.collect(out)
    assert {(s.name, s.value) for s in out.samples if s.name == "aifb_slurm_job_cpus"} == {
        ("aifb_slurm_job_cpus", 64.0)}


def test_without_slurm_there_are_no_slurm_metrics() -> None:
    def runner(argv: Sequence[str]) -> str:
        raise FileNotFoundError("squeue")

    slurm = SlurmJobCollector("n1", runner=runner, enabled=True)
    out = MetricSet()
    slurm.collect(out)
    assert out.samples == []
    assert "squeue failed" in slurm.status




def test_every_exported_metric_name_is_documented(job_tree: subprocess.Popen[bytes]) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    out = MetricSet()
    HostCollector().collect(out)
    procs = ProcessTreeCollector(refresh_seconds=0.0)
    procs.collect({"s": Target(service="s", pid=job_tree.pid)}, out)
    procs.close()
    GpuCollector(FakeNvml()).collect(out, {job_tree.pid: ("s", "")})
    out.extend(parse_exposition("", {}))
    SlurmJobCollector("n1", enabled=True, runner=lambda argv: "1|RUNNING|p|u|1|1G|0:01|1:00\n"
                      ).collect(out)
    from aifb.mesh.push import PushStats
    from aifb.monitor.collect import push_stat_samples

    push_stat_samples(out, PushStats(), "metrics")
    names = {s.name for s in out.samples} | {"aifb_scrape_up", "aifb_scrape_duration_seconds",
                                             "aifb_scrape_samples"}
    missing = {n for n in names if f"| `{n}` |" not in doc}
    assert not missing, missing

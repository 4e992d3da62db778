"""The monitor's cheaper reads give what the plain ones give: /proc counters as psutil reads
them, process stats skipped only when a process has not run, cached scrape parses, kept-alive
scrapes, and a config checked without pydantic that still names the bad key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from aifb.mesh.config import load_config, section_config
from aifb.mesh.discovery import Target, TargetSpec
from aifb.mesh.errors import InvalidArgument
from aifb.monitor import procfs
from aifb.monitor.config import ConfigError, MonitorConfig
from aifb.monitor.procs import StatReader, parse_stats, read_proc_stat
from aifb.monitor.scrape import ParseCache, Scraper, parse_exposition

pytestmark = pytest.mark.unit

linux = pytest.mark.skipif(not procfs.available(), reason="needs /proc")


@linux
def test_proc_files_read_what_psutil_reads() -> None:
    files = procfs.ProcFiles()
    try:
        before = psutil.cpu_times()
        mine = files.cpu_times()
        after = psutil.cpu_times()
        for mode in procfs.CPU_MODES:
            low, high = getattr(before, mode) - 0.02, getattr(after, mode) + 0.02
            assert low <= getattr(mine, mode) <= high
        mem, vm, sw = files.memory(), psutil.virtual_memory(), psutil.swap_memory()
        assert (mem.total, mem.swap_total) == (vm.total, sw.total)
        assert abs(mem.cached - vm.cached) < 64 << 20
        assert abs(mem.available - vm.available) < 256 << 20
        # Counters grow meanwhile: ours must lie between psutil's reads before and after.
        ps_disks = psutil.disk_io_counters(perdisk=True) or {}
        disks = files.disks()
        ps_disks_after = psutil.disk_io_counters(perdisk=True) or {}
        assert set(disks) == set(ps_disks)
        for name, io in disks.items():
            assert ps_disks[name].read_bytes <= io.read_bytes <= ps_disks_after[name].read_bytes
            assert ps_disks[name].busy_time <= io.busy_time <= ps_disks_after[name].busy_time
        ps_nics = psutil.net_io_counters(pernic=True)
        nics = files.nics()
        ps_nics_after = psutil.net_io_counters(pernic=True)
        assert set(nics) == set(ps_nics)
        for name, counters in nics.items():
            before, after = ps_nics[name], ps_nics_after[name]
            assert before.bytes_recv <= counters.bytes_recv <= after.bytes_recv
            assert before.packets_sent <= counters.packets_sent <= after.packets_sent
    finally:
        files.close()


@pytest.fixture()
def busy_and_idle() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen(["sleep", "60"])
    try:
        yield busy, idle
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait()


def _schedstat_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _wait_until_asleep(pid: int, timeout: float = 10.0) -> None:
    """Until the process is asleep (state S) with a run time that holds still across 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        ran = _schedstat_ns(pid)
        time.sleep(0.05)
        if state == "S" and _schedstat_ns(pid) == ran:
            return
    raise AssertionError(f"process {pid} did not settle asleep in {timeout} s")


def _wait_until_cpu_moves(pid: int, since: float, timeout: float = 10.0) -> None:
    """Until the process's CPU seconds, as /proc/<pid>/stat counts them, exceed `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = read_proc_stat(pid)
        if stat is not None and stat.cpu_seconds > since:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} used no CPU in {timeout} s")


@linux
def test_stats_are_read_again_exactly_when_a_process_has_run(
        busy_and_idle: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]) -> None:
    busy, idle = busy_and_idle[0].pid, busy_and_idle[1].pid
    reader = StatReader()
    try:
        reader.read_many([busy, idle])
        _wait_until_asleep(idle)  # `sleep` has exec'd and sits in nanosleep
        first = reader.read_many([busy, idle])
        assert first[0] is not None
        _wait_until_cpu_moves(busy, first[0].cpu_seconds)
        second = reader.read_many([busy, idle])
        assert first[0] is not None and second[0] is not None
        assert second[0].cpu_seconds > first[0].cpu_seconds  # it ran: read again
        assert second[1] is first[1]  # it slept: the same stat, not read again
        assert second == [read_proc_stat(busy)._replace(cpu_seconds=second[0].cpu_seconds),
                          read_proc_stat(idle)]
        full = reader.read_many([busy, idle], full=True)
        assert full[1] == first[1] and full[1] is not first[1]
        busy_and_idle[1].kill()
        busy_and_idle[1].wait()
        assert reader.read_many([busy, idle])[1] is None  # gone
    finally:
        reader.close()


def test_bulk_stat_parsing_matches_one_by_one() -> None:
    raws = [b"12 (a b) c) S 1 12 12 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 555 1000 9 "
            + b"0 " * 30, b"13 (x) R 12 13 0 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 777 1 4 0"]
    many = parse_stats([12, 13], raws)
    assert many[0].ppid == 1 and many[0].threads == 2 and many[0].start == 555
    assert many[1].ppid == 12 and many[1].start == 777
    assert [s.rss_bytes // os.sysconf("SC_PAGE_SIZE") for s in many] == [9, 4]


EXPOSITION = """# HELP req Requests.
# TYPE req counter
req_total{route="a",service="inner"} {a} 1700000000000
req_total{route="b"} {b}
req_created{route="a"} 1.7e9
# TYPE temp gauge
temp {b}
temp_nan NaN
"""


def test_a_cached_parse_gives_what_a_fresh_parse_gives() -> None:
    cache = ParseCache()
    extra = {"service": "s", "job_id": "1"}
    for a, b in [("1", "2"), ("5", "7.5"), ("+Inf", "-3e2")]:
        text = EXPOSITION.replace("{a}", a).replace("{b}", b)
        assert parse_exposition(text, extra, cache=cache) == parse_exposition(text, extra)
    changed = EXPOSITION.replace("# TYPE req counter", "# TYPE req gauge").replace(
        "{a}", "1").replace("{b}", "2")
    assert parse_exposition(changed, extra, cache=cache) == parse_exposition(changed, extra)
    assert parse_exposition(changed, extra, cache=cache)[0].type == 1  # gauge now
    with pytest.raises(ValueError):
        parse_exposition(changed.replace("} 2\n", "} 2 x\n"), extra, cache=cache)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:  # once per connection
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        if self.path == "/old":
            self.send_response(302)
            self.send_header("Location", "/metrics")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"# TYPE up gauge\nup 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_scrapes_keep_their_connection_and_follow_redirects() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    scraper = Scraper(timeout=2.0)
    try:
        for path in ("/metrics", "/metrics", "/metrics", "/old"):
            target = Target(service="s", job_id="1", metrics_url=base + path)
            samples = scraper.scrape(target)
            assert [s.value for s in samples if s.name == "up"] == [1.0]
            assert [s.value for s in samples if s.name == "aifb_scrape_up"] == [1.0]
        # One connection kept for the three /metrics scrapes; /old: ours, then urllib's two.
        assert _Handler.connections == 4
    finally:
        asyncio.run(scraper.close())
        server.shutdown()
        server.server_close()


def test_monitor_config_is_checked_without_pydantic_and_names_the_key(tmp_path: Path) -> None:
    config = MonitorConfig.model_validate({"interval_seconds": 1, "targets": [
        {"service": "services/a", "job_id": "1", "pid": 5}]})
    assert config.interval_seconds == 1.0 and isinstance(config.interval_seconds, float)
    assert config.targets == [TargetSpec(service="services/a", job_id="1", pid=5)]
    for data, loc in [({"interval_seconds": 0.1}, ("interval_seconds",)),
                      ({"window": "8"}, ("window",)), ({"gpu": "yes"}, ("gpu",)),
                      ({"no_such": 1}, ("no_such",)),
                      ({"targets": [{"service": "x", "pid": 0}]}, ("targets", 0)),
                      ({"targets": [{"job_id": "1"}]}, ("targets", 0)),
                      ({"targets": [{"service": "x", "extra": 1}]}, ("targets", 0))]:
        with pytest.raises(ConfigError) as err:
            MonitorConfig.model_validate(data)
        assert err.value.loc == loc, data
    with pytest.raises(ConfigError):
        MonitorConfig(buffer_batches=0)
    env = {"AIFB_CONFIG": str(tmp_path / "absent.yaml"), "AIFB_MONITOR__INTERVAL_SECONDS": "0"}
    with pytest.raises(InvalidArgument, match=r"config: monitor\.interval_seconds: must be"):
        section_config(MonitorConfig, load_config(environ=env), "monitor")


def test_the_monitor_agent_imports_no_pydantic_or_server_stack() -> None:
    code = ("import sys, aifb.monitor.agent; "
            "print(sorted(m for m in ('pydantic', 'opentelemetry', 'aifb.mesh.server', "
            "'aifb.mesh.config', 'httpx', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

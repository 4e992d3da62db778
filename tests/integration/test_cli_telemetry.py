"""`aifb up` with telemetry, end to end through the CLI: a real Prometheus, a real service.

One `aifb up --prometheus-remote-write <real Prometheus>` subprocess serves the module (local
scheduler, monitor interval 1 s, the test recipes); the `talker` recipe prints numbered lines to
stdout and stderr and serves its own /metrics. Every check goes through the `aifb` command or
the public endpoints (Prometheus' HTTP API, the collector's /metrics). A second test runs the
same on real SLURM, where the job's own sidecars (not the embedded agents) report it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.prometheus import PrometheusServer, start_prometheus
from tests.integration.cli_procs import AIFB, Daemon, free_port, until

pytestmark = pytest.mark.integration

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TALKER_LINES = 5


@dataclass
class Up:
    """A running `aifb up` and how to call the CLI against it."""

    daemon: Daemon
    address: str
    metrics: str
    env: dict[str, str]
    cwd: Path

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(AIFB), "--server", self.address, *args], env=self.env,
                              cwd=self.cwd, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def json(self, *args: str) -> Any:
        out = self.cli("--output", "json", *args)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)


def cli_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (tmp / "config.yaml").write_text("{}\n")  # no user config file gets in
    return {**os.environ, "HOME": str(home), "AIFB_CONFIG": str(tmp / "config.yaml"),
            "AIFB_MONITOR__INTERVAL_SECONDS": "1",
            "AIFB_SERVER__RECIPE_DIRS": json.dumps([str(RECIPES)]),
            "AIFB_SERVER__POLL_INTERVAL_SECONDS": "0.2"}


def start_up(tmp: Path, prom: PrometheusServer | None, *extra: str) -> Up:
    env = cli_env(tmp)
    last: AssertionError | None = None
    for _ in range(3):  # a probed free port can be taken before `aifb up` binds it
        port, metrics = free_port(), free_port()
        remote = ("--prometheus-remote-write", prom.write_url) if prom else ()
        try:
            daemon = Daemon.start(["up", "--listen", f"127.0.0.1:{port}", "--metrics-listen",
                                   f"127.0.0.1:{metrics}", *remote, *extra],
                                  env=env, cwd=tmp, ready_text="aifb is up on")
        except AssertionError as exc:
            last = exc
            continue
        return Up(daemon, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics", env, tmp)
    raise AssertionError(f"aifb up did not start: {last}")


def create_talker(up: Up, *params: str) -> str:
    svc = up.json("services", "create", "talker", "--param", f"lines={TALKER_LINES}",
                  *params, "--wait")
    assert svc["state"] == "SERVICE_STATE_READY", svc
    return str(svc["name"])


def series(prom: PrometheusServer, promql: str) -> dict[str, float]:
    """{agent label: value} of an instant query."""
    return {r["metric"].get("agent", ""): float(r["value"][1]) for r in prom.query(promql)}


@pytest.fixture(scope="module")
def up_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, PrometheusServer]]:
    tmp = tmp_path_factory.mktemp("telemetry-up")
    prom = start_prometheus(tmp)
    up = start_up(tmp, prom, "--scheduler", "local")
    try:
        yield up, prom
    finally:
        code = up.daemon.stop()
        prom.stop()
        assert code == 0, up.daemon.log()
        assert "Traceback" not in up.daemon.log(10_000), up.daemon.log(60)


@pytest.fixture(scope="module")
def talker(up_local: tuple[Up, PrometheusServer]) -> Iterator[str]:
    name = create_talker(up_local[0])
    yield name
    # Local jobs outlive the server by design (a restarted server re-attaches): end it here.
    assert up_local[0].cli("services", "delete", name).returncode == 0


def test_service_node_process_and_scrape_metrics_reach_prometheus(
        up_local: tuple[Up, PrometheusServer], talker: str) -> None:
    prom = up_local[1]
    sel = f'service="{talker}"'
    rss = until(lambda: series(prom, f"aifb_service_memory_rss_bytes{{{sel}}}"),
                 "the job's process metrics in Prometheus")
    assert all(v > 1_000_000 for v in rss.values()), rss  # python3 alone is several MB
    procs = series(prom, f"aifb_service_processes{{{sel}}}")
    assert procs and all(v >= 1 for v in procs.values()), procs
    # The service's own /metrics, scraped and relabelled with its service and job.
    scraped = until(lambda: prom.query(f"talker_requests_total{{{sel}}}"),
                     "the talker's scraped metric in Prometheus")
    assert float(scraped[0]["value"][1]) == 7
    assert scraped[0]["metric"]["job_id"].startswith("local-")
    node = until(lambda: prom.query("aifb_node_memory_total_bytes"), "node memory")
    assert float(node[0]["value"][1]) > 0


def test_metrics_endpoint_shows_the_collectors_own_metrics(
        up_local: tuple[Up, PrometheusServer], talker: str) -> None:
    up, _ = up_local
    text = until(lambda: (t := httpx.get(up.metrics, timeout=5).text)
                  and "talker_requests_total" in t and t, "scraped series on /metrics")
    received = [line for line in text.splitlines()
                if line.startswith("aifb_collector_metric_samples_received_total")]
    assert received and float(received[0].split()[-1]) > 0, received
    assert "aifb_collector_queue_depth_batches" in text


def test_trace_show_prints_the_create_service_span_tree(
        up_local: tuple[Up, PrometheusServer], talker: str) -> None:
    up, _ = up_local
    svc = up.json("services", "get", talker)
    trace_id = svc["trace_id"]
    assert len(trace_id) == 32
    spans = up.json("trace", "show", trace_id)
    by_name = {s["name"]: s for s in spans}
    rpc = by_name["/aifb.v1.ServerService/CreateService"]
    create = by_name["aifb.server.create_service"]
    assert create["parent_span_id"] == rpc["span_id"]
    assert by_name["aifb.server.render"]["parent_span_id"] == create["span_id"]
    assert by_name["aifb.server.submit"]["parent_span_id"] == create["span_id"]
    assert create["attributes"]["aifb.service"] == talker.removeprefix("services/")
    text = up.cli("trace", "show", talker)  # a service id shows its creation trace
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}")
    depth = {n: next(i for i, line in enumerate(lines) if n in line)
             for n in ("CreateService", "aifb.server.create_service", "aifb.server.render")}
    assert depth["CreateService"] < depth["aifb.server.create_service"] < depth[
        "aifb.server.render"]
    listed = up.json("trace", "list", "--service", talker)["traces"]
    assert listed == [{"trace_id": trace_id, "service": talker, "recipe": "talker",
                       "create_time": svc["create_time"], "spans": len(spans)}]


def test_monitor_top_once_json_returns_this_node_and_the_job(
        up_local: tuple[Up, PrometheusServer], talker: str) -> None:
    up, _ = up_local

    def job_seen() -> Any:
        nodes = up.json("monitor", "top", "--once")
        return nodes if any(j["service"] == talker for j in nodes[0].get("jobs", [])) else None

    nodes = until(job_seen, "the talker in monitor top")
    assert len(nodes) == 1
    node = nodes[0]
    assert node["node"] == socket.gethostname().split(".", 1)[0]
    assert int(node["memory_total_bytes"]) > int(node["memory_used_bytes"]) > 0
    assert 0 <= node["cpu_ratio"] <= 1
    job = next(j for j in node["jobs"] if j["service"] == talker)
    assert job["job_id"].startswith("local-") and job["processes"] >= 1


def test_logs_follow_prints_stdout_and_stderr_live_and_ends_when_the_service_stops(
        up_local: tuple[Up, PrometheusServer]) -> None:
    up, _ = up_local
    name = create_talker(up)
    sid = name.removeprefix("services/")
    follow = subprocess.Popen([str(AIFB), "--server", up.address, "logs", sid, "--follow",
                               "--poll", "0.2"], env=up.env, cwd=up.cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Lines written after the follow began still arrive, then the stream ends by itself.
        until(lambda: up.cli("logs", sid, "--stream", "stdout").stdout.count("talker") >= 6,
               "the talker's stdout in the collector")
        deleted = up.cli("services", "delete", sid)
        assert deleted.returncode == 0, deleted.stderr
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, err
    expected_out = [f"talker stdout line {i}" for i in range(TALKER_LINES)] + ["talker serving"]
    assert [line for line in out.splitlines() if line.startswith("talker")] == expected_out
    assert [line for line in err.splitlines() if line.startswith("talker")] == [
        f"talker stderr line {i}" for i in range(TALKER_LINES)]
    # `services logs --follow` hands over to the same path (and ends: the service is over).
    handed = up.cli("services", "logs", sid, "--follow")
    assert handed.returncode == 0, handed.stderr
    assert [line for line in handed.stdout.splitlines() if line.startswith("talker")] == (
        expected_out)
    # Without --follow, JSON lines carry the labels.
    records = [json.loads(line) for line in
               up.cli("--output", "json", "logs", sid, "--stream", "stderr").stdout.splitlines()]
    talk = [r for r in records if r["line"].startswith("talker")]
    assert len(talk) == TALKER_LINES
    assert {r["labels"]["stream"] for r in records} == {"stderr"}
    assert {r["labels"]["service"] for r in records} == {name}


@pytest.mark.parametrize(("args", "message"), [
    (("logs", "no/such/thing"), "not a service id"),
    (("logs", "abc123", "--lines", "0"), "--lines must be 1..10000"),
    (("logs", "abc123", "--stream", "stdin"), "--stream must be one of"),
    (("logs", "0123456789ab"), "not found"),
    (("trace", "show", "0" * 32), "not kept by this collector"),
    (("trace", "show", "12345"), "not found"),
    (("monitor", "top", "--once", "--interval", "0.1"), "at least 0.2"),
])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(
        up_local: tuple[Up, PrometheusServer], args: tuple[str, ...], message: str) -> None:
    up, _ = up_local
    out = up.cli(*args)
    assert out.returncode == 1
    assert message in out.stderr.lower() or message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slurm
def test_on_slurm_the_jobs_sidecars_ship_its_logs_and_metrics(
        slurm_cluster: object, tmp_path: Path) -> None:
    prom = start_prometheus(tmp_path)
    up = start_up(tmp_path, prom, "--scheduler", "slurm")
    try:
        name = create_talker(up)
        sid = name.removeprefix("services/")
        out = until(lambda: (r := up.cli("logs", sid, "--stream", "stdout")).stdout.count(
            "talker") >= TALKER_LINES + 1 and r, "the talker's stdout through the sidecar")
        assert "talker stdout line 0" in out.stdout
        records = up.cli("--output", "json", "logs", sid, "--lines", "5").stdout.splitlines()
        agents = {json.loads(line)["labels"]["agent"] for line in records}
        assert agents == {f"logger@{_node()}/{sid}"}
        scraped = until(lambda: series(prom, f'talker_requests_total{{service="{name}"}}'),
                         "the talker's metric through the sidecar")
        assert scraped == {f"monitor@{_node()}/{sid}": 7.0}
        job = up.json("services", "get", sid)["job"]["job_id"]
        rss = until(lambda: series(prom, f'aifb_service_memory_rss_bytes{{service="{name}",'
                                    f'job_id="{job}"}}'), "the job's process metrics")
        assert list(rss) == [f"monitor@{_node()}/{sid}"]
        # One owner per SLURM job series: the job's sidecar, not also this node's monitor.
        # By the time the job has run 20 s the embedded monitor (every second, squeue cached
        # for 15 s) would have listed it too, if it reported jobs with sidecars.
        until(lambda: series(prom, f'aifb_slurm_job_elapsed_seconds{{job_id="{job}"}} >= 20'),
              "20 s of the job's SLURM stats", timeout=90)
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], env=up.env,
                               capture_output=True, text=True, check=True).stdout
        cpus = float(re.search(r"\bNumCPUs=(\d+)", shown).group(1))  # type: ignore[union-attr]
        assert series(prom, f'aifb_slurm_job_cpus{{job_id="{job}"}}') == {
            f"monitor@{_node()}/{sid}": cpus}
        # The service dashboard's CPU panel, summed: what SLURM allocated, not a multiple of it.
        total = prom.query(f'sum by (job_id) (aifb_slurm_job_cpus{{job_id="{job}"}})')
        assert [float(r["value"][1]) for r in total] == [cpus]
        deleted = up.cli("services", "delete", sid)
        assert deleted.returncode == 0, deleted.stderr
    finally:
        code = up.daemon.stop()
        prom.stop()
    assert code == 0, up.daemon.log()


def _node() -> str:
    return socket.gethostname().split(".", 1)[0]

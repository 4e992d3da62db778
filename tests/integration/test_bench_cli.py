"""`aifb bench` against `aifb up` (a real process, BenchmarkService mounted beside the server):
run, watch, report, compare and list as the issue's examples; bad input and failing targets
give one clear line and a non-zero exit; a SIGKILLed service fails its in-flight run on restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest

if TYPE_CHECKING:
    from tests.fixtures.nginx import NginxServer
    from tests.fixtures.openai_server import FakeLlmServer

pytestmark = pytest.mark.integration

AIFB = Path(sys.executable).with_name("aifb")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Up:
    home: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    telemetry: bool = True

    def start(self) -> Up:
        with (self.home.parent / "up.log").open("ab") as log:  # the child keeps its copy
            self.proc = subprocess.Popen(
                [str(AIFB), "--home", str(self.home), "up", "--listen",
                 f"127.0.0.1:{self.port}", "--scheduler", "local", "--metrics-listen", "",
                 *(() if self.telemetry else ("--no-telemetry",))],
                stdout=log, stderr=log, env={**os.environ, "HOME": str(self.home.parent)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.home.parent / "up.log").read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if (self.home / "token").exists():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("aifb up did not start")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def bench(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AIFB), "--home", str(self.home), "--server", f"127.0.0.1:{self.port}",
             *args], capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "HOME": str(self.home.parent)})

    def json(self, *args: str) -> Any:
        proc = self.bench("--output", "json", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)


@pytest.fixture
def up(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Up]:
    # The full embedded mesh (collector and agents too) where the test is about the service's
    # life; the server and BenchmarkService alone elsewhere, which starts and stops faster.
    full = "sigkilled" in request.node.name
    server = Up(tmp_path / "home", _free_port(), telemetry=full).start()
    try:
        yield server
    finally:
        server.kill()


def test_run_report_compare_and_list_as_the_issue_shows(up: Up, nginx: NginxServer,
                                                        tmp_path: Path) -> None:
    runs = []
    for users in ("2", "4"):
        out = up.json("bench", "run", "--url", nginx.base_url + "/", "--workload", "http",
                      "--concurrency", users, "--duration", "2s", "--slo", "p99=1s")
        assert out["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED"
        assert out["report"]["figures"]["counters"]["completed"] > 50
        assert out["report"]["slo"][0] == {**out["report"]["slo"][0], "slo": "p99", "met": True}
        runs.append(out["benchmark"]["name"].removeprefix("benchmarks/"))

    html = tmp_path / "r.html"
    proc = up.bench("bench", "report", runs[0], "--format", "html", "-o", str(html))
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in html.read_text()
    parquet = tmp_path / "r.parquet"
    assert up.bench("bench", "report", runs[0], "--format", "parquet", "-o",
                    str(parquet)).returncode == 0
    assert pq.read_table(parquet).num_rows >= 2
    md = up.bench("bench", "report", runs[1], "--format", "md")
    assert md.returncode == 0 and md.stdout.startswith(f"# Benchmark benchmarks/{runs[1]}")

    cmp = up.json("bench", "compare", runs[0], runs[1])
    rows = {r["figure"]: r for r in cmp["rows"]}
    assert rows["requests"]["a"] > 0 and rows["requests"]["b"] > 0
    assert rows["latency p99"]["diff"] == pytest.approx(rows["latency p99"]["b"]
                                                        - rows["latency p99"]["a"])
    text = up.bench("bench", "compare", runs[0], runs[1])
    assert text.returncode == 0 and "latency p99" in text.stdout

    listed = up.json("bench", "list")
    assert [b["name"] for b in listed] == [f"benchmarks/{r}" for r in runs]
    watched = up.json("bench", "watch", runs[0])  # a finished run: snapshot, then the summary
    assert watched["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED"


def test_an_llm_run_prints_ttft_tpot_tokens_and_goodput_and_keeps_per_request_samples(
        up: Up, fake_llm: Callable[..., FakeLlmServer]) -> None:
    llm = fake_llm(ttft_ms=20, itl_ms=2, tokens=8)
    proc = up.bench("bench", "run", "--url", llm.base_url, "--workload", "openai-chat",
                    "--concurrency", "2", "--max-requests", "20", "--duration", "30s",
                    "-p", "output_tokens=8", "-p", "slo_ttft_ms=10000", "--samples")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for figure in ("TTFT p50", "TTFT p99", "ITL p50", "TPOT p50", "output tokens/s",
                   "goodput", "samples"):
        assert figure in proc.stdout, (figure, proc.stdout)
    assert "(100.0% of requests)" in proc.stdout  # every request met the generous TTFT SLO
    assert "20 rows in samples.parquet" in proc.stdout
    run = next(line.split()[-1] for line in proc.stdout.splitlines()
               if line.strip().startswith("benchmarks/")).removeprefix("benchmarks/")
    paths = up.bench("bench", "report", run, "--format", "parquet")
    assert paths.returncode == 0, paths.stderr
    files = [Path(line) for line in paths.stdout.splitlines()]
    assert [f.name for f in files] == ["series.parquet", "samples.parquet"]
    table = pq.read_table(files[1])
    assert table.num_rows == 20 and table.column("output_tokens").to_pylist() == [8.0] * 20
    assert all(t is not None and t >= 0.019 for t in table.column("ttft_s").to_pylist())


def test_bad_input_and_failing_targets_exit_non_zero_with_one_clear_line(up: Up) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    cases = [
        (("--url", dead, "--rate", "-5"), "load.rate"),
        (("--url", dead, "--workload", "nope", "--concurrency", "1"), "unknown workload"),
        (("--url", "not-a-url", "--concurrency", "1"), "bad url"),
        (("--url", dead, "--concurrency", "1", "--duration", "soon"), "bad duration"),
    ]
    for args, text in cases:
        proc = up.bench("bench", "run", *args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert text in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    proc = up.bench("bench", "run", "--url", dead, "--concurrency", "1", "--duration", "2s")
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "unreachable" in proc.stderr


def test_a_sigkilled_service_fails_the_run_it_had_in_flight_on_restart(
        up: Up, nginx: NginxServer) -> None:
    started = up.json("bench", "run", "--url", nginx.base_url, "--rate", "20", "--duration",
                      "60s", "--detach")
    name = started["name"]
    deadline = time.monotonic() + 30
    while up.json("bench", "list")[0]["state"] != "BENCHMARK_STATE_RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    up.kill(signal.SIGKILL)
    up.start()
    (run,) = up.json("bench", "list")
    assert run["name"] == name and run["state"] == "BENCHMARK_STATE_FAILED"
    assert "stopped while the run was in flight" in run["state_message"]
    proc = up.bench("bench", "watch", name)
    assert proc.returncode == 1 and "FAILED" in proc.stderr


def test_the_spark_engine_runs_a_benchmark_as_the_issue_shows(up: Up, nginx: NginxServer) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    out = up.json("bench", "run", "--url", nginx.base_url, "--rate", "60", "--duration", "2s",
                  "--engine", "spark", "--spark-master", "local[2]")
    assert out["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED"
    f = out["report"]["figures"]
    assert f["workers"] == 2  # two partitions, merged exactly on the driver
    assert f["target_rate"] == pytest.approx(60)
    assert f["counters"]["completed"] == f["histograms"]["latency"]["count"] == 120
    # The per-partition rows are kept beside the merged ones, for Spark SQL or pandas.
    summary = pq.read_table(Path(out["directory"]) / "spark" / "summary" /
                            f"{out['benchmark']['name'].rsplit('/', 1)[-1]}.parquet").to_pylist()
    by_part = {row["partition"]: row["completed"] for row in summary}
    assert sorted(by_part) == [-1, 0, 1]
    assert by_part[0] + by_part[1] == by_part[-1] == 120

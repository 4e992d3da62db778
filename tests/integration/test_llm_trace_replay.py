"""Trace replay, cancellation, time slices and the seed, against real servers.

The fake LLM server (a subprocess) answers with known timing and counts the replies a client cut
short (`aborted`), so a replay can be checked request by request: sent at its entry's time
(within the schedule lag), with its entry's prompt and output lengths (the server's `usage`),
cancelled when chosen and then seen hung up by the server. The BenchmarkService runs the same
through its worker processes and reports cancelled requests and time slices that add up. A small
recording server checks that the same seed puts the same requests on the wire.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from aifb.client.engine.cancellation import Cancellation
from aifb.client.engine.load import run_load
from aifb.client.engine.results import RunState
from aifb.client.engine.samples import RequestLog
from aifb.client.report.slices import time_slices
from aifb.client.runs.options import LoadOptions, plan
from aifb.client.workloads.registry import build_workload
from aifb.client.workloads.trace import read_trace, trace_offsets_ns
from aifb.v1 import client_pb2 as C
from tests.integration.bench_harness import bench_mesh, create, follow, seconds
from tests.integration.test_bench_cli import Up

if TYPE_CHECKING:
    from tests.fixtures.openai_server import FakeLlmServer

pytestmark = pytest.mark.integration
StartLlm = Callable[..., "FakeLlmServer"]
MS = 1_000_000
LAG_BOUND_NS = 100 * MS  # a busy 2-core machine: the median send is far closer


def _trace(path: Path, n: int, gap_ms: float) -> Path:
    """n entries `gap_ms` apart (plus a little, so no two share a time), lengths varying,
    every third sharing two prefix blocks with the first."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"timestamp": round(i * gap_ms + (i % 5) * 0.7, 3),
                               "input_length": 40 + 37 * i, "output_length": 12 + i % 9}
        if i % 3 == 0:
            row["input_length"] = 1100 + i
            row["hash_ids"] = [101, 102, 1000 + i]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def _wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_a_replay_sends_each_entry_at_its_time_with_its_lengths_and_cancels_the_chosen_share(
        fake_llm: StartLlm, tmp_path: Path) -> None:
    srv = fake_llm(ttft_ms=20, itl_ms=10, tokens=1000)  # replies last 130-220 ms
    path = _trace(tmp_path / "trace.jsonl", 30, gap_ms=80.0)
    entries = read_trace(path)
    offsets = trace_offsets_ns(entries, 2.0)  # twice as fast: one every ~40 ms
    load = plan(LoadOptions(mode="trace", trace_file=str(path), time_scale=2.0, duration_s=0,
                            cancel_fraction=0.3, cancel_after_s=0.06, seed=9)).load
    assert load is not None and load.offsets_ns == offsets
    wl = build_workload("openai-chat", srv.base_url, {"trace": str(path), "seed": 9})
    res = asyncio.run(run_load(load, wl, record_samples=1000))
    assert res.state is RunState.SUCCEEDED, res.reason

    chosen = {n for n in range(30) if Cancellation(0.3, 0.06, 9).chosen(n)}
    assert 3 <= len(chosen) <= 20
    c = res.counters
    assert c["sent"] == 30 and c["dropped"] == 0 and c["unfinished"] == 0
    assert c["cancelled"] == len(chosen) and c["completed"] == 30 - len(chosen)
    assert c["errors"] == 0 and res.histograms["latency"].count == c["ok"]
    # Every send's schedule lag was recorded, within the bound.
    lag = res.histograms["lag"]
    assert lag.count == 30 and lag.max_us * 1000 <= LAG_BOUND_NS

    # Request by request: entry n's time, lengths and wire send.
    log = res.samples
    assert isinstance(log, RequestLog) and log.rows == c["completed"]
    by_offset = {off: n for n, off in enumerate(offsets)}
    seen = []
    for row in range(log.rows):
        n = by_offset[log.intended[row] - log.start_ns]  # intended exactly at an entry's time
        seen.append(n)
        assert 0 <= log.sent[row] - log.intended[row] <= LAG_BOUND_NS
        assert log.values["input_tokens"][row] == entries[n].input_length
        assert log.values["output_tokens"][row] == entries[n].output_length
    assert sorted(seen) == sorted(set(range(30)) - chosen)

    # The server saw the cancelled ones hang up, and answered the rest in full.
    assert _wait_for(lambda: srv.stats()["aborted"] == len(chosen)), srv.stats()
    stats = srv.stats()
    assert stats["requests"] == 30 and stats["completed"] == c["completed"]
    assert stats["completion_tokens"] == sum(entries[n].output_length for n in seen)

    # The time slices add up to the run (no warm-up or cool-down: the whole series is measured).
    slices = time_slices(res.series, 1)
    assert slices is not None
    for key, counter in (("requests", "completed"), ("errors", "errors"),
                         ("cancelled", "cancelled"), ("sent", "sent")):
        assert sum(r[key] for r in slices["rows"]) == slices["total"][key] == c[counter]


def test_the_service_replays_a_trace_and_reports_cancelled_requests_and_slices(
        fake_llm: StartLlm, tmp_path: Path, aifb_home: Path) -> None:
    srv = fake_llm(ttft_ms=20, itl_ms=10, tokens=1000)
    path = _trace(tmp_path / "trace.jsonl", 24, gap_ms=400.0)
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        run = create(stub, workload="openai-completions", url=srv.base_url,
                     load=C.LoadProfile(mode=C.LOAD_MODE_TRACE, trace_file=str(path),
                                        time_scale=4.0, cancel_fraction=0.25,
                                        cancel_after=seconds(0.05), time_slice=seconds(1),
                                        seed=3))
        assert run.parameters == {"trace": str(path)}
        assert run.load.mode == C.LOAD_MODE_TRACE and run.load.time_scale == 4.0
        final, msgs = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_JSON), timeout=30)
        doc = json.loads(report.content)
        md = stub.GetBenchmarkReport(C.GetBenchmarkReportRequest(
            name=run.name, format=C.REPORT_FORMAT_MARKDOWN), timeout=30).content.decode()

    counters = doc["figures"]["counters"]
    # every reply outlasts cancel_after: each request chosen was cancelled, and hung up on
    assert _wait_for(lambda: srv.stats()["aborted"] == counters["cancelled"]), srv.stats()
    assert counters["sent"] == 24 and 0 < counters["cancelled"] < 24
    assert counters["completed"] + counters["cancelled"] == 24 and counters["errors"] == 0
    assert srv.stats()["completed"] == counters["completed"]
    assert doc["figures"]["mode"] == "open"
    assert doc["figures"]["target_rate"] == pytest.approx(24 / (23 * 0.1 + 0.001), rel=0.01)
    live = [m.progress for m in msgs if m.HasField("progress")]
    assert sum(p.extra["cancelled"] for p in live) == counters["cancelled"]
    assert live[-1].extra["total_cancelled"] == counters["cancelled"]
    slices = doc["slices"]
    assert slices["slice_s"] == 1 and len(slices["rows"]) >= 2
    for key, counter in (("requests", "completed"), ("errors", "errors"),
                         ("cancelled", "cancelled")):
        assert sum(r[key] for r in slices["rows"]) == slices["total"][key] == counters[counter]
    assert all("ttft_p50_s" in r for r in slices["rows"] if r["ok"])
    assert "## Time slices (1 s)" in md and f"| cancelled | {counters['cancelled']} |" in md


class _Recorder(BaseHTTPRequestHandler):
    """An OpenAI-style completions endpoint: one token at once, each request body kept."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the workloads expect
    bodies: list[bytes] = []
    reply = (b'data: {"choices":[{"index":0,"text":" x"}]}\n\n'
             b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
             b"data: [DONE]\n\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with _LOCK:
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(self.reply)))
        self.end_headers()
        self.wfile.write(self.reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


_LOCK = threading.Lock()


@contextmanager
def _recording_server() -> Iterator[tuple[str, list[bytes]]]:
    """The recording endpoint on a free loopback port; yields its URL and the bodies list."""
    bodies: list[bytes] = []
    handler = type("Recorder", (_Recorder,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`aifb up` (server and BenchmarkService) as a real process, for the CLI."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = Up(tmp_path / "home", port, telemetry=False).start()
    try:
        yield server
    finally:
        server.kill()


def test_the_cli_replays_a_trace_ramps_users_and_refuses_a_replay_without_its_file(
        up: Up, fake_llm: StartLlm, tmp_path: Path) -> None:
    llm = fake_llm(ttft_ms=20, itl_ms=10, tokens=1000)
    path = _trace(tmp_path / "trace.jsonl", 12, gap_ms=200.0)
    proc = up.bench("bench", "run", "--url", llm.base_url, "--workload", "openai-chat",
                    "--profile", "trace", "--trace", str(path), "--time-scale", "4",
                    "--cancel-fraction", "0.5", "--cancel-after", "50ms", "--slice", "1s",
                    "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cancelled = next(int(line.split()[-1]) for line in proc.stdout.splitlines()
                     if line.strip().startswith("cancelled"))
    assert 0 < cancelled < 12
    run = next(line.split()[-1] for line in proc.stdout.splitlines()
               if line.strip().startswith("benchmarks/")).removeprefix("benchmarks/")
    doc = up.json("bench", "report", run)
    assert doc["configuration"]["load"]["trace_file"] == str(path)
    assert doc["configuration"]["parameters"] == {"trace": str(path), "seed": "3"}
    assert doc["figures"]["counters"]["sent"] == 12
    assert doc["figures"]["counters"]["cancelled"] == cancelled
    md = up.bench("bench", "report", run, "--format", "md").stdout
    assert "## Time slices (1 s)" in md

    ramped = up.json("bench", "run", "--url", llm.base_url, "--workload", "openai-chat",
                     "--profile", "ramp", "--concurrency", "4", "--start-users", "1",
                     "--duration", "2s", "-p", "output_tokens=4")
    assert ramped["report"]["figures"]["users"] == 4
    assert ramped["report"]["configuration"]["load"]["start_concurrency"] == 1

    bad = up.bench("bench", "run", "--url", llm.base_url, "--workload", "openai-chat",
                   "--profile", "trace")
    assert bad.returncode == 1 and "load.trace_file" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_clis_seed_puts_the_same_requests_on_the_wire_and_another_seed_does_not(
        up: Up) -> None:
    with _recording_server() as (url, bodies):
        def run(*seed: str) -> list[bytes]:
            with _LOCK:
                bodies.clear()
            out = up.json("bench", "run", "--url", url, "--workload", "openai-completions",
                          "--profile", "poisson", "--rate", "100", "--duration", "500ms",
                          "-p", "model=m", "-p", "input_tokens=24", "-p", "input_dist=lognormal",
                          "-p", "input_spread=0.6", "-p", "output_dist=uniform",
                          "-p", "output_max=60", "-p", "num_prompts=500", *seed)
            assert out["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED", out
            with _LOCK:
                return list(bodies)

        first, again, other = run("--seed", "5"), run("--seed", "5"), run("--seed", "6")
        pinned = run("--seed", "6", "-p", "seed=5")  # the workload's own seed, given: kept
    assert 20 <= len(first) <= 100  # Poisson arrivals at 100/s for half a second
    # The same seed: the same arrivals (so as many requests) with the same bodies.
    assert sorted(first) == sorted(again)
    assert len({json.loads(b)["prompt"] for b in first}) == len(first)  # all distinct
    assert set(first).isdisjoint(other)  # another seed: other prompts and lengths too
    # requests cycle through the same prompts in order: one run's are the other's first ones
    a, b = ({json.loads(x)["prompt"] for x in run_bodies} for run_bodies in (pinned, first))
    assert a <= b or b <= a

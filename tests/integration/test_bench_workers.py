"""Benchmark load runs in worker processes, never on the control plane's loop (issue 11, item 2).

Proves, against real nginx: health checks of a real `aifb up` keep answering within their 2 s
deadline while a saturating benchmark runs through it (before, one absurd run made a third of
them fail); two workers split an open-loop rate and their results merge exactly (every intended
request counted once, per-request rows tagged by worker); a cancel stops every worker with what
was measured kept; and a SIGKILLed server leaves no worker generating load.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aifb.client.engine.results import RunState
from aifb.client.engine.samples import SampleSet
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.scaleout.processes import ProcessLoad
from aifb.mesh.channel import open_sync_channel
from tests.fixtures.nginx import NginxServer
from tests.integration.test_cli_telemetry import Up, start_up

pytestmark = pytest.mark.integration


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    started = start_up(tmp_path, None, "--scheduler", "local")
    try:
        yield started
    finally:
        started.daemon.stop()


def test_health_keeps_its_deadline_while_a_saturating_benchmark_runs(
        up: Up, nginx: NginxServer) -> None:
    failures: list[str] = []
    answered = 0
    done = threading.Event()

    def probe() -> None:
        nonlocal answered
        with open_sync_channel(up.address, token="") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not done.is_set():
                try:
                    stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    answered += 1
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        run = up.json("bench", "run", "--url", nginx.base_url + "/", "--workload", "http",
                      "--concurrency", "64", "--duration", "6s", "--workers", "2")
    finally:
        done.set()
        prober.join(10)
    assert run["benchmark"]["state"] == "BENCHMARK_STATE_SUCCEEDED", run["benchmark"]
    assert run["report"]["figures"]["counters"]["completed"] > 1000  # it did load the target
    assert answered > 50
    assert not failures, failures[:5]


def test_two_workers_split_an_open_loop_rate_and_merge_exactly(nginx: NginxServer) -> None:
    seen: list[float] = []
    result = ProcessLoad(LoadSpec(mode=Mode.OPEN, rate=300.0, duration_s=2.0), "http",
                         nginx.base_url + "/", workers=2,
                         on_progress=lambda s: seen.append(s.requests),
                         sample_limit=10_000).run()
    assert result.state is RunState.SUCCEEDED, result.reason
    assert result.counters["completed"] == 600  # every intended send, counted once
    assert result.extra["workers"] == 2.0
    assert isinstance(result.samples, SampleSet)
    assert [p.tags for p in result.samples.parts] == [{"partition": 0}, {"partition": 1}]
    assert result.samples.rows == 600
    assert sum(seen) == 600  # the merged live progress adds up too


def test_a_cancel_stops_every_worker_and_keeps_what_was_measured(nginx: NginxServer) -> None:
    load = ProcessLoad(LoadSpec(mode=Mode.OPEN, rate=100.0, duration_s=60.0), "http",
                       nginx.base_url + "/", workers=2)
    threading.Timer(3.0, load.cancel, args=("enough",)).start()
    began = time.monotonic()
    result = load.run()
    assert time.monotonic() - began < 30  # not the 60 s asked for
    assert result.state is RunState.CANCELLED and result.reason == "enough"
    assert result.counters["completed"] > 0


def test_a_sigkilled_server_leaves_no_worker_generating_load(up: Up,
                                                              nginx: NginxServer) -> None:
    server = psutil.Process(up.daemon.proc.pid)
    name = up.json("bench", "run", "--url", nginx.base_url + "/", "--workload", "http",
                   "--rate", "50", "--duration", "60s", "--workers", "2", "--detach")
    assert name
    deadline = time.monotonic() + 30
    while len(workers := [c for c in server.children(recursive=True)
                          if "spawn_main" in " ".join(c.cmdline())]) < 2:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    up.daemon.proc.send_signal(signal.SIGKILL)
    up.daemon.proc.wait(10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.pid for p in alive]

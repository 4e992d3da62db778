"""The Spark engine on a real standalone cluster (`spark://`): a master and a worker on loopback.

The master and worker are the pyspark package's own (`bin/spark-class`), started by this module
on free loopback ports with their logs and work folders in a temp dir, and stopped by PID at the
end. The run goes through the cluster's executors (not local mode): two partitions on one
worker with two cores, executors that run the driver's venv Python (so they import aifb),
live progress through the driver's hub, and one exactly merged result.
Skipped when pyspark, java or nginx are missing, unless AIFB_REQUIRE_SPARK=1 (then it fails).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aifb.client.engine.progress import Progress
from aifb.client.engine.results import COUNTERS, RunState
from aifb.client.engine.samples import SampleSet
from aifb.client.engine.spec import LoadSpec, Mode
from aifb.client.scaleout.spark import SparkLoad
from tests.fixtures.nginx import NginxServer, find_nginx, start_nginx

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 60.0
# The driver on loopback too: executors reach it (and its progress hub) at 127.0.0.1.
LOOPBACK_CONF = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                 "spark.executor.memory": "512m"}


def _spark_home() -> Path:
    """The pyspark package folder, which holds the Spark jars and bin/spark-class."""
    missing = []
    home: Path | None = None
    try:
        import pyarrow  # noqa: F401
        import pyspark
    except ImportError as exc:
        missing.append(f"pyspark/pyarrow ({exc}; scripts/setup.sh --extra spark)")
    else:
        home = Path(pyspark.__file__).parent
        if not os.access(home / "bin" / "spark-class", os.X_OK):
            missing.append(f"{home}/bin/spark-class")
    if shutil.which("java") is None:
        missing.append("java (Debian: default-jre-headless)")
    if find_nginx() is None:
        missing.append("nginx (Debian: nginx-light)")
    if missing or home is None:
        reason = "missing: " + ", ".join(missing)
        if os.environ.get("AIFB_REQUIRE_SPARK") == "1":
            pytest.fail(f"AIFB_REQUIRE_SPARK=1 but {reason}")
        pytest.skip(reason)
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Cluster:
    master_url: str
    root: Path


def _wait_for_worker(log: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    dead: list[object] = []
    while time.monotonic() < deadline:
        if log.exists() and "Registering worker" in log.read_text(errors="replace"):
            return
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    pytest.fail(f"no worker registered with the Spark master within {START_TIMEOUT_S:.0f} s "
                f"(exited: {dead if dead else 'none'}); master log tail:\n{tail}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = _spark_home()
    root = tmp_path_factory.mktemp("spark-standalone")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_NO_DAEMONIZE": "1", "SPARK_LOG_DIR": str(root / "logs"),
           "SPARK_WORKER_DIR": str(root / "work")}
    port = _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    commands = {
        "master": [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                   "--port", str(port), "--webui-port", str(_free_port())],
        # The worker retries until the master listens, so both start at once.
        "worker": [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                   "--cores", "2", "--memory", "1g", "--webui-port", str(_free_port()),
                   "--work-dir", str(root / "work"), master_url],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in commands.items():
            with open(root / f"{name}.log", "wb") as out:  # spark-class execs java: its PID
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env))
        _wait_for_worker(root / "master.log", procs)
        yield Cluster(master_url, root)
    finally:
        from aifb.client.scaleout.spark_session import stop_session

        stop_session()  # the application ends first, so the worker stops its executors
        for proc in reversed(procs):  # worker, then master
            _stop(proc)


@pytest.fixture(scope="module")
def module_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    _spark_home()
    server = start_nginx(tmp_path_factory.mktemp("nginx"))
    try:
        yield server
    finally:
        server.stop()


def test_a_standalone_cluster_runs_the_partitions_on_its_executors_and_merges_exactly(
        cluster: Cluster, module_nginx: NginxServer) -> None:
    before = len(module_nginx.request_times_ms())
    progress: list[Progress] = []
    spec = LoadSpec(mode=Mode.OPEN, rate=200.0, duration_s=3.0, warmup_s=0.5, cooldown_s=0.5)
    # No partitions given: the engine waits for the cluster's executors and uses their 2 slots
    # (before they register, Spark's defaultParallelism already says 2 and means nothing).
    load = SparkLoad(spec, "http", module_nginx.base_url, {"path": "/hello", "connections": 8},
                     master=cluster.master_url, conf=LOOPBACK_CONF,
                     on_progress=progress.append, sample_limit=1000)
    res = load.run()
    assert res.state is RunState.SUCCEEDED, res.reason
    parts = load.partition_results
    assert len(parts) == 2 and res.workers == 2
    assert [p.target_rate for p in parts] == [100.0, 100.0] and res.target_rate == 200.0
    for key in COUNTERS:
        assert res.counters[key] == sum(p.counters[key] for p in parts), key
    assert res.histograms["latency"].count == res.counters["completed"] == 400  # 2 s x 200/s
    assert res.counters["errors"] == res.counters["dropped"] == 0
    assert res.achieved_rate == pytest.approx(200.0, rel=0.01)
    assert len(module_nginx.request_times_ms()) - before == 600  # warm-up and cool-down too
    # The tasks ran in the cluster's executor Python workers, not in this (driver) process.
    pids = {info["pid"] for info in load.partition_info}
    assert len(pids) == 2 and os.getpid() not in pids
    assert (cluster.root / "work").is_dir() and any((cluster.root / "work").iterdir())
    # Live progress reached the driver's hub from the executors, every second summed.
    assert sum(s.requests for s in progress) == 600
    # Every whole second of the schedule asked for 200/s over both partitions (the last
    # sample may cover the drain past the schedule's end, and asks for less).
    whole = [s for s in progress if 0.99 <= s.elapsed_s <= spec.total_s - 0.5]
    assert len(whole) >= 2 and all(s.target_rate == pytest.approx(200.0) for s in whole), progress
    # Per-request samples came back from the executors, a part per partition: the limit is
    # split between them (500 each), above their 300 requests (warm-up and cool-down too).
    samples = res.samples
    assert isinstance(samples, SampleSet)
    assert [(p.tags, p.rows, p.requests) for p in samples.parts] == [
        ({"partition": 0}, 300, 300), ({"partition": 1}, 300, 300)]
    assert not samples.capped and samples.rows == 600

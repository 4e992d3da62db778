"""Cluster mode through the CLI: each part its own process, as on a login node and compute nodes.

`aifb up --no-telemetry` (the server alone), `aifb collector serve`, and the node daemons
`aifb monitor serve` and `aifb logger serve` discovering the server's jobs and pushing to the
collector; a real Prometheus and the strict Loki receiver behind the collector. The `aifb`
client commands then ask each part on its own address, and every process stops with exit
code 0 on SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.loki import LokiReceiver
from tests.fixtures.prometheus import PrometheusServer
from tests.integration.cli_procs import AIFB, Daemon, free_port, until
from tests.integration.test_cli_telemetry import (
    TALKER_LINES,
    Up,
    cli_env,
    create_talker,
    start_up,
)

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AIFB), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def _json(env: dict[str, str], cwd: Path, *args: str) -> Any:
    out = _cli(env, cwd, "--output", "json", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture
def parts(tmp_path: Path, prometheus: PrometheusServer, loki_receiver: LokiReceiver
          ) -> Iterator[tuple[Up, dict[str, str]]]:
    """Start every part; their addresses by name (and stop them all, checking the exits)."""
    up = start_up(tmp_path, None, "--no-telemetry", "--scheduler", "local")
    env = cli_env(tmp_path)
    base = ["--server", up.address]
    collector, monitor, logger = (f"127.0.0.1:{free_port()}" for _ in range(3))
    daemons = [up.daemon]
    try:
        argvs = [([*base, "collector", "serve", "--listen", collector, "--metrics-listen",
                   f"127.0.0.1:{free_port()}", "--prometheus-remote-write",
                   prometheus.write_url, "--loki-url", loki_receiver.url],
                  "collector is up on")]
        argvs += [([*base, name, "serve", "--listen", listen, "--collector", collector,
                    "--all-nodes"], f"{name}@") for name, listen in (("monitor", monitor),
                                                                    ("logger", logger))]
        # Started together (agents reconnect until the collector answers): less waiting.
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(Daemon.start, argv, env=env, cwd=tmp_path, ready_text=text)
                       for argv, text in argvs]
            failures = []
            for future in futures:
                try:
                    daemons.append(future.result())
                except AssertionError as exc:  # the others still get stopped below
                    failures.append(str(exc))
        assert not failures, failures
        yield up, {"collector": collector, "monitor": monitor, "logger": logger}
    finally:
        codes = [d.stop() for d in reversed(daemons)]
    assert codes == [0] * len(daemons), [d.log() for d in daemons]
    for d in daemons:
        assert "Traceback" not in d.log(10_000), d.log(60)


def test_node_daemons_and_a_standalone_collector_serve_the_cli(
        parts: tuple[Up, dict[str, str]], tmp_path: Path, prometheus: PrometheusServer,
        loki_receiver: LokiReceiver) -> None:
    up, addresses = parts
    env = cli_env(tmp_path)
    server = ["--server", up.address]
    name = create_talker(up)
    sid = name.removeprefix("services/")
    # Logs, tailed by the logger daemon: in order at Loki (the strict receiver decodes the
    # snappy-compressed protobuf push) and at the collector's own store.
    at_loki = until(lambda: len(lines := loki_receiver.lines(service=name, stream="stdout"))
                    >= TALKER_LINES + 1 and lines, "the talker's stdout at Loki")
    assert [line for line in at_loki if line.startswith("talker")] == [
        f"talker stdout line {i}" for i in range(TALKER_LINES)] + ["talker serving"]
    assert not loki_receiver.rejected
    out = until(lambda: (r := _cli(env, tmp_path, *server, "logs", sid, "--stream", "stdout",
                                   "--collector", addresses["collector"])).stdout.count(
        "talker") >= TALKER_LINES + 1 and r, "the talker's stdout at the collector")
    assert out.stdout.splitlines()[:2] == ["talker stdout line 0", "talker stdout line 1"]
    sources = _json(env, tmp_path, *server, "logger", "sources", "--logger", addresses["logger"])
    streams = {s["labels"]["stream"] for s in sources["sources"]
               if s["labels"]["service"] == name}
    assert streams == {"stdout", "stderr"}
    # Metrics: the monitor daemon's live view, and its push through the collector.
    nodes = until(lambda: (n := _json(env, tmp_path, *server, "monitor", "top", "--once",
                                      "--monitor", addresses["monitor"]))
                  and any(j["service"] == name for j in n[0].get("jobs", [])) and n,
                  "the talker in the monitor daemon's view")
    assert len(nodes) == 1
    scraped = until(lambda: prometheus.query(f'talker_requests_total{{service="{name}"}}'),
                    "the talker's metric in Prometheus")
    assert float(scraped[0]["value"][1]) == 7
    stats = _json(env, tmp_path, *server, "collector", "stats", "--collector",
                  addresses["collector"])
    assert int(stats["metric_samples_received"]) > 0
    assert int(stats["log_lines_received"]) >= 2 * TALKER_LINES
    deleted = _cli(env, tmp_path, *server, "services", "delete", sid)
    assert deleted.returncode == 0, deleted.stderr

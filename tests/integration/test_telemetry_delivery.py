"""Delivery under faults, counted exactly: the collector killed, stopped, or its targets down.

Each scenario runs the product's processes: `aifb collector serve` (auth on, forwarding to a
real Prometheus by remote write and to the strict Loki receiver), the logger agent tailing a
file of 200,000 numbered lines written over 20 s, and a metrics agent pushing 2,000 numbered
samples through the agents' sender (`numbered_metrics.py`). Then every line number must be in
Loki exactly once and Prometheus must hold exactly the 2,000 samples.

Faults land while data is in flight: before each kill or stop the test waits until the
collector holds unacknowledged lines (its `aifb_collector_log_lines_held` gauge) and prints
that count and the lines written but not yet at Loki, so a kill at an idle moment cannot pass
by luck. A kill between Loki storing a push and the acknowledgement reaching the agent makes
the agent resend lines Loki holds; Loki drops identical entries, and the test prints how many.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.fixtures.loki import LokiReceiver, LokiServer
from tests.fixtures.prometheus import PrometheusServer, start_prometheus
from tests.integration.cli_procs import AIFB, Daemon, free_port, until

pytestmark = pytest.mark.integration

LINES = 200_000
WRITE_SECONDS = 20.0
SAMPLES = 2_000
ROOT = Path(__file__).resolve().parents[2]
_NUMBER = re.compile(r"^line (\d{6}) ")


@dataclass
class Rig:
    """The processes of one scenario and what they left behind."""

    tmp: Path
    env: dict[str, str]
    receiver: LokiReceiver
    loki: LokiServer
    prom: PrometheusServer
    port: int
    metrics_port: int
    log_file: Path
    collector: Daemon | None = None
    logger: subprocess.Popen[str] | None = None
    numbered: subprocess.Popen[str] | None = None
    written: int = 0
    notes: list[str] = field(default_factory=list)
    files: list[IO[str]] = field(default_factory=list)

    def _log(self, name: str) -> IO[str]:
        handle = (self.tmp / name).open("w")
        self.files.append(handle)
        return handle

    # -- the collector -----------------------------------------------------------------------

    def start_collector(self) -> None:
        self.collector = Daemon.start(
            ["collector", "serve", "--listen", f"127.0.0.1:{self.port}", "--metrics-listen",
             f"127.0.0.1:{self.metrics_port}", "--loki-url", self.receiver.url,
             "--prometheus-remote-write", self.prom.write_url],
            env=self.env, cwd=self.tmp, ready_text="collector is up on")

    def held(self) -> int:
        """Lines the collector has accepted and not yet forwarded (0 if it does not answer)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return 0
        found = re.search(r"^aifb_collector_log_lines_held (\S+)$", text, re.M)
        return int(float(found.group(1))) if found else 0

    def in_flight(self, what: str) -> int:
        """Wait until the collector holds lines, note how many (and how many lines were
        written but are not at Loki yet), and return the held count."""
        held = until(self.held, f"lines held by the collector before {what}", timeout=20)
        behind = self.written - len(self.receiver.entries)
        self.notes.append(f"{what}: {held:,} lines held by the collector (unacknowledged), "
                          f"{behind:,} written but not yet at Loki")
        return int(held)

    def kill_collector(self) -> None:
        assert self.collector is not None
        self.collector.proc.kill()
        self.collector.proc.wait(30)

    def stop_collector(self) -> str:
        """SIGTERM, wait for the exit; the collector's stop line."""
        assert self.collector is not None
        code = self.collector.stop()
        assert code == 0, self.collector.log()
        stopped = [line for line in self.collector.stderr if "collector stopped:" in line]
        assert stopped, self.collector.log()
        return stopped[-1].strip()

    # -- the agents and the writer -----------------------------------------------------------

    def start_agents(self) -> None:
        # `aifb logger serve` as a node daemon, its one file from the config, no server.
        config = self.tmp / "logger.yaml"
        config.write_text(json.dumps({"logger": {
            "node": "fault-node", "agent_id": "logger@fault-node",
            "state_dir": str(self.tmp / "logger-state"),
            "targets": [{"service": "services/faults", "job_id": "1",
                         "stdout_path": str(self.log_file)}]}}))
        self.logger = subprocess.Popen(
            [str(AIFB), "logger", "serve", "--listen", "", "--watch-server", "",
             "--collector", f"127.0.0.1:{self.port}"],
            env={**self.env, "AIFB_CONFIG": str(config)}, cwd=self.tmp,
            stdout=subprocess.DEVNULL, stderr=self._log("logger.log"), text=True)
        self.numbered = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.numbered_metrics", "--collector",
             f"127.0.0.1:{self.port}", "--run", self.tmp.name, "--count", str(SAMPLES),
             "--spool", str(self.tmp / "numbered-spool")],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=self._log("numbered.log"), text=True)

    def write_lines(self) -> threading.Thread:
        """Write the numbered lines over WRITE_SECONDS in a thread (100 lines per 10 ms)."""
        def run() -> None:
            start = time.monotonic()
            per = 100
            with self.log_file.open("a") as fh:
                for first in range(0, LINES, per):
                    fh.write("".join(f"line {i:06d} {'x' * 87}\n"
                                     for i in range(first, first + per)))
                    fh.flush()
                    self.written = first + per
                    pause = start + (first + per) / LINES * WRITE_SECONDS - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def at(self, seconds: float, started: float) -> None:
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    # -- the counts ----------------------------------------------------------------------------

    def check_lines(self, timeout: float = 180) -> None:
        until(lambda: len(self.receiver.entries) >= LINES, f"{LINES:,} lines at Loki",
              timeout=timeout)
        # Every line is in; a late resend would still be held by the collector: wait it out.
        until(lambda: self.held() == 0, "the collector holding nothing", timeout=60)
        numbers = Counter(int(m.group(1)) for e in self.receiver.entries
                          if (m := _NUMBER.match(e.line)))
        lost = LINES - len(numbers)
        duplicated = sum(n - 1 for n in numbers.values())
        self.notes.append(f"lines: {lost} lost, {duplicated} duplicated; Loki refused "
                          f"{len(self.receiver.rejected)} pushes and dropped "
                          f"{self.receiver.duplicates_dropped} resent entries it already held")
        print("\n".join(self.notes))
        assert (lost, duplicated) == (0, 0)
        assert set(numbers) == set(range(LINES))
        assert self.receiver.rejected == []

    def check_samples(self) -> None:
        assert self.numbered is not None
        out, _ = self.numbered.communicate(timeout=240)
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["flushed"] == 1 and stats["dropped_items"] == 0, stats
        selector = f'aifb_test_numbered{{run="{self.tmp.name}"}}'
        counted = until(lambda: self.prom.query(f"count_over_time({selector}[15m])"),
                        "the numbered samples in Prometheus")
        total = self.prom.query(f"sum_over_time({selector}[15m])")
        count, summed = float(counted[0]["value"][1]), float(total[0]["value"][1])
        print(f"samples: {SAMPLES - count:.0f} lost; sum {summed:.0f} "
              f"(exactly once: {SAMPLES * (SAMPLES + 1) // 2}); "
              f"{stats['resent_batches']} batches resent, {stats['duplicate_batches']} "
              "acknowledged as duplicates")
        assert count == SAMPLES
        assert summed == SAMPLES * (SAMPLES + 1) / 2

    def close(self) -> None:
        for proc in (self.logger, self.numbered):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.collector is not None and self.collector.proc.poll() is None:
            self.collector.stop()
        if self.numbered is not None and self.numbered.stdout is not None:
            self.numbered.stdout.close()
        for handle in self.files:
            handle.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "config.yaml").write_text("{}\n")
    env = {**os.environ, "HOME": str(home),
           "AIFB_CONFIG": str(tmp_path / "config.yaml"),
           "AIFB_COLLECTOR__LOKI_BATCH_WAIT_SECONDS": "0.5"}
    receiver = LokiReceiver()
    loki = LokiServer(receiver)
    loki.start()
    prom = start_prometheus(tmp_path)
    log_file = tmp_path / "job.out"
    log_file.touch()
    rig = Rig(tmp_path, env, receiver, loki, prom, free_port(), free_port(), log_file)
    try:
        rig.start_collector()  # first: it makes the token the agents read from $HOME/.aifb
        assert rig.collector is not None
        # A fresh home: the standalone collector made the operator's token and says so; the
        # agents below read it from the same home and are accepted without any copying.
        assert f"agents authenticate with the token in {home / '.aifb' / 'token'}" in (
            rig.collector.log()), rig.collector.log()
        rig.start_agents()
        yield rig
    finally:
        rig.close()
        prom.stop()
        loki.stop()


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGTERM"])
def test_collector_killed_or_stopped_twice_mid_flight_loses_and_duplicates_nothing(
        rig: Rig, fault: str) -> None:
    started = time.monotonic()
    writer = rig.write_lines()
    for when in (6.0, 14.0):
        rig.at(when, started)
        assert rig.in_flight(f"{fault} at {when:g}s") > 0
        if fault == "SIGKILL":
            rig.kill_collector()
        else:  # a graceful stop drains, and its last line says what it did
            line = rig.stop_collector()
            rig.notes.append(f"  {line[line.index('collector stopped:'):]}")
            assert "nothing was dropped" in line
        time.sleep(3)
        rig.start_collector()
    writer.join()
    rig.check_lines()
    rig.check_samples()


def test_loki_and_prometheus_down_for_60s_everything_arrives_once_they_return(
        rig: Rig) -> None:
    started = time.monotonic()
    writer = rig.write_lines()
    rig.at(4.0, started)
    rig.loki.stop()
    rig.prom.stop()
    rig.at(30.0, started)
    held = rig.held()
    rig.notes.append(f"30 s into the outage: {held:,} lines held by the collector "
                     f"(unacknowledged), {rig.written - len(rig.receiver.entries):,} written "
                     "but not at Loki")
    assert held > 0
    rig.at(64.0, started)
    rig.loki.start()
    rig.prom.start()
    writer.join()
    rig.check_lines()
    rig.check_samples()
    text = httpx.get(f"http://127.0.0.1:{rig.metrics_port}/metrics", timeout=5).text
    assert re.search(r"^aifb_collector_log_lines_returned_total 0\.0$", text, re.M)
    assert re.search(r"^aifb_collector_log_lines_held 0\.0$", text, re.M)

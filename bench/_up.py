"""`aifb up` for the benchmarks that measure the path users run: one server on a free loopback
port with a temporary home of its own, the `aifb` CLI against it, and RFC 3339 stamps read back.
Everything it starts it stops by PID."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _net import free_port

__all__ = ["AIFB", "ROOT", "TERMINAL_EXPERIMENT", "TERMINAL_SERVICE", "Up", "seconds", "stamp"]

ROOT = Path(__file__).resolve().parents[1]
AIFB = Path(sys.executable).with_name("aifb")
TERMINAL_SERVICE = ("SERVICE_STATE_STOPPED", "SERVICE_STATE_FAILED")
TERMINAL_EXPERIMENT = ("EXPERIMENT_STATE_SUCCEEDED", "EXPERIMENT_STATE_FAILED",
                       "EXPERIMENT_STATE_CANCELLED")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")


def seconds(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 2s, 500ms or 1m")
    return float(m[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m[2]]


def stamp(text: str) -> float:
    """An RFC 3339 timestamp as the CLI's JSON prints it -> Unix seconds (full precision)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromJsonString(text)
    return float(ts.ToNanoseconds()) / 1e9


class Up:
    """One `aifb up` on a free loopback port with its own home; the CLI against it."""

    def __init__(self, scheduler: str, prefix: str = "up") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"aifb-bench-{prefix}-"))
        (self.tmp / "home").mkdir()
        (self.tmp / "config.yaml").write_text("{}\n")  # no user config gets in
        self.env = {**os.environ, "HOME": str(self.tmp / "home"),
                    "AIFB_CONFIG": str(self.tmp / "config.yaml")}
        if scheduler == "slurm":
            env_file = Path(os.environ.get("AIFB_SLURM_DIR", "/tmp/aifb-slurm")) / "env"
            if env_file.exists():
                for line in env_file.read_text().splitlines():
                    key, sep, value = line.partition("=")
                    if sep and not line.startswith("#"):
                        self.env.setdefault(key.strip(), value.strip())
        self.proc: subprocess.Popen[bytes] | None = None
        log = self.tmp / "up.err"
        for _ in range(3):  # a probed free port can be taken before `aifb up` binds it
            self.address = f"127.0.0.1:{free_port()}"
            with log.open("wb") as err:
                self.proc = subprocess.Popen(
                    [str(AIFB), "up", "--listen", self.address, "--metrics-listen", "",
                     "--scheduler", scheduler, "--no-telemetry"], env=self.env, cwd=self.tmp,
                    stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + 60
            while self.proc.poll() is None and time.monotonic() < deadline:
                if "aifb is up on" in log.read_text(errors="replace"):
                    found = re.search(r"token: ([^;)\s]+)", log.read_text(errors="replace"))
                    self.token_path = Path(found[1]) if found else (
                        self.tmp / "home" / ".aifb" / "token")
                    return
                time.sleep(0.1)
            self._kill()
        raise RuntimeError("aifb up did not start:\n" + log.read_text(errors="replace")[-3000:])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(AIFB), "--server", self.address, *args], env=self.env,
                             cwd=self.tmp, capture_output=True, text=True, timeout=timeout,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"aifb {' '.join(args)} failed ({out.returncode}):\n"
                               f"{out.stderr[-3000:]}")
        return out

    def json(self, *args: str, timeout: float = 120) -> Any:
        return json.loads(self.cli("--output", "json", *args, timeout=timeout).stdout)

    def quiesce(self, timeout: float = 60) -> None:
        """Cancel what still runs, delete every service and wait until all are terminal."""
        for x in self.json("experiment", "list"):
            if x["state"] not in TERMINAL_EXPERIMENT:
                self.cli("experiment", "cancel", x["name"])
        deadline = time.monotonic() + timeout
        while True:
            live = [s for s in self.json("services", "list")
                    if s["state"] not in TERMINAL_SERVICE]
            if not live or time.monotonic() > deadline:
                break
            for s in live:
                if s["state"] != "SERVICE_STATE_STOPPING":
                    self.cli("services", "delete", s["name"].removeprefix("services/"))
            time.sleep(0.5)

    def _kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # by PID: only the process this bench started
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.quiesce()
        finally:
            self._kill()
            shutil.rmtree(self.tmp, ignore_errors=True)

"""Helpers for tests that run `aifb` commands as subprocesses (daemons and one-shot calls)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AIFB", "Daemon", "free_port", "until"]

AIFB = Path(sys.executable).with_name("aifb")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(check: Callable[[], Any], what: str, timeout: float = 45.0) -> Any:
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@dataclass
class Daemon:
    """An `aifb ... serve`/`aifb up` subprocess; its stderr is collected by a reader thread."""

    proc: subprocess.Popen[str]
    stderr: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, argv: Sequence[str], *, env: dict[str, str], cwd: Path, ready_text: str,
              timeout: float = 60) -> Daemon:
        proc = subprocess.Popen([str(AIFB), *argv], env=env, cwd=cwd, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        daemon = cls(proc)

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                daemon.stderr.append(line)
                if ready_text in line:
                    daemon.ready.set()
            proc.stderr.close()
            daemon.ready.set()

        threading.Thread(target=read, daemon=True).start()
        daemon.ready.wait(timeout)
        if proc.poll() is not None or not daemon.ready.is_set():
            daemon.stop()
            raise AssertionError(f"{argv[0]} did not start:\n" + daemon.log())
        return daemon

    def log(self, lines: int = 40) -> str:
        return "".join(self.stderr[-lines:])

    def stop(self) -> int:
        """SIGTERM (what SLURM and service managers send); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            time.sleep(0.2)  # the reader thread takes the last lines
            raise AssertionError("did not exit within 30 s of SIGTERM; its log ends:\n"
                                 + self.log(80)) from None

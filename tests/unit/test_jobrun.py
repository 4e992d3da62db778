"""The in-job entry point with real subprocesses: auto ports, readiness, exit codes, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aifb.job.run import choose_free_ports, fill_ports, parse_args

pytestmark = pytest.mark.unit

# Runs the entry point with a reporter that appends one JSON line per event to a file.
# JOBRUN_TEST_STALL_S makes the STARTING report take that long (a server that is down).
DRIVER = """
import json, os, sys, time
from aifb.job.run import main

class FileReporter:
    def __init__(self, path):
        self.path = path
    def _write(self, **event):
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\\n")
    def starting(self):
        time.sleep(float(os.environ.get("JOBRUN_TEST_STALL_S", "0")))
        self._write(event="starting")
    def ready(self, host, port, startup_seconds):
        self._write(event="ready", host=host, port=port, seconds=startup_seconds)
    def restarting(self, restarts, reason):
        self._write(event="restarting", restarts=restarts, reason=reason)
    def exited(self, exit_code, log_tail, message):
        self._write(event="exited", code=exit_code, tail=log_tail, message=message)

sys.exit(main(sys.argv[2:], reporter=FileReporter(sys.argv[1])))
"""

# Listens on argv[1], records its port, pid, cwd file and env, and notes SIGTERM in term.flag.
TCP_SERVER = """
import json, os, signal, socket, sys
def on_term(signum, frame):
    open("term.flag", "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
port = int(sys.argv[1])
conf = open("conf/app.conf").read()
sock = socket.create_server(("0.0.0.0", port))
with open("info.json", "w") as fh:
    json.dump({"port": port, "pid": os.getpid(), "conf": conf,
               "env": os.environ.get("APP_PORT")}, fh)
while True:
    conn, _ = sock.accept()
    conn.close()
"""

HTTP_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""

FAILS = """
import sys
for i in range(200):
    print(f"line {i}")
sys.stdout.flush()
print("boom", file=sys.stderr)
sys.exit(3)
"""

NEVER_READY = """
import os, time
open("pid", "w").write(str(os.getpid()))
while True:
    time.sleep(1)
"""


class Job:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.events_path = tmp_path / "events.jsonl"
        (tmp_path / "driver.py").write_text(DRIVER)
        self.proc: subprocess.Popen[bytes] | None = None

    def program(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)

    def start(self, options: list[str], argv: list[str],
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIFB_")}
        env["APP_PORT"] = "port={{ port }}"
        env.update(extra_env or {})
        with open(self.dir / "job.out", "wb") as out, open(self.dir / "job.err", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.dir / "driver.py"), str(self.events_path),
                 "--service", "s1", "--workdir", str(self.dir), *options, "--", *argv],
                cwd=self.dir, env=env, stdout=out, stderr=err)
        return self.proc

    def stop(self) -> None:
        """End the entry point the way a scheduler does (SIGTERM: it stops the program's
        whole group), then SIGKILL; a SIGKILL alone would orphan the program."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # our own child, by its pid
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines()]

    def wait_event(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event["event"] == kind:
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no {kind} event within {timeout}s: {self.events()}")



def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def auto_tcp() -> list[str]:
    return ["--readiness", "tcp", "--ready-port", "{{ port }}", "--auto-port", "port",
            "--timeout", "30", "--file", "conf/app.conf=listen {{ port }};"]


def test_program_listening_on_auto_port_becomes_ready_with_that_port(job: Job) -> None:
    prog = job.program("server.py", TCP_SERVER)
    job.start(auto_tcp(), [sys.executable, prog, "{{ port }}"])
    ready = job.wait_event("ready")
    info = json.loads((job.dir / "info.json").read_text())
    assert ready["port"] == info["port"] > 0
    assert info["conf"] == f"listen {info['port']};"  # --file text got the same port
    assert info["env"] == f"port={info['port']}"  # and so did the environment
    assert [e["event"] for e in job.events()] == ["starting", "ready"]


def test_a_stalled_starting_report_holds_up_neither_the_program_nor_the_order(job: Job) -> None:
    prog = job.program("server.py", TCP_SERVER)
    job.start(auto_tcp(), [sys.executable, prog, "{{ port }}"],
              extra_env={"JOBRUN_TEST_STALL_S": "4"})
    deadline = time.monotonic() + 30
    while not (job.dir / "info.json").exists():
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.02)
    # The program is up, listening, while STARTING is still on its way to the server.
    assert job.events() == []
    job.wait_event("ready")
    assert [e["event"] for e in job.events()] == ["starting", "ready"]  # still in order


def test_http_readiness_waits_for_2xx_on_the_path(job: Job) -> None:
    prog = job.program("http_server.py", HTTP_SERVER)
    job.start(["--readiness", "http", "--ready-port", "{{ web }}", "--auto-port", "web",
               "--ready-path", "/health", "--timeout", "30"], [sys.executable, prog, "{{ web }}"])
    assert job.wait_event("ready")["port"] > 0


def test_program_exiting_3_before_ready_reports_exited_3_with_log_tail(job: Job) -> None:
    prog = job.program("fails.py", FAILS)
    proc = job.start(auto_tcp(), [sys.executable, prog])
    assert proc.wait(timeout=30) == 3
    exited = job.wait_event("exited")
    assert exited["code"] == 3 and "before it was ready" in exited["message"]
    lines = exited["tail"].splitlines()
    assert "boom" in lines and "line 199" in lines and "line 100" not in lines
    assert len(lines) <= 50
    out = (job.dir / "job.out").read_text()
    assert out.startswith("line 0\nline 1\n")  # the output still reaches the job's stdout
    assert "boom" in (job.dir / "job.err").read_text()
    assert "ready" not in [e["event"] for e in job.events()]


def test_sigterm_to_entry_point_stops_the_child(job: Job) -> None:
    prog = job.program("server.py", TCP_SERVER)
    proc = job.start(auto_tcp(), [sys.executable, prog, "{{ port }}"])
    job.wait_event("ready")
    child = json.loads((job.dir / "info.json").read_text())["pid"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert (job.dir / "term.flag").exists()  # the child got the forwarded SIGTERM
    assert not alive(child)
    exited = job.wait_event("exited")
    assert "stopped by SIGTERM" in exited["message"]


def test_readiness_timeout_stops_the_program_and_exits_nonzero(job: Job) -> None:
    prog = job.program("never.py", NEVER_READY)
    options = ["--readiness", "tcp", "--ready-port", "{{ port }}", "--auto-port", "port",
               "--timeout", "1", "--stop-timeout", "5"]
    proc = job.start(options, [sys.executable, prog])
    assert proc.wait(timeout=30) == 124
    exited = job.wait_event("exited")
    assert exited["code"] == 124 and "not ready within 1s" in exited["message"]
    assert not alive(int((job.dir / "pid").read_text()))


def test_missing_program_reports_exit_127(job: Job) -> None:
    proc = job.start(auto_tcp(), [str(job.dir / "no-such-program")])
    assert proc.wait(timeout=30) == 127
    assert job.wait_event("exited")["code"] == 127


def test_free_ports_are_distinct_and_fill_exact_tokens() -> None:
    ports = choose_free_ports(["a", "b", "c"])
    assert len(set(ports.values())) == 3 and all(p > 0 for p in ports.values())
    assert fill_ports("x={{ a }} y={{b}} z={{ c }}", ports) == (
        f"x={ports['a']} y={{{{b}}}} z={ports['c']}")


def test_parse_args_splits_options_from_the_program_at_double_dash() -> None:
    opts = parse_args(["--service", "s", "--readiness", "tcp", "--ready-port", "5",
                       "--file", "a=b=c", "--", "prog", "--", "--service"])
    assert opts.argv == ["prog", "--", "--service"] and opts.files == {"a": "b=c"}


def test_the_job_fills_in_the_placeholder_the_server_renders() -> None:
    from aifb.job.run import placeholder
    from aifb.server.recipes.values import token

    assert placeholder("port") == token("port") == "{{ port }}"

"""The in-job restart policy and health probes with real subprocesses: restarts counted and
reported in order, the limit, the backoff interrupted by SIGTERM, exec readiness, liveness."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

from aifb.job.run import parse_args
from tests.unit.test_jobrun import HTTP_SERVER, Job, alive

pytestmark = pytest.mark.unit

# Exits with argv[1] after writing its pid to pids.log (one line per start).
EXITS = """
import os, sys
with open("pids.log", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
sys.exit(int(sys.argv[1]))
"""

# An HTTP server whose /live answers 500 once the file `sick` exists in the workdir.
SICKENS = """
import http.server, os, sys
with open("pids.log", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = self.path == "/live" and os.path.exists("sick")
        self.send_response(500 if bad else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


# Serves /health, then exits 0 after argv[2] seconds.
SERVES_THEN_EXITS = """
import http.server, os, sys, threading
with open("pids.log", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
# The clock starts at the first probe, so a slow start on a busy machine is not
# an exit before ready.
timer = threading.Timer(float(sys.argv[2]), lambda: os._exit(0))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if not timer.is_alive():
            timer.start()
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"""


def restart(policy: str, max_restarts: int, backoff: float = 0.0,
            max_backoff: float = 0.0) -> list[str]:
    return ["--restart", json.dumps({"policy": policy, "max_restarts": max_restarts,
                                     "backoff": backoff, "max_backoff": max_backoff})]


def http_ready(port: str = "{{ port }}") -> list[str]:
    return ["--readiness", "http", "--ready-port", port, "--ready-path", "/health",
            "--auto-port", "port", "--timeout", "30"]


def pids(job: Job) -> list[int]:
    path = job.dir / "pids.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_on_failure_restarts_up_to_the_limit_then_exits_with_the_last_reason(job: Job) -> None:
    prog = job.program("exits.py", EXITS)
    proc = job.start(["--readiness", "tcp", "--ready-port", "{{ port }}", "--auto-port", "port",
                      "--timeout", "30", *restart("on-failure", 2)], [sys.executable, prog, "5"])
    assert proc.wait(timeout=30) == 5
    events = job.events()
    assert [e["event"] for e in events] == ["starting", "restarting", "restarting", "exited"]
    assert [e["restarts"] for e in events[1:3]] == [1, 2]
    assert "exited with code 5 before it was ready; restart 1 of 2" in events[1]["reason"]
    assert events[3]["code"] == 5
    assert "not restarted again: 2 restarts, the most allowed" in events[3]["message"]
    assert len(set(pids(job))) == 3  # three starts, three processes


def test_exiting_0_before_ready_is_a_failed_start_that_on_failure_restarts(job: Job) -> None:
    prog = job.program("exits.py", EXITS)
    options = ["--readiness", "tcp", "--ready-port", "{{ port }}", "--auto-port", "port",
               "--timeout", "30"]
    proc = job.start([*options, *restart("on-failure", 3)], [sys.executable, prog, "0"])
    # Exiting 0 before ever being ready is still a failed start (exit code 1, as before).
    assert proc.wait(timeout=30) == 1
    assert [e["event"] for e in job.events()].count("restarting") == 3


@pytest.mark.parametrize(("policy", "starts"), [("on-failure", 1), ("always", 3)])
def test_a_clean_exit_after_ready_is_restarted_only_by_always(job: Job, policy: str,
                                                              starts: int) -> None:
    prog = job.program("serves.py", SERVES_THEN_EXITS)
    proc = job.start([*http_ready(), *restart(policy, 2)],
                     [sys.executable, prog, "{{ port }}", "0.3"])
    assert proc.wait(timeout=30) == 0
    events = [e["event"] for e in job.events()]
    assert events.count("ready") == starts and events.count("restarting") == starts - 1
    assert len(pids(job)) == starts and events[-1] == "exited"


def test_a_kill_after_ready_restarts_and_reports_ready_again(job: Job) -> None:
    prog = job.program("sickens.py", SICKENS)
    proc = job.start([*http_ready(), *restart("on-failure", 3, 0.05, 0.05)],
                     [sys.executable, prog, "{{ port }}"])
    first_ready = job.wait_event("ready")
    first = pids(job)[0]
    import os

    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while [e["event"] for e in job.events()].count("ready") < 2:
        assert time.monotonic() < deadline, job.events()
        time.sleep(0.02)
    events = job.events()
    assert [e["event"] for e in events] == ["starting", "ready", "restarting", "ready"]
    assert "exited with code 137 (SIGKILL); restart 1 of 3" in events[2]["reason"]
    assert events[3]["port"] == first_ready["port"]  # the same auto port again
    assert not alive(first) and alive(pids(job)[1])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_a_failing_liveness_check_stops_and_restarts_the_program(job: Job) -> None:
    prog = job.program("sickens.py", SICKENS)
    liveness = json.dumps({"kind": "http", "port": "{{ port }}", "path": "/live",
                           "interval": 0.1, "timeout": 1, "failure_threshold": 3})
    proc = job.start([*http_ready(), "--liveness", liveness, *restart("on-failure", 1)],
                     [sys.executable, prog, "{{ port }}"])
    job.wait_event("ready")
    (job.dir / "sick").touch()
    assert proc.wait(timeout=30) == 1
    events = job.events()
    assert [e["event"] for e in events] == ["starting", "ready", "restarting", "ready",
                                             "exited"]
    reason = ("liveness check failed 3 times in a row: http GET /live on port "
              f"{events[1]['port']}: status 500, expected 2xx; program stopped")
    assert events[2]["reason"].startswith(reason)
    assert events[4]["message"].startswith(reason)
    assert not any(alive(p) for p in pids(job))


def test_sigterm_during_the_backoff_ends_the_job_at_once(job: Job) -> None:
    prog = job.program("exits.py", EXITS)
    proc = job.start(["--readiness", "tcp", "--ready-port", "{{ port }}", "--auto-port", "port",
                      "--timeout", "30", *restart("always", 5, 600, 600)],
                     [sys.executable, prog, "2"])
    job.wait_event("restarting")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 20  # not the 600 s backoff
    assert "while waiting to restart" in job.wait_event("exited")["message"]
    assert len(pids(job)) == 1


def test_exec_readiness_gates_ready_and_reports_the_given_port(job: Job) -> None:
    prog = job.program("http_server.py", HTTP_SERVER)
    check = job.program("check.py", "import os, sys\nsys.exit(0 if os.path.exists('go') "
                                    "else 1)\n")
    proc = job.start(["--readiness", "exec", "--ready-exec",
                      json.dumps([sys.executable, check]), "--ready-port", "{{ web }}",
                      "--auto-port", "web", "--timeout", "30", "--ready-interval", "0.1"],
                     [sys.executable, prog, "{{ web }}"])
    time.sleep(1.0)
    assert [e["event"] for e in job.events()] == ["starting"]  # the server is up, not ready
    (job.dir / "go").touch()
    assert job.wait_event("ready")["port"] > 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


@pytest.mark.parametrize(("options", "words"), [
    (["--liveness", "{"], "--liveness: not JSON"),
    (["--liveness", '{"kind": "grpc", "port": "1"}'], "kind must be one of tcp, http, exec"),
    (["--liveness", '{"kind": "exec"}'], "an exec check needs a command"),
    (["--liveness", '{"kind": "http", "port": "1", "failure_threshold": 0}'],
     "failure_threshold must be a number in 1..100"),
    (["--restart", '{"policy": "sometimes"}'], "policy must be never, on-failure or always"),
    (["--restart", '{"policy": "always", "max_restarts": -1}'], "max_restarts"),
    (["--readiness", "exec"], "--readiness exec needs --ready-exec"),
    (["--ready-exec", "[]"], "expected a JSON list of non-empty strings"),
    (["--workers", '{"argv": []}'], "argv must be a non-empty list"),
    (["--workers", '{"argv": ["w"], "per_node": 0}'], "per_node must be an integer >= 1"),
])
def test_bad_health_options_are_refused_naming_the_option(
        options: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--service": "s", "--readiness": "tcp", "--ready-port": "5"}
    for i in range(0, len(options), 2):
        base[options[i]] = options[i + 1]
    argv = [x for kv in base.items() for x in kv]
    with pytest.raises(SystemExit):
        parse_args([*argv, "--", "prog"])
    assert words in capsys.readouterr().err


# Like nginx: the program forks a helper that serves the port, then only waits for it; a
# kill -9 of the program leaves the helper serving (and holding the port) unless it is ended.
FORKS_A_SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
pid = os.fork()
if pid == 0:
    with open("helpers.log", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
with open("pids.log", "a") as fh:
    fh.write(f"{os.getpid()}\\n")
os.waitpid(pid, 0)
sys.exit(1)
"""


def test_helpers_a_killed_program_left_are_ended_before_the_restart(job: Job) -> None:
    prog = job.program("forks.py", FORKS_A_SERVER)
    proc = job.start([*http_ready(), *restart("on-failure", 2, 0.05, 0.05)],
                     [sys.executable, prog, "{{ port }}"])
    job.wait_event("ready")
    import os

    helper = int((job.dir / "helpers.log").read_text().split()[0])
    os.kill(pids(job)[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while [e["event"] for e in job.events()].count("ready") < 2:
        assert time.monotonic() < deadline, job.events()
        time.sleep(0.02)
    assert not alive(helper)  # ended (and reaped), so the new helper could bind the port
    new_helper = int((job.dir / "helpers.log").read_text().split()[1])
    assert alive(new_helper) and [e["event"] for e in job.events()].count("restarting") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not alive(new_helper)  # the stop reached the program's whole group

"""A service whose recipe declares `workers:` (issue 14, part 2), on the local executor and on
real SLURM (one node, two tasks: the worker is an srun task of the job): READY once the worker
joined the head at the host the job filled in, the worker list reported, a worker that dies
restarts the whole service, and a delete ends the worker too."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.server import RunningServer
from tests.integration.flow import S, state_name, wait_for_state

pytestmark = pytest.mark.integration




def _joined(svc: S.Service) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{svc.endpoint.port}/workers"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def test_the_head_is_ready_once_its_worker_joined_and_the_worker_is_reported(
        each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    svc = stub.CreateService(S.CreateServiceRequest(recipe="pair", parameters={"port": "0"}),
                             timeout=60).service
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=120)
    assert state_name(ready.state) == "READY", ready.state_message
    assert list(ready.workers) == [ready.endpoint.host]  # one worker, beside the head
    joined = _joined(ready)
    assert len(joined) == 1
    worker = int(joined[0]["pid"])  # type: ignore[call-overload]
    if server.config.server.scheduler == "slurm":
        assert joined[0]["task"] == "0"  # an srun task of the job, not a plain process
    # The worker dies: the run ends and the restart policy starts head and worker again.
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 120
    again = ready
    for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=120):
        again = msg.service
        if again.restarts == 1 and again.state == S.SERVICE_STATE_READY:
            break
        assert time.monotonic() < deadline
    assert again.restarts == 1 and "worker 0 exited with code" in again.last_restart_reason
    rejoined = _joined(again)
    assert len(rejoined) == 1 and rejoined[0]["pid"] != worker
    second = int(rejoined[0]["pid"])  # type: ignore[call-overload]
    stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    final = wait_for_state(stub, svc.name, set(), timeout=90)
    assert state_name(final.state) == "STOPPED"
    deadline = time.monotonic() + 30
    while _alive(second):  # the worker ends with the service
        assert time.monotonic() < deadline, "the worker outlived its service"
        time.sleep(0.1)

"""Health probes and the restart policy inside a job, on the local executor and on real SLURM:
a killed program is started again in the same job, a failing liveness check restarts it until
`max_restarts` and then the service is FAILED with that reason, `never` keeps today's end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from aifb.server.registry import Registry
from aifb.server.schedulers import make_scheduler
from aifb.v1 import common_pb2, server_pb2
from tests.fixtures.server import RunningServer, server_config
from tests.integration.flow import S, state_name, wait_for_state

pytestmark = pytest.mark.integration




def _create(stub: object, policy: server_pb2.RestartPolicy | None = None,
            **params: str) -> S.Service:
    req = S.CreateServiceRequest(recipe="flaky", parameters=params)
    if policy is not None:
        req.restart_policy.CopyFrom(policy)
    return stub.CreateService(req, timeout=60).service  # type: ignore[attr-defined, no-any-return]


def _pids(svc: S.Service, stub: object, count: int, timeout: float = 60.0) -> list[int]:
    """The pids the program wrote at each start (starts.log in the workdir), once there are
    `count` of them."""
    # The workdir is <home>/jobs/<id>, the folder of the job's stdout file.
    log = Path(svc.job.stdout_path).parent / "starts.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            pids = [int(line) for line in log.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.1)
    raise AssertionError(f"{log}: fewer than {count} starts within {timeout}s")


def _wait(stub: object, name: str, test: object, timeout: float = 60.0) -> S.Service:
    """Follow WatchService until `test(service)` holds."""
    seen: list[tuple[str, int, str, str]] = []
    try:
        for msg in stub.WatchService(S.WatchServiceRequest(name=name),  # type: ignore[attr-defined]
                                     timeout=timeout):
            svc = msg.service
            seen.append((state_name(svc.state), svc.restarts, svc.job.raw_state,
                         svc.state_message[:80]))
            if test(svc):  # type: ignore[operator]
                return svc
    except grpc.RpcError as exc:
        raise AssertionError(f"{exc.code()}; the condition never held: {seen}") from None
    raise AssertionError(f"the condition never held: {seen}")


def test_a_killed_program_is_restarted_in_the_same_job(
        each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    svc = _create(stub)
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
    assert state_name(ready.state) == "READY", ready.state_message
    assert ready.restart_policy.kind == server_pb2.RESTART_POLICY_KIND_ON_FAILURE
    assert ready.restart_policy.max_restarts == 3 and ready.restarts == 0
    first = _pids(ready, stub, 1)[0]
    os.kill(first, signal.SIGKILL)
    again = _wait(stub, svc.name, lambda s: s.restarts == 1 and s.state == S.SERVICE_STATE_READY)
    assert "SIGKILL" in again.last_restart_reason, again.last_restart_reason
    assert again.job.job_id == ready.job.job_id  # the same job: restarted inside it
    second = _pids(again, stub, 2)[1]
    assert second != first
    os.kill(second, 0)  # the new program runs
    stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    final = wait_for_state(stub, svc.name, set(), timeout=60)
    assert state_name(final.state) == "STOPPED" and final.restarts == 1


def test_a_failing_liveness_check_restarts_until_max_restarts_then_fails(
        each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    policy = server_pb2.RestartPolicy(max_restarts=2, backoff=Duration(nanos=100_000_000))
    svc = _create(stub, policy, sick_after="1")
    final = wait_for_state(stub, svc.name, set(), timeout=120)
    assert state_name(final.state) == "FAILED", final.state_message
    assert final.restarts == 2 and final.restart_policy.max_restarts == 2
    assert "liveness check failed 2 times in a row" in final.last_restart_reason
    assert "status 500, expected 2xx" in final.last_restart_reason
    # The job ended with the last reason, and says that it gave up.
    assert "liveness check failed" in final.state_message
    assert "not restarted again: 2 restarts, the most allowed" in final.state_message
    assert len(_pids(final, stub, 3)) == 3  # the first start and two restarts


def test_never_ends_the_service_with_its_program(each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    policy = server_pb2.RestartPolicy(kind=server_pb2.RESTART_POLICY_KIND_NEVER)
    svc = _create(stub, policy, exit_after="1", exit_code="7")
    final = wait_for_state(stub, svc.name, set(), timeout=90)
    assert state_name(final.state) == "FAILED" and final.restarts == 0
    assert final.job.exit_code == 7 and "exited with code 7" in final.state_message


def test_always_restarts_a_clean_exit_and_the_count_is_stored(
        each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    policy = server_pb2.RestartPolicy(kind=server_pb2.RESTART_POLICY_KIND_ALWAYS,
                                      max_restarts=1, backoff=Duration())
    svc = _create(stub, policy, exit_after="2", exit_code="0")
    final = wait_for_state(stub, svc.name, set(), timeout=90)
    # Two clean exits: the first restarted, the second past max_restarts ends the job cleanly.
    assert state_name(final.state) == "STOPPED", final.state_message
    assert final.restarts == 1 and "exited with code 0" in final.last_restart_reason
    # What a restarted server reads back (a second connection to the registry's file).
    assert server.app is not None
    stored = Registry(server.app.manager.registry.path).get(svc.name.removeprefix("services/"))
    assert stored is not None and stored.restarts == 1 and stored.job_restarts == 1
    assert stored.last_restart_reason == final.last_restart_reason
    assert [c.message for c in Registry(server.app.manager.registry.path).history(stored.id)
            if c.message.startswith("restart 1:")], "the restart is in the state history"


def _cancel_outside_aifb(server: RunningServer, job_id: str) -> None:
    """What `scancel` by someone else does (the local executor's own cancel, by job id)."""
    if server.config.server.scheduler == "slurm":
        subprocess.run(["scancel", job_id], check=True, timeout=30)
    else:
        assert server.app is not None
        server.run(server.app.scheduler.cancel(job_id))


def test_a_job_cancelled_outside_aifb_is_replaced_by_a_new_job(
        each_scheduler_server: RunningServer) -> None:
    server = each_scheduler_server
    stub = server.stub()
    svc = _create(stub)
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
    assert state_name(ready.state) == "READY", ready.state_message
    _cancel_outside_aifb(server, ready.job.job_id)
    again = _wait(stub, svc.name, lambda s: s.state == S.SERVICE_STATE_READY
                  and s.job.job_id != ready.job.job_id, timeout=120)
    assert again.restarts == 1
    assert "cancelled outside aifb" in again.last_restart_reason
    assert f"(job {ready.job.job_id})" in again.last_restart_reason
    assert again.job.stdout_path.endswith("/job.1.out")
    stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    final = wait_for_state(stub, svc.name, set(), timeout=60)
    assert state_name(final.state) == "STOPPED" and final.restarts == 1
    if server.config.server.scheduler == "slurm":  # nothing of it is left on the cluster
        out = subprocess.run(["squeue", "-h", "--me", "-n", f"aifb-flaky-{svc.name[9:]}-r1"],
                             capture_output=True, text=True, timeout=30, check=True)
        assert out.stdout.strip() == ""


@pytest.mark.slurm
def test_a_requeued_job_is_counted_once_and_serves_again(slurm_cluster: object,
                                                         aifb_home: Path) -> None:
    srv = RunningServer(server_config(aifb_home, scheduler="slurm"),
                        make_scheduler=lambda: make_scheduler("slurm")).start()
    try:
        stub = srv.stub()
        svc = _create(stub)
        ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
        assert state_name(ready.state) == "READY", ready.state_message
        subprocess.run(["scontrol", "requeue", ready.job.job_id], check=True, timeout=30)
        # SLURM holds a requeued job for two minutes (BeginTime) once its first run has
        # finished completing; then let it run again at once.
        deadline = time.monotonic() + 60
        while subprocess.run(["squeue", "-h", "-j", ready.job.job_id, "-o", "%T"],
                             capture_output=True, text=True, timeout=30).stdout.strip() != (
                                 "PENDING"):
            assert time.monotonic() < deadline, "the requeued job never became pending"
            time.sleep(0.2)
        # Started again at once the node may still hold the first run's revoked credential
        # ("Killing non-startable batch job": the job fails and is replaced, a second
        # restart): give slurmd a moment first, as SLURM's own hold does.
        time.sleep(3)
        subprocess.run(["scontrol", "update", f"JobId={ready.job.job_id}", "StartTime=now"],
                       check=True, timeout=30)
        again = _wait(stub, svc.name, lambda s: s.restarts == 1
                      and s.state == S.SERVICE_STATE_READY, timeout=240)
        assert again.job.job_id == ready.job.job_id  # the same job, run again by SLURM
        assert "requeued by the scheduler" in again.last_restart_reason
    finally:
        srv.cancel_all(wait=0)
        srv.stop()


@pytest.mark.slurm
def test_a_job_at_its_time_limit_is_replaced(slurm_cluster: object, aifb_home: Path) -> None:
    srv = RunningServer(server_config(aifb_home, scheduler="slurm"),
                        make_scheduler=lambda: make_scheduler("slurm")).start()
    try:
        stub = srv.stub()
        req = S.CreateServiceRequest(recipe="flaky",
                                     resources=common_pb2.Resources(time_limit_minutes=1))
        svc = stub.CreateService(req, timeout=60).service
        ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
        assert state_name(ready.state) == "READY", ready.state_message
        again = _wait(stub, svc.name, lambda s: s.state == S.SERVICE_STATE_READY
                      and s.job.job_id != ready.job.job_id, timeout=240)
        assert again.restarts == 1 and "timeout" in again.last_restart_reason
    finally:
        srv.cancel_all(wait=0)
        srv.stop()


def test_nginx_killed_with_its_workers_left_behind_is_restarted_and_serves(
        each_scheduler_server: RunningServer) -> None:
    """kill -9 of nginx's master leaves its workers serving and holding the port: they are
    ended before the restart, which binds the same port again."""
    if shutil.which("nginx") is None and not os.environ.get("CI"):
        pytest.skip("nginx is not installed (scripts/test.sh installs it)")
    server = each_scheduler_server
    stub = server.stub()
    req = S.CreateServiceRequest(recipe="nginx", parameters={"port": "0", "workers": "2"},
                                 restart_policy=server_pb2.RestartPolicy(
                                     kind=server_pb2.RESTART_POLICY_KIND_ON_FAILURE))
    svc = stub.CreateService(req, timeout=60).service
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
    assert state_name(ready.state) == "READY", ready.state_message
    master = int((Path(ready.job.stdout_path).parent / "nginx.pid").read_text())
    os.kill(master, signal.SIGKILL)
    again = _wait(stub, svc.name, lambda s: s.restarts == 1 and s.state == S.SERVICE_STATE_READY)
    assert "SIGKILL" in again.last_restart_reason and again.endpoint.port == ready.endpoint.port
    url = f"http://127.0.0.1:{again.endpoint.port}/health"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
    new_master = int((Path(ready.job.stdout_path).parent / "nginx.pid").read_text())
    assert new_master != master

"""A server killed with SIGKILL and started again re-attaches to its SLURM jobs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aifb.mesh.auth import read_token_file
from aifb.mesh.channel import open_sync_channel
from aifb.v1 import server_pb2_grpc
from tests.fixtures import SlurmCluster
from tests.fixtures.server import TEST_RECIPES
from tests.integration.flow import S, create, redis_ping, state_name, wait_for_state

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

AIFB = Path(sys.executable).with_name("aifb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIFB_SERVER__RECIPE_DIRS": f"[{TEST_RECIPES}]",
           "AIFB_SERVER__POLL_INTERVAL_SECONDS": "0.2"}
    with (home.parent / f"up-{time.monotonic_ns()}.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(AIFB), "--home", str(home), "up", "--listen", f"127.0.0.1:{port}",
             "--scheduler", "slurm"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert proc.poll() is None, "aifb up exited"
            time.sleep(0.05)
    raise AssertionError("aifb up did not listen")


def _stub(home: Path, port: int) -> server_pb2_grpc.ServerServiceStub:
    token = read_token_file(home / "token")
    return server_pb2_grpc.ServerServiceStub(open_sync_channel(f"127.0.0.1:{port}", token=token))


def _end(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (SIGKILL after 15 s) an `aifb up` that is still running."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sigkilled_server_reattaches_to_running_jobs_and_records_ended_ones(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = _free_port()
    proc = _start(home, port)
    try:
        stub = _stub(home, port)
        redis = create(stub, "redis", port="0")
        ready = wait_for_state(stub, redis.name, {S.SERVICE_STATE_READY}, timeout=90)
        assert state_name(ready.state) == "READY", ready.state_message
        short = create(stub, "sleeper", seconds="3")
        wait_for_state(stub, short.name, {S.SERVICE_STATE_STARTING}, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # the short job ends while no server is watching
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"],
                                 capture_output=True, text=True, check=True).stdout
            if f"{short.job.job_id} " in out and "RUNNING" not in out.split(
                    f"{short.job.job_id} ")[1].split("\n")[0]:
                break
            time.sleep(0.2)
        proc = _start(home, port)
        stub = _stub(home, port)
        again = stub.GetService(S.GetServiceRequest(name=redis.name), timeout=30).service
        assert state_name(again.state) == "READY"
        assert redis_ping(again.endpoint.host, again.endpoint.port) == b"+PONG\r\n"
        ended = wait_for_state(stub, short.name, set(), timeout=60)
        assert state_name(ended.state) == "FAILED"  # exited before it was ever ready
        assert ended.job.raw_state == "FAILED" and ended.job.exit_code == 1
        stub.DeleteService(S.DeleteServiceRequest(name=redis.name), timeout=30)
        final = wait_for_state(stub, redis.name, set(), timeout=60)
        assert state_name(final.state) == "STOPPED"
    finally:
        _end(proc)



def _watch(home: Path, port: int, service: str) -> subprocess.Popen[str]:
    """`aifb services watch` as a user runs it: JSON lines, reconnecting when the server dies."""
    config = home.parent / "cli-config.yaml"  # not the user's own config file
    config.write_text("mesh: {}\n")
    return subprocess.Popen(
        [str(AIFB), "--home", str(home), "--server", f"127.0.0.1:{port}", "--output", "json",
         "services", "watch", service.removeprefix("services/")],
        env={**os.environ, "AIFB_CONFIG": str(config)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _next_state(watcher: subprocess.Popen[str]) -> str:
    assert watcher.stdout is not None
    line = watcher.stdout.readline()
    assert line, f"the watcher ended early: {watcher.stderr.read() if watcher.stderr else ''}"
    return str(json.loads(line)["state"]).removeprefix("SERVICE_STATE_")


def test_watchers_reconnect_after_sigkill_and_follow_to_terminal(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = _free_port()
    proc = _start(home, port)
    watchers: list[subprocess.Popen[str]] = []
    try:
        stub = _stub(home, port)
        redis = create(stub, "redis", port="0")
        ready = wait_for_state(stub, redis.name, {S.SERVICE_STATE_READY}, timeout=90)
        assert state_name(ready.state) == "READY", ready.state_message
        short = create(stub, "sleeper", seconds="4")
        wait_for_state(stub, short.name, {S.SERVICE_STATE_STARTING}, timeout=60)
        on_redis, on_short = _watch(home, port, redis.name), _watch(home, port, short.name)
        watchers += [on_redis, on_short]
        assert _next_state(on_redis) == "READY"  # the snapshot
        assert _next_state(on_short) == "STARTING"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The short job ends while no server runs; the watchers keep retrying meanwhile.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-t", "all", "-j", short.job.job_id, "-o",
                                  "%T"], capture_output=True, text=True, check=False).stdout
            if out.strip() and out.strip() not in ("RUNNING", "COMPLETING"):
                break
            time.sleep(0.2)
        assert on_redis.poll() is None and on_short.poll() is None, "a watcher gave up"
        proc = _start(home, port)
        # The job that ended meanwhile reaches its watcher with its real final state.
        assert _next_state(on_short) == "FAILED"
        assert on_short.wait(30) == 1  # `watch` exits 1 on FAILED
        # A transition made after the restart reaches the reconnected watcher, to terminal.
        stub = _stub(home, port)
        stub.DeleteService(S.DeleteServiceRequest(name=redis.name), timeout=30)
        assert on_redis.wait(60) == 0
        assert on_redis.stdout is not None
        after = [json.loads(line) for line in on_redis.stdout.read().splitlines()]
        states = [str(s["state"]).removeprefix("SERVICE_STATE_") for s in after]
        # The snapshot after the reconnect is not repeated; STOPPING may come more than once
        # only when the job itself changed (RUNNING -> COMPLETING, its exit report). A watcher
        # whose backoff brings it back only after the job has stopped sees STOPPED alone: a
        # watch follows the latest state, it does not replay what happened while it was away.
        assert states[-1] == "STOPPED" and set(states[:-1]) <= {"STOPPING"}, states
        jobs = [(s["job"].get("raw_state"), s["job"].get("exit_code"), s["state_message"])
                for s in after]
        assert len(jobs) == len(set(jobs)), f"the same message twice: {jobs}"
        assert len(states) <= 5, states
    finally:
        for w in watchers:
            if w.poll() is None:
                w.kill()
            w.communicate(timeout=10)  # reaps it and closes its pipes
        _end(proc)


def _our_jobs(home: Path) -> dict[str, str]:
    """{job id: state} of the live SLURM jobs whose workdir lies under this test's home."""
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%T|%Z"], capture_output=True,
                         text=True, check=True).stdout
    return {job: state for job, state, workdir in (line.split("|", 2) for line in
                                                   out.splitlines() if line.strip())
            if workdir.startswith(str(home))}


def test_sigkill_in_a_burst_of_creates_leaves_no_job_untracked(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Killing `aifb up` while 24 creates are being submitted left services PENDING
    'submitting' for good and SLURM jobs nobody tracked (issue 11, item 3). After a restart
    every live job of ours belongs to a service, none is 'submitting', and deleting them all
    leaves no job running."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    home = tmp_path / "home"
    port = _free_port()
    proc = _start(home, port)
    try:
        stub = _stub(home, port)

        def one(i: int) -> str:
            try:
                return create(stub, "sleeper", request_id=f"burst-{i}").name
            except grpc.RpcError as err:  # the server died under it: expected for some
                return f"error: {err.code()}"

        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            # Kill once the first creates are through: the rest are mid-sbatch or queued.
            while sum(f.done() for f in futures) < 3:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            [f.result() for f in futures]
        proc = _start(home, port)
        stub = _stub(home, port)
        deadline = time.monotonic() + 60
        while True:  # the restarted server looks for the jobs of unfinished submissions
            services = list(stub.ListServices(S.ListServicesRequest(page_size=100),
                                              timeout=30).services)
            if not any(s.state_message == "submitting" for s in services):
                break
            assert time.monotonic() < deadline, [s.state_message for s in services]
            time.sleep(0.2)
        tracked = {s.job.job_id for s in services if s.job.job_id}
        live = _our_jobs(home)
        assert live and set(live) <= tracked, (live, tracked)
        for s in services:
            stub.DeleteService(S.DeleteServiceRequest(name=s.name), timeout=30)
        for s in services:
            wait_for_state(stub, s.name, set(), timeout=60)
        deadline = time.monotonic() + 30
        while _our_jobs(home):  # scancel'd jobs leave squeue within a few seconds
            assert time.monotonic() < deadline, _our_jobs(home)
            time.sleep(0.2)
    finally:
        _end(proc)
        for job in _our_jobs(home):  # never leave the shared cluster busy
            subprocess.run(["scancel", job], check=False)


def _jobs_named(prefix: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()[1].startswith(prefix)]


def test_restarts_while_the_server_is_down_are_counted_once_with_one_job_left(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Issue 14, part 7: the server SIGKILLed while one service's program is restarted inside
    its job and another's job is cancelled outside aifb; after its restart each restart is
    counted once, the cancelled job is replaced by exactly one job, and nothing else runs."""
    home = tmp_path / "home"
    port = _free_port()
    proc = _start(home, port)
    try:
        stub = _stub(home, port)
        in_job = create(stub, "flaky")
        by_job = create(stub, "flaky")
        for svc in (in_job, by_job):
            ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
            assert state_name(ready.state) == "READY", ready.state_message
        in_job = stub.GetService(S.GetServiceRequest(name=in_job.name), timeout=30).service
        by_job = stub.GetService(S.GetServiceRequest(name=by_job.name), timeout=30).service
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        starts = Path(in_job.job.stdout_path).parent / "starts.log"
        os.kill(int(starts.read_text().split()[0]), signal.SIGKILL)
        subprocess.run(["scancel", by_job.job.job_id], check=True)
        deadline = time.monotonic() + 30
        while len(starts.read_text().split()) < 2:  # restarted while no server listens
            assert time.monotonic() < deadline, "the program was not restarted in its job"
            time.sleep(0.1)
        proc = _start(home, port)
        stub = _stub(home, port)
        for svc in (in_job, by_job):
            for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=120):
                if msg.service.restarts >= 1 and msg.service.state == S.SERVICE_STATE_READY:
                    break
        one = stub.GetService(S.GetServiceRequest(name=in_job.name), timeout=30).service
        two = stub.GetService(S.GetServiceRequest(name=by_job.name), timeout=30).service
        assert one.restarts == 1 and one.job.job_id == in_job.job.job_id
        assert "SIGKILL" in one.last_restart_reason
        assert two.restarts == 1 and two.job.job_id != by_job.job.job_id
        assert "cancelled outside aifb" in two.last_restart_reason
        sid_one, sid_two = (s.name.removeprefix("services/") for s in (one, two))
        assert _jobs_named(f"aifb-flaky-{sid_one}") == [one.job.job_id]
        assert _jobs_named(f"aifb-flaky-{sid_two}") == [two.job.job_id]
        for svc in (one, two):
            stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
            assert state_name(wait_for_state(stub, svc.name, set(), timeout=60).state) == (
                "STOPPED")
        assert _jobs_named(f"aifb-flaky-{sid_one}") == _jobs_named(f"aifb-flaky-{sid_two}") == []
    finally:
        _end(proc)

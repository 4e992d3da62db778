"""The local executor with real subprocesses: states, exit codes, cancel, re-attach, refusals."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aifb.mesh.errors import SchedulerRejected
from aifb.server.jobs import JobStatus
from aifb.server.schedulers import LocalScheduler
from aifb.server.schedulers.local import process_start_ticks
from tests.fixtures import job_spec, minimal_batch_script

pytestmark = pytest.mark.unit
T = TypeVar("T")
DEADLINE_S = 20.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def wait_for(
    sched: LocalScheduler, job_id: str, done: Callable[[JobStatus], bool]
) -> JobStatus:
    """Poll `query` until `done(status)`, failing after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = (await sched.query([job_id])).get(job_id)
        if status is not None and done(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} never reached the expected state; last: {status}")
        await asyncio.sleep(0.02)


async def wait_path(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} never appeared")
        await asyncio.sleep(0.02)


async def submit(sched: LocalScheduler, workdir: Path, command: Sequence[str],
                 **resources: Any) -> str:
    spec = job_spec(workdir, command=tuple(command), **resources)
    return await sched.submit(spec, minimal_batch_script(spec))


def test_job_exiting_0_is_running_then_completed_with_its_output(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state")
    workdir = tmp_path / "job"

    async def scenario() -> tuple[JobStatus, JobStatus, str]:
        job_id = await submit(sched, workdir, ["bash", "-c",
                                                "echo id=$AIFB_LOCAL_JOB_ID; read -t 0.3 x; true"])
        first = (await sched.query([job_id]))[job_id]
        final = await wait_for(sched, job_id, lambda s: s.terminal)
        return first, final, job_id

    first, final, job_id = run(scenario())
    assert job_id.startswith("local-")
    assert first.raw_state == "RUNNING"
    assert (final.raw_state, final.exit_code, final.signal) == ("COMPLETED", 0, None)
    assert (workdir / f"aifb-test-{job_id}.out").read_text() == f"id={job_id}\n"
    assert (workdir.stat().st_mode & 0o777) == 0o700


def test_job_exiting_3_is_failed_with_exit_code_3(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state")

    async def scenario() -> JobStatus:
        job_id = await submit(sched, tmp_path / "job", ["bash", "-c", "echo oops >&2; exit 3"])
        return await wait_for(sched, job_id, lambda s: s.terminal)

    final = run(scenario())
    assert (final.raw_state, final.reason, final.exit_code) == ("FAILED", "NonZeroExitCode", 3)
    assert "oops" in next((tmp_path / "job").glob("*.err")).read_text()


def test_cancel_gives_cancelled_with_sigterm_and_leaves_no_zombie(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state", kill_wait_seconds=30)

    async def scenario() -> tuple[JobStatus, int]:
        job_id = await submit(sched, tmp_path / "job", ["sleep", "300"])
        await wait_for(sched, job_id, lambda s: s.raw_state == "RUNNING")
        pid = sched._jobs[job_id].pid
        await sched.cancel(job_id)
        return await wait_for(sched, job_id, lambda s: s.terminal), pid

    final, pid = run(scenario())
    assert (final.raw_state, final.signal) == ("CANCELLED", 15)
    assert process_start_ticks(pid) is None  # reaped: neither running nor a zombie
    assert not Path(f"/proc/{pid}").exists()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`, read from /proc."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat_file.parent.name))
    return members


async def wait_group_empty(pgid: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while group_members(pgid):
        if time.monotonic() > deadline:
            pytest.fail(f"process group {pgid} still has {group_members(pgid)}")
        await asyncio.sleep(0.05)


def test_job_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state", kill_wait_seconds=0.5)
    spec = job_spec(tmp_path / "job")

    async def scenario() -> JobStatus:
        job_id = await sched.submit(spec, "#!/bin/bash\ntrap '' TERM\ntouch ready\nsleep 300\n")
        await wait_path(tmp_path / "job" / "ready")  # the trap is set
        await sched.cancel(job_id)
        final = await wait_for(sched, job_id, lambda s: s.terminal)
        await wait_group_empty(sched._jobs[job_id].pid)
        return final

    final = run(scenario())
    assert (final.raw_state, final.signal) == ("CANCELLED", 9)


def test_cancel_kills_background_processes_left_in_the_group(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state", kill_wait_seconds=0.5)

    async def scenario() -> tuple[JobStatus, int]:
        job_id = await submit(sched, tmp_path / "job",
                              ["bash", "-c", "trap '' TERM; sleep 300 & touch ready; wait"])
        await wait_path(tmp_path / "job" / "ready")  # the SIGTERM-proof sleep runs
        await sched.cancel(job_id)
        final = await wait_for(sched, job_id, lambda s: s.terminal)
        pgid = sched._jobs[job_id].pid
        await wait_group_empty(pgid)  # the SIGTERM-proof sleep went with the SIGKILL
        return final, pgid

    final, pgid = run(scenario())
    assert final.raw_state == "CANCELLED"
    assert group_members(pgid) == []


def test_fresh_instance_reattaches_to_running_and_ended_jobs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = LocalScheduler(state)

    async def start() -> tuple[str, str]:
        failed = await submit(first, tmp_path / "a", ["bash", "-c", "exit 4"])
        sleeper = await submit(first, tmp_path / "b", ["sleep", "300"])
        await wait_for(first, failed, lambda s: s.terminal)
        return failed, sleeper

    failed, sleeper = run(start())
    second = LocalScheduler(state)  # as after a server restart

    async def reattach() -> tuple[dict[str, JobStatus], JobStatus, str]:
        seen = await second.query([failed, sleeper, "local-999"])
        await second.cancel(sleeper)
        final = await wait_for(second, sleeper, lambda s: s.terminal)
        new_id = await submit(second, tmp_path / "c", ["true"])
        return seen, final, new_id

    seen, final, new_id = run(reattach())
    assert set(seen) == {failed, sleeper}
    assert (seen[failed].raw_state, seen[failed].exit_code) == ("FAILED", 4)
    assert seen[sleeper].raw_state == "RUNNING"
    assert (final.raw_state, final.signal) == ("CANCELLED", 15)
    assert new_id not in (failed, sleeper)  # ids stay unique across instances


def test_pid_reused_by_another_process_is_not_taken_for_the_job(tmp_path: Path) -> None:
    sched = LocalScheduler(tmp_path / "state")

    async def scenario() -> str:
        job_id = await submit(sched, tmp_path / "job", ["true"])
        await wait_for(sched, job_id, lambda s: s.terminal)
        return job_id

    job_id = run(scenario())
    record = tmp_path / "job" / f"aifb-{job_id}.json"
    # point the record at a live process (this one) with another start time
    text = record.read_text().replace(f'"pid": {sched._jobs[job_id].pid}', f'"pid": {os.getpid()}')
    record.write_text(text)
    (tmp_path / "job" / f"aifb-{job_id}.exit").unlink()
    fresh = LocalScheduler(tmp_path / "state")
    status = run(fresh.query([job_id]))[job_id]
    assert status.raw_state == "FAILED" and status.reason == "ExitStatusLost"


@pytest.mark.parametrize(
    ("resources", "words"),
    [({"gpus": 1}, "1 GPUs (this machine has 0)"),
     ({"cpus": 10_000}, "10000 CPUs"),
     ({"nodes": 2}, "2 nodes")],
)
def test_request_beyond_the_machine_is_rejected(
    tmp_path: Path, resources: dict[str, int], words: str
) -> None:
    sched = LocalScheduler(tmp_path / "state", gpus=0)
    with pytest.raises(SchedulerRejected, match=words.replace("(", r"\(").replace(")", r"\)")):
        run(submit(sched, tmp_path / "job", ["true"], **resources))
    assert not (tmp_path / "job").exists()  # nothing was started


def test_find_gives_a_live_job_by_name_even_to_a_new_scheduler(tmp_path: Path) -> None:
    """A restarted server (a new LocalScheduler on the same state folder) finds the job it
    started but did not get to record; an ended job is not found."""
    state = tmp_path / "state"

    async def scenario() -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
        first = LocalScheduler(state)
        spec = job_spec(tmp_path / "job", name="aifb-sleeper-abc", command=("sleep", "30"))
        job_id = await first.submit(spec, minimal_batch_script(spec))
        again = LocalScheduler(state)
        live = await again.find(["aifb-sleeper-abc", "aifb-other"])
        await again.cancel(job_id)
        await wait_for(again, job_id, lambda s: s.terminal)
        return job_id, live, await again.find(["aifb-sleeper-abc"])

    job_id, live, after = run(scenario())
    assert live == {"aifb-sleeper-abc": [job_id]}
    assert after == {}

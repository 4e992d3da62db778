"""Both SLURM backends (CLI and slurmrestd with JWT over TCP) against the real local cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from aifb.mesh.errors import SchedulerRejected
from aifb.server.jobs import JobStatus
from aifb.server.schedulers import SlurmCliScheduler, SlurmRestScheduler
from tests.fixtures import SlurmCluster, job_spec, minimal_batch_script

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

DEADLINE_S = 30.0  # the first job after slurmctld starts waits ~3 s for a scheduler pass
Sched = SlurmCliScheduler | SlurmRestScheduler
Scenario = Callable[[Sched], Awaitable[Any]]


def backend(kind: str, cluster: SlurmCluster) -> Sched:
    if kind == "cli":
        return SlurmCliScheduler(env=cluster.env, timeout=30)
    return SlurmRestScheduler(cluster.rest_url, token=cluster.token, user=cluster.user_name)


def play(kind: str, cluster: SlurmCluster, scenario: Scenario) -> Any:
    """Run `scenario` with a fresh backend of `kind` in its own event loop."""
    async def main() -> Any:
        sched = backend(kind, cluster)
        try:
            return await scenario(sched)
        finally:
            await sched.close()

    return asyncio.run(main())


async def wait_for(sched: Sched, job_id: str, done: Callable[[JobStatus], bool]) -> JobStatus:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status = (await sched.query([job_id])).get(job_id)
        if status is not None and done(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"SLURM job {job_id} never reached the expected state; last: {status}")
        await asyncio.sleep(0.1)


async def submit(sched: Sched, workdir: Path, command: Sequence[str], **resources: Any) -> str:
    spec = job_spec(workdir, command=tuple(command), **resources)
    return await sched.submit(spec, minimal_batch_script(spec))


KINDS = pytest.mark.parametrize("kind", ["cli", "rest"])


@KINDS
def test_sleep_job_runs_and_cancel_gives_cancelled(
    kind: str, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    async def scenario(sched: Sched) -> tuple[JobStatus, JobStatus]:
        job_id = await submit(sched, tmp_path, ["sleep", "300"])
        running = await wait_for(sched, job_id, lambda s: s.raw_state == "RUNNING")
        await sched.cancel(job_id)
        return running, await wait_for(sched, job_id, lambda s: s.terminal)

    running, final = play(kind, slurm_cluster, scenario)
    assert running.nodes  # the node it runs on
    assert final.raw_state == "CANCELLED"
    assert final.signal == 15 and final.exit_code is None


@KINDS
def test_find_gives_the_live_jobs_of_a_name_and_forgets_them_once_ended(
    kind: str, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """How a restarted server finds a job it submitted but did not get to record."""
    name = f"aifb-find-{kind}-{time.monotonic_ns()}"

    async def scenario(sched: Sched) -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
        spec = job_spec(tmp_path, name=name, command=("sleep", "300"))
        job_id = await sched.submit(spec, minimal_batch_script(spec))
        live = await sched.find([name, "aifb-no-such-job"])
        await sched.cancel(job_id)
        await wait_for(sched, job_id, lambda s: s.terminal)
        return job_id, live, await sched.find([name])

    job_id, live, after = play(kind, slurm_cluster, scenario)
    assert live == {name: [job_id]}
    assert after == {}


@KINDS
def test_exit_3_gives_failed_with_exit_code_3(
    kind: str, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    async def scenario(sched: Sched) -> JobStatus:
        job_id = await submit(sched, tmp_path, ["bash", "-c", "echo bye; exit 3"])
        return await wait_for(sched, job_id, lambda s: s.terminal)

    final = play(kind, slurm_cluster, scenario)
    assert (final.raw_state, final.reason, final.exit_code) == ("FAILED", "NonZeroExitCode", 3)
    assert "bye" in next(tmp_path.glob("aifb-test-*.out")).read_text()


@KINDS
@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"memory_mib": 100 * 1024 * 1024}, "Requested node configuration is not available"),
        ({"gpus": 1}, "gres"),
        ({"partition": "nosuch"}, "Invalid partition name specified"),
        ({"cpus": 64}, "More processors requested than permitted"),
    ],
    ids=["memory", "gpu", "partition", "cpus"],
)
def test_impossible_request_is_rejected_with_slurms_message(
    kind: str, slurm_cluster: SlurmCluster, tmp_path: Path, resources: dict[str, Any],
    message: str,
) -> None:
    async def scenario(sched: Sched) -> str:
        return await submit(sched, tmp_path, ["true"], **resources)

    with pytest.raises(SchedulerRejected) as caught:
        play(kind, slurm_cluster, scenario)
    assert message in caught.value.message
    assert caught.value.code.name == "FAILED_PRECONDITION"


@KINDS
def test_query_of_20_jobs_makes_exactly_one_call(
    kind: str, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    async def scenario(sched: Sched) -> tuple[dict[str, JobStatus], int, list[str]]:
        ids = [await submit(sched, tmp_path / str(i), ["true"]) for i in range(20)]
        before = sum(sched.calls.values())
        statuses = await sched.query(ids)
        return statuses, sum(sched.calls.values()) - before, ids

    statuses, calls, ids = play(kind, slurm_cluster, scenario)
    assert set(statuses) == set(ids)
    assert calls == 1


def test_rest_over_unix_socket_pings_and_queries_a_cli_job(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    async def scenario() -> tuple[str, dict[str, JobStatus], int, str]:
        cli = SlurmCliScheduler(env=slurm_cluster.env)
        job_id = await submit(cli, tmp_path, ["true"])
        rest = SlurmRestScheduler(slurm_cluster.unix_url)
        try:
            version = await rest.ping()
            before = rest.calls["jobs"]
            statuses = await rest.query([job_id, "999999"])
            return version, statuses, rest.calls["jobs"] - before, job_id
        finally:
            await rest.close()

    version, statuses, calls, job_id = asyncio.run(scenario())
    assert version == "v0.0.38"
    assert set(statuses) == {job_id}
    assert calls == 1

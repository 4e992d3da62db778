"""A service's ended job is replaced by a new one while its restart policy allows (issue 14,
part 4): counted as a restart, a new name and report token, the restarts left handed to the new
job; a SLURM requeue counts once; a server killed around the replacement leaves one job, counted
once. A scripted scheduler stands in for SLURM here; tests/integration/test_restarts.py runs the
real ones."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from aifb.mesh.auth import Principal
from aifb.mesh.errors import SchedulerUnavailable
from aifb.server.deploy import Deployer, ResourceRequest
from aifb.server.embedded import embedded_config
from aifb.server.jobs import JobSpec, JobStatus
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.recipes.params import RestartOverride
from aifb.server.registry import Registry
from aifb.server.states import ServiceState
from tests.fixtures.server import TEST_RECIPES

pytestmark = pytest.mark.unit

S = ServiceState
USER = Principal(user="u")


class Scheduler:
    """Jobs get ids 100, 101, ...; `states` says what query() reports for each."""

    name = "scripted"

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []  # (job name, script)
        self.states: dict[str, str] = {}
        self.live: dict[str, list[str]] = {}
        self.unavailable = 0  # submits that fail with SchedulerUnavailable first

    async def submit(self, spec: JobSpec, script: str) -> str:
        if self.unavailable:
            self.unavailable -= 1
            raise SchedulerUnavailable("slurmctld is restarting", tool="sbatch")
        self.submitted.append((spec.job_name, script))
        job_id = str(99 + len(self.submitted))
        self.states[job_id] = "PENDING"
        return job_id

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {i: JobStatus(i, self.states[i], exit_code=0 if self.states[i] == "COMPLETED"
                             else None) for i in job_ids if i in self.states}

    async def cancel(self, job_id: str) -> None:
        self.states[job_id] = "CANCELLED"

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        return {n: self.live[n] for n in job_names if n in self.live}

    async def close(self) -> None:
        return None


def _manager(home: Path, sched: Scheduler) -> ServiceManager:
    config = embedded_config(home, recipe_dirs=[str(TEST_RECIPES)])
    return ServiceManager(Registry(home / "server.db"), sched,
                          Deployer.from_config(config, python=sys.executable),
                          home=home, advertise_address="login1:1")


async def _poll(manager: ServiceManager) -> None:
    await manager.apply_job_statuses(
        await manager.scheduler.query(manager.active_job_ids()), manager.active_job_ids())


async def _ready(manager: ServiceManager, sched: Scheduler, policy: str = "on-failure",
                 max_restarts: int = 2) -> ServiceRecord:
    record = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "",
                                  RestartOverride(policy=policy, max_restarts=max_restarts))
    sched.states[record.job_id] = "RUNNING"
    await _poll(manager)
    job = Principal(user="u", service=record.id)
    await manager.report_event(job, record.name, EventKind.STARTING)
    return await manager.report_event(job, record.name, EventKind.READY, host="n1", port=9)


def _restart_option(script: str) -> dict[str, object]:
    words = shlex.split(script.split("exec ", 1)[1].replace("\\\n", " "))
    return json.loads(words[words.index("--restart") + 1])  # type: ignore[no-any-return]


def test_a_job_cancelled_outside_aifb_is_replaced_and_counted(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched)
        sched.states["100"] = "CANCELLED"  # scancel by someone else
        await _poll(manager)
        now = manager.get(USER, ready.id)
        assert now.job_id == "101" and now.state == S.PENDING and now.restarts == 1
        assert now.job_attempt == 1 and not now.job_due and now.endpoint_host == ""
        assert now.last_restart_reason == ("the job was cancelled outside aifb (job 100)")
        assert now.stdout_path.endswith("/job.1.out")
        assert now.report_token_hash != ready.report_token_hash  # the old token is dead
        name, script = sched.submitted[1]
        assert name == f"aifb-flaky-{ready.id}-r1"
        # The new job's entry point gets the restarts that are left, not the whole budget.
        assert _restart_option(script)["max_restarts"] == 1
        assert "#SBATCH --requeue" in script
        history = [c.message for c in manager.registry.history(ready.id)]
        assert any(m.startswith("replacing the ended job: the job was cancelled") for m in history)

    asyncio.run(scenario())


@pytest.mark.parametrize(("policy", "max_restarts", "ends", "final"), [
    ("never", 2, "CANCELLED", S.FAILED),
    ("on-failure", 0, "TIMEOUT", S.FAILED),
    ("on-failure", 2, "COMPLETED", S.STOPPED),
])
def test_no_replacement_without_policy_budget_or_failure(
        aifb_home: Path, policy: str, max_restarts: int, ends: str, final: ServiceState) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched, policy, max_restarts)
        sched.states["100"] = ends
        await _poll(manager)
        assert manager.get(USER, ready.id).state == final
        assert len(sched.submitted) == 1

    asyncio.run(scenario())


def test_always_replaces_a_completed_job_until_the_budget_is_spent(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched, "always", 2)
        for job_id in ("100", "101", "102"):
            sched.states[job_id] = "COMPLETED"
            await _poll(manager)
        final = manager.get(USER, ready.id)
        assert final.state == S.STOPPED and final.restarts == 2 and len(sched.submitted) == 3

    asyncio.run(scenario())


def test_a_batch_system_that_does_not_answer_is_asked_again(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched)
        sched.states["100"] = "NODE_FAIL"
        sched.unavailable = 1
        await _poll(manager)
        waiting = manager.get(USER, ready.id)
        assert waiting.job_due and not waiting.job_id and waiting.restarts == 1
        await _poll(manager)  # the next tick submits it
        again = manager.get(USER, ready.id)
        assert again.job_id == "101" and again.restarts == 1 and not again.job_due

    asyncio.run(scenario())


def test_a_delete_while_the_replacement_waits_stops_it_without_a_job(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched)
        sched.states["100"] = "TIMEOUT"
        sched.unavailable = 1
        await _poll(manager)
        await manager.delete(USER, ready.name)
        await _poll(manager)
        assert manager.get(USER, ready.id).state == S.STOPPED
        assert len(sched.submitted) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("submitted_before_the_kill", [False, True])
def test_a_server_killed_around_the_replacement_leaves_one_job_counted_once(
        aifb_home: Path, submitted_before_the_kill: bool) -> None:
    sched = Scheduler()
    first = _manager(aifb_home, sched)

    async def before() -> str:
        ready = await _ready(first, sched)
        sched.states["100"] = "CANCELLED"
        sched.unavailable = 1  # the replacement is marked, not yet submitted: then the kill
        await _poll(first)
        return ready.id

    sid = asyncio.run(before())
    first.registry.close()
    if submitted_before_the_kill:  # sbatch ran, the server died before recording the id
        sched.live[f"aifb-flaky-{sid}-r1"] = ["777"]
        sched.states["777"] = "RUNNING"
    second = _manager(aifb_home, sched)

    async def after() -> None:
        await second.reconcile(second.unsubmitted())
        await _poll(second)
        await _poll(second)
        record = second.get(USER, sid)
        assert record.restarts == 1 and not record.job_due
        if submitted_before_the_kill:
            assert record.job_id == "777" and len(sched.submitted) == 1  # adopted, not again
        else:
            assert record.job_id == "101" and len(sched.submitted) == 2

    asyncio.run(after())


def test_a_slurm_requeue_counts_once_and_waits_for_ready_again(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched)
        sched.states["100"] = "PENDING"  # requeued: same id, back in the queue
        await _poll(manager)
        await _poll(manager)
        again = manager.get(USER, ready.id)
        assert again.state == S.PENDING and again.restarts == 1 and again.job_id == "100"
        assert again.last_restart_reason.startswith("job 100 was requeued by the scheduler")
        assert again.job_restarts == 0 and len(sched.submitted) == 1
        sched.states["100"] = "RUNNING"
        await _poll(manager)
        job = Principal(user="u", service=ready.id)
        # The requeued job's entry point counts its restarts from 1 again: each is counted.
        await manager.report_event(job, ready.name, EventKind.RESTARTING, restarts=1)
        assert manager.get(USER, ready.id).restarts == 2

    asyncio.run(scenario())


def test_a_pending_job_read_before_it_started_is_not_a_requeue(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        record = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "")
        await _poll(manager)  # the poller saw PENDING
        job = Principal(user="u", service=record.id)
        await manager.report_event(job, record.name, EventKind.STARTING)
        await _poll(manager)  # a poll that still reads PENDING
        now = manager.get(USER, record.id)
        assert now.state == S.STARTING and now.restarts == 0

    asyncio.run(scenario())


def test_a_requeue_seen_only_as_completing_then_pending_still_counts(aifb_home: Path) -> None:
    sched = Scheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> None:
        ready = await _ready(manager, sched)
        for word in ("COMPLETING", "PENDING"):  # what squeue shows around `scontrol requeue`
            sched.states["100"] = word
            await _poll(manager)
        again = manager.get(USER, ready.id)
        assert again.state == S.PENDING and again.restarts == 1

    asyncio.run(scenario())

"""A server killed while submitting leaves nothing it does not track (issue 11, item 3): a record
without a job id is reconciled on restart by the job's name (adopted, cancelled when a delete came
meanwhile, or failed when no job exists), and a delete that arrives while sbatch runs cancels the
job as soon as its id is known. A scripted scheduler stands in for SLURM here; the real one is in
tests/integration/test_server_crash_submit.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from aifb.mesh.auth import Principal
from aifb.server.deploy import Deployer, ResourceRequest, job_name_for
from aifb.server.embedded import embedded_config
from aifb.server.jobs import JobSpec, JobStatus
from aifb.server.manager import ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.registry import Registry
from aifb.server.states import ServiceState
from tests.fixtures.server import TEST_RECIPES

pytestmark = pytest.mark.unit

USER = Principal(user="u")


class ScriptedScheduler:
    name = "scripted"

    def __init__(self) -> None:
        self.live: dict[str, list[str]] = {}  # job name -> ids find() reports
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.hold = False

    async def submit(self, spec: JobSpec, script: str) -> str:
        if self.hold:
            await self.release.wait()
        return "42"

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        return {}

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        return {n: self.live[n] for n in job_names if n in self.live}

    async def close(self) -> None:
        return None


def _manager(home: Path, sched: ScriptedScheduler) -> ServiceManager:
    config = embedded_config(home, recipe_dirs=[str(TEST_RECIPES)])
    return ServiceManager(Registry(home / "server.db"), sched,
                          Deployer.from_config(config, python=sys.executable),
                          home=home, advertise_address="login1:1")


def _left_mid_submission(home: Path, sid: str, *, delete_requested: bool = False
                         ) -> ServiceRecord:
    """What a server killed during sbatch leaves: PENDING, 'submitting', no job id."""
    record = ServiceRecord(id=sid, owner="u", recipe="sleeper", state=(
        ServiceState.STOPPING if delete_requested else ServiceState.PENDING),
        state_message="submitting", scheduler="scripted", create_time=1.0, update_time=1.0,
        delete_requested=delete_requested)
    registry = Registry(home / "server.db")
    registry.insert(record)
    registry.close()
    return record


def test_a_job_submitted_before_the_crash_is_adopted(aifb_home: Path) -> None:
    _left_mid_submission(aifb_home, "aaaaaaaaaaaa")
    sched = ScriptedScheduler()
    sched.live[job_name_for("sleeper", "aaaaaaaaaaaa")] = ["77", "78"]
    manager = _manager(aifb_home, sched)
    left = manager.unsubmitted()
    assert left == ["aaaaaaaaaaaa"]
    asyncio.run(manager.reconcile(left))
    record = manager.registry.get("aaaaaaaaaaaa")
    assert record is not None and record.job_id == "77"
    assert record.state == ServiceState.PENDING and "re-attached" in record.state_message
    assert sched.cancelled == ["78"]  # a duplicate of one service is never left running
    assert manager.unsubmitted() == []


def test_with_no_job_found_the_service_fails_saying_why(aifb_home: Path) -> None:
    _left_mid_submission(aifb_home, "bbbbbbbbbbbb")
    manager = _manager(aifb_home, ScriptedScheduler())
    asyncio.run(manager.reconcile(manager.unsubmitted()))
    record = manager.registry.get("bbbbbbbbbbbb")
    assert record is not None and record.state == ServiceState.FAILED
    assert "no job of it was found" in record.state_message


def test_deleting_a_leftover_cancels_the_job_it_finds(aifb_home: Path) -> None:
    _left_mid_submission(aifb_home, "cccccccccccc")
    sched = ScriptedScheduler()
    sched.live[job_name_for("sleeper", "cccccccccccc")] = ["91"]
    manager = _manager(aifb_home, sched)
    record = asyncio.run(manager.delete(USER, "services/cccccccccccc"))
    assert sched.cancelled == ["91"]  # before: "stopped before submission", job left running
    assert record.job_id == "91" and record.state == ServiceState.STOPPING


def test_a_delete_while_sbatch_runs_cancels_the_job_once_its_id_is_known(
        aifb_home: Path) -> None:
    sched = ScriptedScheduler()
    manager = _manager(aifb_home, sched)

    async def scenario() -> ServiceRecord:
        sched.hold = True
        create = asyncio.create_task(manager.create(USER, "sleeper", {}, ResourceRequest(), {},
                                                    ""))
        while not manager.registry.polled():
            await asyncio.sleep(0.01)
        (pending,) = manager.registry.polled()
        assert manager.unsubmitted() == []  # in flight here: not a leftover
        await manager.delete(USER, pending.name)
        sched.release.set()
        await create
        final = manager.registry.get(pending.id)
        assert final is not None
        return final

    final = asyncio.run(scenario())
    assert sched.cancelled == ["42"]
    assert final.job_id == "42" and final.state == ServiceState.STOPPING
    assert final.delete_requested

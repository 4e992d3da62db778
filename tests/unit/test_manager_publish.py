"""The manager publishes a change only when something a watcher can see changed.

Regression: a job in COMPLETING has no exit code in squeue while the record already holds the
code the job reported, so every poll tick looked like a change and every watcher got the same
STOPPING message again, once per tick, until the job left the queue.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from aifb.server.deploy import Deployer
from aifb.server.embedded import embedded_config
from aifb.server.jobs import JobStatus
from aifb.server.manager import ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.registry import Registry
from aifb.server.states import ServiceState

pytestmark = pytest.mark.unit


def _manager(home: Path) -> ServiceManager:
    config = embedded_config(home)
    return ServiceManager(Registry(home / "server.db"), scheduler=None,  # type: ignore[arg-type]
                          deployer=Deployer.from_config(config, python=sys.executable),
                          home=home, advertise_address="")


def test_an_unchanged_completing_job_publishes_nothing_per_tick(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    record = ServiceRecord(id="abc", owner="u", recipe="redis", state=ServiceState.STOPPING,
                           job_id="7", raw_state="RUNNING", nodes="n1", exit_code=143,
                           delete_requested=True, state_message="deletion requested")
    manager.registry.insert(record)
    sub = manager.hub.subscribe(lambda r: True)

    async def ticks() -> None:
        completing = {"7": JobStatus(job_id="7", raw_state="COMPLETING", nodes="n1")}
        for _ in range(5):
            await manager.apply_job_statuses(completing, ["7"])
        ended = {"7": JobStatus(job_id="7", raw_state="CANCELLED", nodes="n1", exit_code=0,
                                signal=15)}
        await manager.apply_job_statuses(ended, ["7"])

    asyncio.run(ticks())
    published = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        assert isinstance(item, ServiceRecord)
        published.append(item)
    # RUNNING -> COMPLETING once (keeping the reported 143), then the terminal state: no repeats.
    assert [(r.state, r.raw_state, r.exit_code) for r in published] == [
        (ServiceState.STOPPING, "COMPLETING", 143),
        (ServiceState.STOPPED, "CANCELLED", 0),
    ]
    manager.registry.close()

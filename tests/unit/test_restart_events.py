"""RESTARTING reports in the server: counted once each, bounded, owned by the job's own token,
the state back to STARTING until READY again, kept in the history; what the CLI/agents see."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from aifb.mesh.auth import Principal
from aifb.mesh.discovery import target_from_service
from aifb.mesh.errors import InvalidArgument, PermissionDenied
from aifb.server.convert import service_to_proto
from aifb.server.deploy import Deployer, ResourceRequest
from aifb.server.embedded import embedded_config
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.recipes.params import RestartOverride
from aifb.server.registry import Registry
from aifb.server.states import ServiceState
from aifb.v1 import server_pb2
from tests.unit.test_discovery_metrics import _Scheduler

pytestmark = pytest.mark.unit
S = ServiceState

RECIPE = """\
name: svc
parameters:
  port: {type: port, default: 0}
command: [prog, "{{ port }}"]
readiness:
  tcp: {port: "{{ port }}"}
restart: {policy: on-failure, max_restarts: 4}
"""


@pytest.fixture
def manager(tmp_path: Path) -> ServiceManager:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "svc.yaml").write_text(RECIPE)
    config = embedded_config(tmp_path, recipe_dirs=[str(recipes)])
    return ServiceManager(Registry(tmp_path / "server.db"), _Scheduler(),
                          Deployer.from_config(config, python=sys.executable),
                          home=tmp_path, advertise_address="login1:1")


def test_restarts_are_counted_once_and_the_service_starts_again(manager: ServiceManager
                                                                ) -> None:
    user = Principal(user="u")

    async def scenario() -> None:
        record = await manager.create(user, "svc", {}, ResourceRequest(), {}, "",
                                      RestartOverride(max_restarts=2))
        assert (record.restart.policy, record.restart.max_restarts) == ("on-failure", 2)
        job = Principal(user="u", service=record.id)
        await manager.report_event(job, record.name, EventKind.STARTING)
        await manager.report_event(job, record.name, EventKind.READY, host="n1", port=5000)
        why = "exited with code 137 (SIGKILL); restart 1 of 2"
        again = await manager.report_event(job, record.name, EventKind.RESTARTING,
                                           restarts=1, message=why)
        assert again.state == S.STARTING and again.restarts == 1
        assert again.last_restart_reason == why and again.state_message == f"restart 1: {why}"
        # The same report again (a retry) changes nothing.
        same = await manager.report_event(job, record.name, EventKind.RESTARTING,
                                          restarts=1, message=why)
        assert same.revision == again.revision and same.restarts == 1
        # A late STARTING cannot move it; READY does.
        late = await manager.report_event(job, record.name, EventKind.STARTING)
        assert late.revision == same.revision
        ready = await manager.report_event(job, record.name, EventKind.READY, host="n1",
                                           port=5000)
        assert ready.state == S.READY and ready.restarts == 1
        # A restart while not READY (a failed start) counts too, and stays STARTING.
        await manager.report_event(job, record.name, EventKind.RESTARTING, restarts=2,
                                   message="not ready within 30s")
        two = await manager.report_event(job, record.name, EventKind.RESTARTING, restarts=2)
        assert two.restarts == 2
        history = [c.message for c in manager.registry.history(record.id)]
        assert [m for m in history if m.startswith("restart ")] == [
            f"restart 1: {why}", "restart 2: not ready within 30s"]
        msg = service_to_proto(two)
        assert msg.restarts == 2 and msg.last_restart_reason == "not ready within 30s"
        assert msg.restart_policy.kind == server_pb2.RESTART_POLICY_KIND_ON_FAILURE
        assert msg.restart_policy.max_restarts == 2
        assert msg.restart_policy.backoff.seconds == 1
        assert target_from_service(msg).restarts == 2

    asyncio.run(scenario())


@pytest.mark.parametrize("count", [0, -1, 10001])
def test_a_restart_count_out_of_bounds_is_refused(manager: ServiceManager, count: int) -> None:
    user = Principal(user="u")

    async def scenario() -> None:
        record = await manager.create(user, "svc", {}, ResourceRequest(), {}, "")
        with pytest.raises(InvalidArgument) as err:
            await manager.report_event(Principal(user="u", service=record.id), record.name,
                                       EventKind.RESTARTING, restarts=count)
        assert err.value.field == "restarts"

    asyncio.run(scenario())


def test_another_services_token_cannot_report_a_restart(manager: ServiceManager) -> None:
    user = Principal(user="u")

    async def scenario() -> None:
        one = await manager.create(user, "svc", {}, ResourceRequest(), {}, "")
        two = await manager.create(user, "svc", {}, ResourceRequest(), {}, "")
        with pytest.raises(PermissionDenied):
            await manager.report_event(Principal(user="u", service=two.id), one.name,
                                       EventKind.RESTARTING, restarts=1)
        assert manager.get(user, one.name).restarts == 0

    asyncio.run(scenario())


def test_a_ready_report_keeps_the_workers_and_refuses_too_many(manager: ServiceManager) -> None:
    user = Principal(user="u")

    async def scenario() -> None:
        record = await manager.create(user, "svc", {}, ResourceRequest(), {}, "")
        job = Principal(user="u", service=record.id)
        with pytest.raises(InvalidArgument) as err:
            await manager.report_event(job, record.name, EventKind.READY, host="n1", port=5,
                                       workers=["n2"] * 4097)
        assert err.value.field == "workers"
        with pytest.raises(InvalidArgument) as err:
            await manager.report_event(job, record.name, EventKind.READY, host="n1", port=5,
                                       workers=["x" * 254])
        assert err.value.field == "workers[0]"
        ready = await manager.report_event(job, record.name, EventKind.READY, host="n1",
                                           port=5, workers=["n2", "n3"])
        assert service_to_proto(ready).workers == ["n2", "n3"]
        assert manager.registry.get(record.id).workers == ("n2", "n3")  # type: ignore[union-attr]

    asyncio.run(scenario())

"""Replicated services in the manager (issue 14, parts 1 and 7) with a scripted scheduler: the
summary of the replicas' states, scaling, owner rules and bounds, and a server killed in the
middle of a create or a scale converging to the wanted count without a replica twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aifb.mesh.auth import Principal
from aifb.mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from aifb.server.deploy import ResourceRequest
from aifb.server.manager import EventKind, ServiceManager
from aifb.server.model import ServiceRecord
from aifb.server.replica_sets import summary, wanted_changes
from aifb.server.states import ServiceState
from tests.unit.test_job_replacement import Scheduler, _manager, _poll

pytestmark = pytest.mark.unit

S = ServiceState
USER = Principal(user="u")


def _set(**changes: object) -> ServiceRecord:
    base = ServiceRecord(id="g", owner="u", recipe="r", state=S.PENDING, replicas=3)
    return base.evolve(1.0, **changes)


def _replica(index: int, state: ServiceState, **changes: object) -> ServiceRecord:
    return ServiceRecord(id=f"g-{index}", owner="u", recipe="r", state=state, parent="g",
                         replica=index, endpoint_host="n" if state == S.READY else "",
                         endpoint_port=9000 + index if state == S.READY else 0
                         ).evolve(1.0 + index, **changes)


@pytest.mark.parametrize(("states", "min_ready", "expected"), [
    ((S.READY, S.READY, S.READY), 0, S.READY),
    ((S.READY, S.STARTING, S.READY), 0, S.DEGRADED),
    ((S.READY, S.STARTING, S.READY), 2, S.READY),
    ((S.PENDING, S.STARTING, S.PENDING), 0, S.STARTING),
    ((S.PENDING, S.PENDING, S.PENDING), 0, S.PENDING),
    ((S.FAILED, S.READY, S.READY), 0, S.DEGRADED),
    ((S.FAILED, S.FAILED, S.STOPPED), 0, S.FAILED),
    ((S.STOPPED, S.STOPPED, S.STOPPED), 0, S.STOPPED),
])
def test_the_set_summarises_its_active_replicas(states: tuple[ServiceState, ...],
                                                min_ready: int,
                                                expected: ServiceState) -> None:
    out = summary(_set(min_ready=min_ready), [_replica(i, s) for i, s in enumerate(states)])
    assert out["state"] == expected
    ready = [i for i, s in enumerate(states) if s == S.READY]
    assert out["endpoint_port"] == (9000 + ready[0] if ready else 0)


def test_retired_replicas_do_not_count_and_restarts_add_up() -> None:
    replicas = [_replica(0, S.READY, restarts=2, last_restart_reason="a"),
                _replica(1, S.STOPPED, retired=True, restarts=1, last_restart_reason="b")]
    out = summary(_set(replicas=1), replicas)
    assert out["state"] == S.READY and out["restarts"] == 3
    assert out["last_restart_reason"] == "replica 1: b"  # the latest change


def test_scaling_adds_new_indexes_and_retires_the_newest() -> None:
    replicas = [_replica(0, S.READY), _replica(1, S.READY), _replica(2, S.READY, retired=True)]
    assert wanted_changes(_set(replicas=4), replicas) == ([3, 4], [])
    add, retire = wanted_changes(_set(replicas=1), replicas)
    assert add == [] and [r.replica for r in retire] == [1]
    assert wanted_changes(_set(replicas=1, delete_requested=True), replicas) == ([], [])


def _sched_manager(home: Path) -> tuple[Scheduler, ServiceManager]:
    sched = Scheduler()
    return sched, _manager(home, sched)


def test_create_scale_and_delete_a_set(aifb_home: Path) -> None:
    sched, manager = _sched_manager(aifb_home)

    async def scenario() -> None:
        group = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "", replicas=3)
        assert group.is_set and not group.job_id
        replicas = manager.replicas_of(group)
        assert [r.id for r in replicas] == [f"{group.id}-{i}" for i in range(3)]
        assert all(r.job_id for r in replicas) and len(sched.submitted) == 3
        assert {name for name, _ in sched.submitted} == {f"aifb-flaky-{group.id}-{i}"
                                                          for i in range(3)}
        for r in replicas:
            sched.states[r.job_id] = "RUNNING"
        await _poll(manager)
        for r in replicas:
            job = Principal(user="u", service=r.id)
            await manager.report_event(job, r.name, EventKind.READY, host="n", port=1)
        assert manager.get(USER, group.name).state == S.READY
        # The set has no job and no report token of its own.
        with pytest.raises(InvalidArgument):
            await manager.report_event(USER, group.name, EventKind.READY, host="n", port=1)
        with pytest.raises(InvalidArgument):
            manager.logs(USER, group.name, 100)
        scaled = await manager.scale(USER, group.name, 1)
        assert [r.replica for r in manager.replicas_of(scaled)] == [0]
        await _poll(manager)
        assert [sched.states[r.job_id] for r in replicas[1:]] == ["CANCELLED", "CANCELLED"]
        stopped = await manager.delete(USER, group.name)
        assert stopped.state == S.STOPPING
        for job_id in sched.states:
            sched.states[job_id] = "CANCELLED"
        await _poll(manager)
        assert manager.get(USER, group.name).state == S.STOPPED
        page = manager.page(USER, page_size=10, token="", filter_text="")
        assert [r.id for r in page.items] == [group.id]  # replicas are not listed apart

    asyncio.run(scenario())


def test_bad_counts_and_other_callers_are_refused(aifb_home: Path) -> None:
    _, manager = _sched_manager(aifb_home)

    async def scenario() -> None:
        for replicas, min_ready, field in ((1001, 0, "replicas"), (2, 3, "min_ready")):
            with pytest.raises(InvalidArgument) as err:
                await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "",
                                     replicas=replicas, min_ready=min_ready)
            assert err.value.field == field
        single = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "")
        with pytest.raises(FailedPrecondition):
            await manager.scale(USER, single.name, 2)
        group = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "", replicas=2)
        with pytest.raises(NotFound):  # another user's service does not exist for them
            await manager.scale(Principal(user="eve"), group.name, 5)
        with pytest.raises(InvalidArgument):
            await manager.scale(Principal(user="u", service=f"{group.id}-0"), group.name, 5)
        with pytest.raises(InvalidArgument) as err:
            await manager.scale(USER, group.name, 0)
        assert err.value.field == "replicas"

    asyncio.run(scenario())


@pytest.mark.parametrize(("stored", "wanted"), [(1, 3), (3, 1)])
def test_a_server_killed_mid_scale_converges_to_the_wanted_count(
        aifb_home: Path, stored: int, wanted: int) -> None:
    sched, first = _sched_manager(aifb_home)

    async def before() -> str:
        group = await first.create(USER, "flaky", {}, ResourceRequest(), {}, "",
                                   replicas=stored)
        # The kill: the wanted count is committed, the replicas are not changed yet.
        async with first._lock:
            first._commit(first.registry.get(group.id).evolve(2.0, replicas=wanted))  # type: ignore[union-attr]
        return group.id

    gid = asyncio.run(before())
    first.registry.close()
    second = _manager(aifb_home, sched)

    async def after() -> None:
        await second.converge_sets()
        await second.converge_sets()  # idempotent
        group = second.get(USER, gid)
        active = second.replicas_of(group)
        assert len(active) == wanted and len({r.id for r in active}) == wanted
        assert len(sched.submitted) == max(stored, wanted)
        assert sum(s != "CANCELLED" for s in sched.states.values()) == wanted

    asyncio.run(after())


def test_a_replica_deleted_on_its_own_is_replaced_by_a_fresh_one(aifb_home: Path) -> None:
    sched, manager = _sched_manager(aifb_home)

    async def scenario() -> None:
        group = await manager.create(USER, "flaky", {}, ResourceRequest(), {}, "", replicas=2)
        await manager.delete(USER, f"services/{group.id}-1")
        assert [r.replica for r in manager.replicas_of(group)] == [0, 2]
        assert len(sched.submitted) == 3 and sched.states["101"] == "CANCELLED"
        assert manager.get(USER, group.name).replicas == 2

    asyncio.run(scenario())


def test_renewal_starts_a_successor_and_drains_the_old_replica_once_it_is_ready(
        aifb_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aifb.server import replica_commands

    monkeypatch.setattr(replica_commands, "DRAIN_SECONDS", 0.05)
    sched, manager = _sched_manager(aifb_home)

    async def scenario() -> None:
        with pytest.raises(InvalidArgument) as err:  # it needs a time limit to renew before
            await manager.create(USER, "sleeper", {}, ResourceRequest(time_limit_minutes=0),
                                 {}, "", renew_before=700000)
        assert err.value.field == "renew_before"
        group = await manager.create(USER, "flaky", {}, ResourceRequest(time_limit_minutes=10),
                                     {}, "", renew_before=120)
        assert group.is_set and group.replicas == 1  # a set of one
        (old,) = manager.replicas_of(group)
        sched.states[old.job_id] = "RUNNING"
        await _poll(manager)
        started = manager.registry.get(old.id).job_started  # type: ignore[union-attr]
        assert started > 0
        # Not due yet; then due (pretend the job started 8.5 minutes ago).
        assert not manager.renew_due(started + 60)
        async with manager._lock:
            manager._commit(manager.registry.get(old.id).evolve(  # type: ignore[union-attr]
                1.0, job_started=started - 510))
        await _poll(manager)
        active = manager.replicas_of(group)
        assert [r.replica for r in active] == [0, 1] and active[1].successor_of == old.id
        successor = active[1]
        sched.states[successor.job_id] = "RUNNING"
        await _poll(manager)
        job = Principal(user="u", service=old.id)
        await manager.report_event(job, old.name, EventKind.READY, host="n", port=1)
        assert manager.registry.get(old.id).state == S.READY  # type: ignore[union-attr]
        await manager.report_event(Principal(user="u", service=successor.id), successor.name,
                                   EventKind.READY, host="n", port=2)
        drained = manager.registry.get(old.id)
        assert drained is not None and drained.retired and drained.state == S.STOPPING
        assert sched.states[old.job_id] == "RUNNING"  # still draining
        await asyncio.sleep(0.2)
        assert sched.states[old.job_id] == "CANCELLED"
        final = manager.get(USER, group.name)
        assert final.state == S.READY and final.restarts == 0
        assert [r.replica for r in manager.replicas_of(final)] == [1]

    asyncio.run(scenario())


def test_a_server_killed_while_draining_cancels_the_old_job_at_start_up(aifb_home: Path) -> None:
    sched, first = _sched_manager(aifb_home)

    async def before() -> tuple[str, str]:
        group = await first.create(USER, "flaky", {}, ResourceRequest(time_limit_minutes=10),
                                   {}, "", renew_before=120)
        (old,) = first.replicas_of(group)
        sched.states[old.job_id] = "RUNNING"
        async with first._lock:  # what _hand_over leaves before its delayed cancel
            first._commit(first.registry.get(old.id).evolve(  # type: ignore[union-attr]
                2.0, retired=True, delete_requested=True, state=S.STOPPING))
        return group.id, old.job_id

    gid, job_id = asyncio.run(before())
    first.registry.close()
    second = _manager(aifb_home, sched)
    asyncio.run(second.converge_sets())
    assert sched.states[job_id] == "CANCELLED"
    assert len(second.replicas_of(second.get(USER, gid))) == 1  # a new replica took its place

"""The service lifecycle through the real gRPC server on a real SLURM: CLI and REST backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aifb.server.jobs import Scheduler
from aifb.server.schedulers import make_scheduler
from aifb.v1 import common_pb2
from tests.fixtures import SlurmCluster
from tests.fixtures.server import RunningServer, server_config
from tests.integration.flow import S, redis_ping, rpc_code, state_name, wait_for_state

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


@pytest.fixture(params=["slurm", "slurmrest"])
def slurm_server(request: pytest.FixtureRequest, slurm_cluster: SlurmCluster,
                 aifb_home: Path) -> Iterator[RunningServer]:
    kind = request.param

    def scheduler() -> Scheduler:
        if kind == "slurm":
            return make_scheduler("slurm")
        return make_scheduler("slurmrest", url=slurm_cluster.rest_url,
                              token=slurm_cluster.token, user=slurm_cluster.user_name)

    srv = RunningServer(server_config(aifb_home, scheduler=kind), make_scheduler=scheduler)
    srv.start()
    try:
        yield srv
    finally:
        srv.cancel_all(wait=0)
        srv.stop()


def _create(stub: object, recipe: str, cpus: int = 1, memory_mib: int = 0, gpus: int = 0,
            **params: str) -> S.Service:
    req = S.CreateServiceRequest(recipe=recipe, parameters=params, resources=common_pb2.Resources(
        cpus=cpus, memory_mib=memory_mib, gpus=gpus))
    return stub.CreateService(req, timeout=60).service  # type: ignore[attr-defined, no-any-return]


def test_redis_job_goes_ready_answers_ping_and_delete_stops_it(slurm_server: RunningServer
                                                               ) -> None:
    stub = slurm_server.stub()
    svc = _create(stub, "redis", port="0", memory_mib=256)
    assert svc.job.job_id and svc.job.scheduler == slurm_server.app.scheduler.name  # type: ignore[union-attr]
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
    assert state_name(ready.state) == "READY", ready.state_message
    assert redis_ping(ready.endpoint.host, ready.endpoint.port) == b"+PONG\r\n"
    stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    final = wait_for_state(stub, svc.name, set(), timeout=60)
    assert state_name(final.state) == "STOPPED"
    assert final.job.raw_state.startswith("CANCELLED")


def test_a_job_whose_program_fails_ends_failed_with_exit_code_and_output(
        slurm_server: RunningServer) -> None:
    stub = slurm_server.stub()
    svc = _create(stub, "failer")
    final = wait_for_state(stub, svc.name, set(), timeout=90)
    assert state_name(final.state) == "FAILED"
    assert final.job.raw_state == "FAILED"
    assert final.job.exit_code == 3
    assert "boom: disk on fire" in final.state_message


@pytest.mark.parametrize(("memory_mib", "gpus", "words"), [
    (50_000_000, 0, "memory"), (0, 1, "gres"),
])
def test_an_impossible_request_is_refused_with_the_schedulers_reason(
        slurm_server: RunningServer, memory_mib: int, gpus: int, words: str) -> None:
    stub = slurm_server.stub()
    with pytest.raises(grpc.RpcError) as info:
        _create(stub, "sleeper", memory_mib=memory_mib, gpus=gpus)
    assert rpc_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert words in info.value.details().lower()  # type: ignore[attr-defined]


def test_fifty_services_at_once_are_tracked_with_one_query_per_tick(
        slurm_server: RunningServer) -> None:
    stub = slurm_server.stub()
    app = slurm_server.app
    assert app is not None
    names = [_create(stub, "sleeper", memory_mib=32).name for _ in range(50)]
    listed = stub.ListServices(S.ListServicesRequest(filter="recipe=sleeper", page_size=20),
                               timeout=30)
    assert len(listed.services) == 20 and listed.next_page_token
    poller = app.poller

    async def counters() -> tuple[int, int]:
        # Read on the server's loop: a tick counts itself, then (no await between) its query,
        # so a read from this thread could fall between the two and miscount by one.
        return poller.ticks, poller.queries

    # Let the poller run some ticks with 50 jobs in flight.
    ticks0, queries0 = slurm_server.run(counters())
    calls0 = sum(app.scheduler.calls.values())  # type: ignore[attr-defined]
    wait_for_state(stub, names[0], {S.SERVICE_STATE_STARTING}, timeout=60)
    deadline = time.monotonic() + 30
    while poller.queries - queries0 < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    ticks, queries = (now - then for now, then in zip(slurm_server.run(counters()),
                                                      (ticks0, queries0), strict=True))
    calls = sum(app.scheduler.calls.values()) - calls0  # type: ignore[attr-defined]
    assert 3 <= queries <= ticks
    # one squeue/GET per query; the CLI backend may add one `sacct -c` for jobs gone from squeue
    assert calls <= 2 * ticks
    for name in names:
        stub.DeleteService(S.DeleteServiceRequest(name=name), timeout=30)
    finals = [wait_for_state(stub, n, set(), timeout=120) for n in names]
    assert {state_name(f.state) for f in finals} == {"STOPPED"}

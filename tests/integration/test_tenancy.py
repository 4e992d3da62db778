"""Tenant isolation across every service of a real `aifb up` (issue 11, item 1), with two users:
the operator (who runs it; the token in ~/.aifb/token) and bob (`aifb tokens create --user bob`),
and a job's report token (AIFB_REPORT_TOKEN, from its batch script).

Proves: bob reads none of the operator's log lines (QueryLogs) or traces (GetTrace: NOT_FOUND, as
an unknown one), and lines bob pushes labelled as the operator's service never reach the
operator's QueryLogs; the node-wide views (logger sources and live lines, monitor snapshots,
collector counters) answer the operator only; a job's token is refused by every method but
ReportServiceEvent, PushMetrics and PushLogs (found through reflection, so a new method is
covered), and pushes only for its own service, where its owner reads them back; a user cannot
break another's agent by reusing its agent id with high sequence numbers."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aifb.mesh.channel import auth_metadata, open_sync_channel
from aifb.mesh.push import AGENT_ID_HEADER, AGENT_INSTANCE_HEADER
from aifb.v1 import (
    collector_pb2,
    collector_pb2_grpc,
    experiment_pb2,
    experiment_pb2_grpc,
    logger_pb2,
    logger_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
    telemetry_pb2,
)
from tests.integration.rpc_probe import call_raw, methods
from tests.integration.test_cli_telemetry import Up, cli_env, start_up

pytestmark = pytest.mark.integration

# What a job's token may call; everything else must answer PERMISSION_DENIED.
JOB_METHODS = {"/aifb.v1.ServerService/ReportServiceEvent",
               "/aifb.v1.CollectorService/PushMetrics", "/aifb.v1.CollectorService/PushLogs"}


@dataclass
class Mesh:
    up: Up
    home: Path
    operator: str  # tokens
    bob: str
    job: str
    job_service: str  # services/<id> of the job token

    def channel(self, token: str) -> grpc.Channel:
        return open_sync_channel(self.up.address, token=token)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("tenancy")
    up = start_up(tmp, None)
    home = Path(cli_env(tmp)["HOME"]) / ".aifb"
    try:
        operator = (home / "token").read_text().strip()
        bob = up.json("tokens", "create", "--user", "bob")["token"]
        svc = up.json("services", "create", "sleeper")
        sid = svc["name"].removeprefix("services/")
        script = (home / "jobs" / sid / "job.sbatch").read_text()
        job = next(shlex.split(line)[1].split("=", 1)[1] for line in script.splitlines()
                   if line.startswith("export AIFB_REPORT_TOKEN="))
        yield Mesh(up, home, operator, bob, job, svc["name"])
    finally:
        for svc in up.json("services", "list"):
            up.cli("services", "delete", svc["name"].removeprefix("services/"))
        up.daemon.stop()


def _log_request(agent: str, seq: int, service: str, *lines: str
                 ) -> collector_pb2.PushLogsRequest:
    now = time.time_ns()
    return collector_pb2.PushLogsRequest(batch=telemetry_pb2.LogBatch(
        agent_id=agent, sequence=seq, streams=[telemetry_pb2.LogStream(
            labels={"service": service, "stream": "stdout"},
            timestamps_ns=[now + i for i in range(len(lines))], lines=list(lines))]))


def _push_logs(channel: grpc.Channel, token: str, agent: str, seq: int, service: str,
               *lines: str, instance: str = "") -> list[collector_pb2.PushLogsResponse]:
    """(The sync channel adds the token to unary and server-streaming calls only.)"""
    stub = collector_pb2_grpc.CollectorServiceStub(channel)
    headers = ((AGENT_ID_HEADER, agent), (AGENT_INSTANCE_HEADER, instance)) if instance else ()
    return list(stub.PushLogs(iter([_log_request(agent, seq, service, *lines)]), timeout=30,
                              metadata=(*auth_metadata(token), *headers)))


def _query(channel: grpc.Channel, service: str) -> list[str]:
    stub = collector_pb2_grpc.CollectorServiceStub(channel)
    resp = stub.QueryLogs(collector_pb2.QueryLogsRequest(labels={"service": service}), timeout=30)
    return [e.line for e in resp.entries]


def _code(call: object) -> grpc.StatusCode:
    try:
        result = call()  # type: ignore[operator]
        if hasattr(result, "__next__"):
            next(result, None)  # a stream that ends at once is an OK too
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_bob_reads_none_of_the_operators_lines_and_cannot_plant_lines_in_them(
        mesh: Mesh) -> None:
    service = "services/operatorsvc"
    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob:
        acks = _push_logs(op, mesh.operator, "op-agent", 1, service, "operator secret 1",
                          "operator secret 2")
        assert acks[0].accepted_lines == 2
        acks = _push_logs(bob, mesh.bob, "bob-agent", 1, service, "planted by bob")
        assert acks[0].accepted_lines == 1  # stored, as bob's own
        assert _query(op, service) == ["operator secret 1", "operator secret 2"]
        assert _query(bob, service) == ["planted by bob"]


def test_reusing_another_users_agent_id_does_not_swallow_that_agents_batches(
        mesh: Mesh) -> None:
    service = "services/seqsvc"
    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob:
        _push_logs(bob, mesh.bob, "shared-agent", 1_000_000, service, "bob high sequence")
        acks = _push_logs(op, mesh.operator, "shared-agent", 1, service, "operator line")
        assert not acks[0].duplicate
        assert _query(op, service) == ["operator line"]


def test_another_users_open_stream_under_the_same_agent_id_locks_nobody_out(
        mesh: Mesh) -> None:
    service = "services/seqsvc"
    release = threading.Event()

    def bob_requests() -> Iterator[collector_pb2.PushLogsRequest]:
        yield _log_request("taken-agent", 1, service, "bob's line")
        release.wait(30)  # the stream stays open meanwhile

    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob:
        held = collector_pb2_grpc.CollectorServiceStub(bob).PushLogs(
            bob_requests(), timeout=60, metadata=(
                *auth_metadata(mesh.bob), (AGENT_ID_HEADER, "taken-agent"),
                (AGENT_INSTANCE_HEADER, "bob-process")))
        assert next(held).sequence == 1  # bob's stream is open
        acks = _push_logs(op, mesh.operator, "taken-agent", 1, service, "operator's line",
                          instance="operator-process")
        release.set()
        list(held)
    assert [(a.sequence, a.duplicate) for a in acks] == [(1, False)]


def test_bob_cannot_read_the_operators_trace(mesh: Mesh) -> None:
    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob:
        svc = server_pb2_grpc.ServerServiceStub(op).GetService(
            server_pb2.GetServiceRequest(name=mesh.job_service), timeout=30).service
        assert svc.trace_id
        request = collector_pb2.GetTraceRequest(trace_id=svc.trace_id)
        deadline = time.monotonic() + 30
        while True:  # the create's spans reach the collector's store as they end
            try:
                spans = collector_pb2_grpc.CollectorServiceStub(op).GetTrace(
                    request, timeout=30).spans
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
                time.sleep(0.2)
        assert any(s.name == "aifb.server.create_service" for s in spans)
        with pytest.raises(grpc.RpcError) as err:
            collector_pb2_grpc.CollectorServiceStub(bob).GetTrace(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_bob_sees_and_controls_none_of_the_operators_experiments(mesh: Mesh) -> None:
    from aifb.experiment.convert import study_to_proto
    from aifb.experiment.study import load_study

    study = load_study("name: mine\nservices:\n  - recipe: sleeper\nworkloads:\n"
                       "  - workload: http\n    load: {duration: 1s}\n    rates: [5]\n",
                       file="mine.yaml")
    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob:
        mine = experiment_pb2_grpc.ExperimentServiceStub(op)
        theirs = experiment_pb2_grpc.ExperimentServiceStub(bob)
        x = mine.CreateExperiment(experiment_pb2.CreateExperimentRequest(
            study=study_to_proto(study)), timeout=60).experiment
        try:
            for call, request in (
                    (theirs.GetExperiment, experiment_pb2.GetExperimentRequest(name=x.name)),
                    (theirs.CancelExperiment,
                     experiment_pb2.CancelExperimentRequest(name=x.name)),
                    (theirs.GetExperimentReport,
                     experiment_pb2.GetExperimentReportRequest(name=x.name))):
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=30)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND, call
            with pytest.raises(grpc.RpcError) as err:
                next(iter(theirs.WatchExperiment(
                    experiment_pb2.WatchExperimentRequest(name=x.name), timeout=30)))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            listed = theirs.ListExperiments(experiment_pb2.ListExperimentsRequest(), timeout=30)
            assert list(listed.experiments) == []
            got = mine.GetExperiment(experiment_pb2.GetExperimentRequest(name=x.name),
                                     timeout=30).experiment
            # Bob's cancel did nothing.
            assert got.state != experiment_pb2.EXPERIMENT_STATE_CANCELLED
        finally:
            mine.CancelExperiment(experiment_pb2.CancelExperimentRequest(name=x.name),
                                  timeout=60)


@pytest.mark.parametrize("view", ["ListLogSources", "TailLogs", "GetSnapshot",
                                  "WatchSnapshots", "GetCollectorStats", "QueryMetrics"])
def test_node_wide_views_answer_the_operator_only(mesh: Mesh, view: str) -> None:
    def call(channel: grpc.Channel) -> object:
        return {
            "ListLogSources": lambda: logger_pb2_grpc.LoggerServiceStub(channel).ListLogSources(
                logger_pb2.ListLogSourcesRequest(), timeout=30),
            "TailLogs": lambda: logger_pb2_grpc.LoggerServiceStub(channel).TailLogs(
                logger_pb2.TailLogsRequest(initial_lines=1), timeout=5),
            "GetSnapshot": lambda: monitor_pb2_grpc.MonitorServiceStub(channel).GetSnapshot(
                monitor_pb2.GetSnapshotRequest(), timeout=30),
            "WatchSnapshots": lambda: monitor_pb2_grpc.MonitorServiceStub(
                channel).WatchSnapshots(monitor_pb2.WatchSnapshotsRequest(), timeout=30),
            "GetCollectorStats": lambda: collector_pb2_grpc.CollectorServiceStub(
                channel).GetCollectorStats(collector_pb2.GetCollectorStatsRequest(), timeout=30),
            "QueryMetrics": lambda: collector_pb2_grpc.CollectorServiceStub(
                channel).QueryMetrics(collector_pb2.QueryMetricsRequest(
                    labels={"service": mesh.job_service}), timeout=30),
        }[view]

    with mesh.channel(mesh.operator) as op, mesh.channel(mesh.bob) as bob, \
            mesh.channel(mesh.job) as job:
        assert _code(call(bob)) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(call(job)) == grpc.StatusCode.PERMISSION_DENIED
        # TailLogs with no live line before its deadline ends DEADLINE_EXCEEDED: it was let in.
        assert _code(call(op)) in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_job_token_is_refused_by_every_method_but_report_and_push(mesh: Mesh) -> None:
    """An empty request body is valid for every message: what answers is the token's scope."""
    with mesh.channel(mesh.job) as job:
        codes = {m[0]: call_raw(job, m, b"", auth_metadata(mesh.job), timeout=10)
                 for m in methods(job) if m[0] not in JOB_METHODS}
    assert len(codes) >= 25, codes
    wrong = {p: c for p, c in codes.items() if c != grpc.StatusCode.PERMISSION_DENIED}
    assert not wrong, wrong


def test_a_job_token_pushes_for_its_own_service_only_and_its_owner_reads_it(mesh: Mesh) -> None:
    with mesh.channel(mesh.job) as job, mesh.channel(mesh.operator) as op:
        acks = _push_logs(job, mesh.job, "sidecar", 1, mesh.job_service, "from the job")
        assert acks[0].accepted_lines == 1
        assert "from the job" in _query(op, mesh.job_service)
        with pytest.raises(grpc.RpcError) as err:
            _push_logs(job, mesh.job, "sidecar", 2, "services/someoneelse", "spoofed")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "own service" in (err.value.details() or "")
        assert "spoofed" not in _query(op, "services/someoneelse")

"""One trace from CreateService to READY: server spans, TRACEPARENT into the job, job spans.

The spans travel for real: the server and the job export by OTLP/gRPC to the collector's
OTLP TraceService (mounted with `create_server` on its own port), and the test reads them back
from the collector's trace store. Run on the local scheduler and on real SLURM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from aifb.collector import CollectorConfig, start_collector
from aifb.collector.app import CollectorApp
from aifb.collector.model import SpanRecord
from aifb.mesh.auth import Authenticator
from aifb.mesh.config import MeshConfig
from aifb.mesh.server import MeshServer, create_server
from aifb.server.embedded import ThreadedServer
from tests.fixtures import SlurmCluster
from tests.fixtures.server import server_config
from tests.integration.flow import S, create, state_name, wait_for_state

pytestmark = pytest.mark.integration

CREATE_RPC = "/aifb.v1.ServerService/CreateService"
REPORT_RPC = "/aifb.v1.ServerService/ReportServiceEvent"


@dataclass
class Traced:
    server: ThreadedServer
    collector: CollectorApp
    otlp: MeshServer
    provider: TracerProvider

    def spans(self, trace_id: str) -> list[SpanRecord]:
        return self.collector.ingest.traces.get(trace_id)


def _traced_server(home: Path, scheduler: str) -> Iterator[Traced]:
    provider = TracerProvider(resource=Resource.create({"service.name": "aifb-server"}))
    srv = ThreadedServer(server_config(home, scheduler=scheduler), tracer_provider=provider)
    srv.start()
    collector = srv.run(start_collector(CollectorConfig(metrics_listen="")))
    otlp = srv.run(create_server(MeshConfig(listen="127.0.0.1:0"), collector.bindings,
                                 authenticator=Authenticator(None, enabled=False),
                                 listen="127.0.0.1:0"))
    endpoint = f"http://127.0.0.1:{otlp.port}"
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=200))
    assert srv.app is not None
    srv.app.manager.otlp_endpoint = endpoint  # what `mesh.otlp_endpoint` sets at start
    try:
        yield Traced(srv, collector, otlp, provider)
    finally:
        srv.cancel_all()
        provider.shutdown()
        srv.run(otlp.stop(0))
        srv.run(collector.stop())
        srv.stop()


@pytest.fixture
def traced_local(aifb_home: Path) -> Iterator[Traced]:
    yield from _traced_server(aifb_home, "local")


@pytest.fixture
def traced_slurm(slurm_cluster: SlurmCluster, aifb_home: Path) -> Iterator[Traced]:
    yield from _traced_server(aifb_home, "slurm")


def _wait_for_spans(t: Traced, trace_id: str, names: set[str], reports: int,
                    timeout: float = 30.0) -> list[SpanRecord]:
    """The trace once every name and `reports` ReportServiceEvent spans have arrived (each
    process exports in its own batches, so they come in any order)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = t.spans(trace_id)
        done = (names <= {s.name for s in spans}
                and sum(s.name == REPORT_RPC for s in spans) >= reports)
        if done or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def _one(spans: list[SpanRecord], name: str, **attrs: str) -> SpanRecord:
    found = [s for s in spans if s.name == name
             and all(s.attributes.get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, f"{name} {attrs}: {[(s.name, s.attributes) for s in spans]}"
    return found[0]


def _assert_one_trace_create_to_ready(t: Traced) -> None:
    stub = t.server.stub()
    svc = create(stub, "redis", port="0")
    assert len(svc.trace_id) == 32 and int(svc.trace_id, 16) != 0
    ready = wait_for_state(stub, svc.name, {S.SERVICE_STATE_READY}, timeout=90)
    assert state_name(ready.state) == "READY", ready.state_message
    stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
    final = wait_for_state(stub, svc.name, set(), timeout=60)
    assert state_name(final.state) == "STOPPED", final.state_message

    wanted = {CREATE_RPC, "aifb.server.create_service", "aifb.server.render",
              "aifb.server.submit", "aifb.job.starting", "aifb.job.ready", "aifb.job.exited",
              REPORT_RPC}
    spans = _wait_for_spans(t, svc.trace_id, wanted, reports=3)
    assert wanted <= {s.name for s in spans}, sorted(s.name for s in spans)
    assert {s.trace_id for s in spans} == {svc.trace_id}
    by_id = {s.span_id: s for s in spans}

    rpc = _one(spans, CREATE_RPC)
    assert rpc.parent_span_id == ""  # the root: nothing before CreateService in this test
    create_span = _one(spans, "aifb.server.create_service")
    assert create_span.parent_span_id == rpc.span_id
    assert create_span.attributes["aifb.service"] == svc.name.removeprefix("services/")
    assert _one(spans, "aifb.server.render").parent_span_id == create_span.span_id
    submit = _one(spans, "aifb.server.submit")
    assert submit.parent_span_id == create_span.span_id
    assert submit.attributes["aifb.job_id"] == svc.job.job_id

    # Inside the job: TRACEPARENT made the job's spans children of the create span, and the
    # job's service name says they came from the job's process, not the server.
    job_spans = {}
    for what in ("starting", "ready", "exited"):
        span = _one(spans, f"aifb.job.{what}")
        assert span.parent_span_id == create_span.span_id, (what, span)
        assert span.service_name == "aifb-job"
        job_spans[what] = span
    assert (job_spans["starting"].start_ns <= job_spans["ready"].start_ns
            <= job_spans["exited"].start_ns)

    # Each report reached the server inside the job's span: READY is part of the same trace.
    reports = [s for s in spans if s.name == REPORT_RPC]
    parents = {by_id[s.parent_span_id].name for s in reports if s.parent_span_id in by_id}
    assert parents == {"aifb.job.starting", "aifb.job.ready", "aifb.job.exited"}, parents


def test_create_to_ready_is_one_trace_on_the_local_scheduler(traced_local: Traced) -> None:
    _assert_one_trace_create_to_ready(traced_local)


@pytest.mark.slurm
def test_create_to_ready_is_one_trace_on_slurm(traced_slurm: Traced) -> None:
    _assert_one_trace_create_to_ready(traced_slurm)

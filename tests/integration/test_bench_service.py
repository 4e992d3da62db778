"""BenchmarkService over real gRPC: http load against a real nginx (by URL, and by a service
deployed through the server), live progress, reports, idempotency, ownership, cancel, and the
clear errors and FAILED runs that bad input and bad targets produce."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pyarrow.parquet as pq
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aifb.mesh.auth import TokenStore
from aifb.mesh.errors import FailedPrecondition, InvalidArgument
from aifb.mesh.tracing import make_tracer_provider
from aifb.v1 import client_pb2 as C
from aifb.v1 import server_pb2 as S
from tests.integration.bench_harness import (
    bench_mesh,
    create,
    create_error,
    failing_http_server,
    follow,
    seconds,
)
from tests.integration.flow import ready_service, wait_for_state

if TYPE_CHECKING:
    from tests.fixtures.nginx import NginxServer

pytestmark = pytest.mark.integration


def _report(stub: object, name: str, fmt: int) -> C.GetBenchmarkReportResponse:
    return stub.GetBenchmarkReport(  # type: ignore[attr-defined, no-any-return]
        C.GetBenchmarkReportRequest(name=name, format=fmt), timeout=30)


def test_closed_loop_by_url_streams_progress_and_writes_every_report_format(
        nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        kinds = {w.name: w for w in stub.ListWorkloads(C.ListWorkloadsRequest()).workloads}
        assert "connections" in json.loads(kinds["http"].parameters_json_schema)["properties"]
        run = create(stub, workload="http", url=nginx.base_url, parameters={"connections": "4"},
                     load=C.LoadProfile(mode=C.LOAD_MODE_CLOSED, concurrency=4,
                                        duration=seconds(2)), request_id="closed-1")
        assert run.state == C.BENCHMARK_STATE_PENDING and run.resolved_url == nginx.base_url
        final, msgs = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        assert not msgs[0].HasField("progress")  # the first message is the snapshot
        progress = [m.progress for m in msgs if m.HasField("progress")]
        assert len(progress) >= 2 and sum(p.requests for p in progress) > 100
        assert all(p.latency_p99_seconds >= p.latency_p50_seconds > 0 for p in progress
                   if p.requests)
        # Idempotent: the same request_id names the same run.
        again = create(stub, workload="http", url=nginx.base_url,
                       load=C.LoadProfile(concurrency=4), request_id="closed-1")
        assert again.name == run.name

        doc = json.loads(_report(stub, run.name, C.REPORT_FORMAT_JSON).content)
        figures = doc["figures"]
        assert figures["counters"]["errors"] == 0
        assert figures["counters"]["completed"] == figures["histograms"]["latency"]["count"]
        assert figures["histograms"]["latency"]["p99"] >= figures["histograms"]["latency"]["p50"]
        assert doc["configuration"]["load"]["concurrency"] == 4
        assert doc["node"]["hostname"] == socket.gethostname() and doc["node"]["versions"]
        assert len(doc["series"]) >= 2
        resp = _report(stub, run.name, C.REPORT_FORMAT_PARQUET)
        table = pq.read_table(io.BytesIO(resp.content))
        assert table.num_rows == len(doc["series"])
        assert table.column("completed").to_pylist() == [r["completed"] for r in doc["series"]]
        html = _report(stub, run.name, C.REPORT_FORMAT_HTML).content.decode()
        assert html.count("<svg") >= 3 and "Latency CDF" in html
        md = _report(stub, run.name, C.REPORT_FORMAT_MARKDOWN)
        assert "![latency_cdf.svg](latency_cdf.svg)" in md.content.decode()
        assert (Path(md.directory) / "latency_cdf.svg").exists()
        assert (Path(md.directory) / "report.html").exists()


def test_open_loop_against_a_service_deployed_through_the_server_reports_recipe_and_script(
        aifb_home: Path) -> None:
    spans = InMemorySpanExporter()
    provider = make_tracer_provider("aifb-test", exporters=(spans,))
    with bench_mesh(aifb_home, tracer_provider=provider) as mesh:
        server = mesh.stub()
        svc = ready_service(server, "nginx", port="0")
        stub = mesh.bench_stub()
        run = create(stub, workload="http", service=svc.name,
                     load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=200,
                                        duration=seconds(3.5), warmup=seconds(0.5)))
        assert run.service == svc.name and run.resolved_url.startswith("http://")
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        doc = json.loads(_report(stub, run.name, C.REPORT_FORMAT_JSON).content)
        f = doc["figures"]
        assert f["target_rate"] == pytest.approx(200)
        assert f["achieved_rate"] == pytest.approx(200, rel=0.02)
        assert f["counters"]["errors"] == 0 and f["counters"]["dropped"] == 0
        assert "lag" in f["histograms"]
        # Once ended, the run's list entry shows its figures, not its last (half) second.
        listed = stub.ListBenchmarks(C.ListBenchmarksRequest(), timeout=30).benchmarks
        (entry,) = [b for b in listed if b.name == run.name]
        assert entry.last_progress.achieved_rate == pytest.approx(f["achieved_rate"])
        assert entry.last_progress.requests == f["counters"]["completed"]
        assert doc["service"]["name"] == svc.name and doc["service"]["recipe"] == "nginx"
        assert "nginx" in doc["recipe"]["source_yaml"]
        assert doc["batch_script"].startswith("#!") and "#SBATCH" in doc["batch_script"]
        assert "AIFB_REPORT_TOKEN" not in doc["batch_script"] or (
            "<generated at create time>" in doc["batch_script"])
        # The run is one span tree, linked to the service's trace.
        provider.force_flush()
        rid = run.name
        mine = [sp for sp in spans.get_finished_spans()
                if sp.name.startswith("aifb.bench.")]
        (root,) = [sp for sp in mine if sp.name == "aifb.bench.run"]
        assert root.attributes is not None and root.attributes["aifb.benchmark"] == rid
        assert [format(link.context.trace_id, "032x") for link in root.links] == [
            svc.trace_id]
        children = {sp.name for sp in mine if sp.parent is not None
                    and sp.parent.span_id == root.context.span_id}
        assert children == {"aifb.bench.load", "aifb.bench.store"}
        # Under the load span, one span per phase, in order and as long as the plan made it.
        (load,) = [sp for sp in mine if sp.name == "aifb.bench.load"]
        phases = sorted((sp for sp in mine if sp.parent is not None
                         and sp.parent.span_id == load.context.span_id),
                        key=lambda sp: sp.start_time or 0)
        assert [sp.name for sp in phases] == ["aifb.bench.prepare", "aifb.bench.warmup",
                                              "aifb.bench.measure"]
        assert all(sp.context.trace_id == root.context.trace_id for sp in phases)
        warm = phases[1]
        assert warm.end_time is not None and warm.start_time is not None
        assert (warm.end_time - warm.start_time) / 1e9 == pytest.approx(0.5, abs=1e-3)
        assert final.trace_id == format(root.context.trace_id, "032x")
        # A service that is not READY is refused.
        server.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
        svc = wait_for_state(server, svc.name, set())  # until terminal
        err = create_error(stub, workload="http", service=svc.name,
                           load=C.LoadProfile(concurrency=1))
        assert isinstance(err, FailedPrecondition) and "not READY" in err.message


def test_samples_parquet_has_one_row_per_measured_request_and_says_when_capped(
        nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        run = create(stub, workload="http", url=nginx.base_url,
                     load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=100,
                                        duration=seconds(2), warmup=seconds(0.5),
                                        record_samples=True))
        assert run.load.record_samples
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = _report(stub, run.name, C.REPORT_FORMAT_JSON)
        doc = json.loads(report.content)
        table = pq.read_table(Path(report.directory) / "samples.parquet")
        completed = doc["figures"]["counters"]["completed"]
        assert completed > 100
        phases = [str(p) for p in table.column("phase").to_pylist()]
        assert phases.count("measure") == completed
        assert table.num_rows == completed + phases.count("warmup")
        assert doc["samples"] == {"rows": table.num_rows, "requests": table.num_rows,
                                  "limit": 1_000_000, "capped": False,
                                  "file": "samples.parquet"}
        assert all(table.column("ok").to_pylist())
        assert set(table.column("status").to_pylist()) == {200}
        latency = table.column("latency_s").to_pylist()
        assert all(s is not None and s > 0 for s in table.column("service_s").to_pylist())
        assert max(latency) == pytest.approx(
            max(doc["figures"]["histograms"]["latency"]["max"],
                max(r["latency_max_s"] for r in doc["series"])), rel=0.01)

        capped = create(stub, workload="http", url=nginx.base_url,
                        load=C.LoadProfile(concurrency=2, max_requests=80,
                                           duration=seconds(5), record_samples=True,
                                           max_samples=50))
        final, _ = follow(stub, capped.name)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        report = _report(stub, capped.name, C.REPORT_FORMAT_JSON)
        doc = json.loads(report.content)
        assert doc["samples"]["capped"] and doc["samples"]["rows"] == 50
        assert doc["samples"]["requests"] == 80
        assert pq.read_table(Path(report.directory) / "samples.parquet").num_rows == 50
        md = _report(stub, capped.name, C.REPORT_FORMAT_MARKDOWN).content.decode()
        assert "capped: the first 50 of 80 requests" in md
        # Without the option, no file.
        plain = create(stub, workload="http", url=nginx.base_url,
                       load=C.LoadProfile(concurrency=1, max_requests=5, duration=seconds(5)))
        follow(stub, plain.name)
        report = _report(stub, plain.name, C.REPORT_FORMAT_JSON)
        assert json.loads(report.content)["samples"] is None
        assert not (Path(report.directory) / "samples.parquet").exists()


def test_bad_input_is_refused_with_the_field_named(nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        ok = {"workload": "http", "url": nginx.base_url,
              "load": C.LoadProfile(concurrency=1, duration=seconds(1))}
        cases = [
            ({"workload": "no-such-thing"}, "workload", "unknown workload"),
            ({"url": "ftp://example.org/"}, "url", "http://host"),
            ({"url": "http://"}, "url", "bad url"),
            ({"load": C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=-5)}, "load.rate",
             "load.rate"),
            ({"load": C.LoadProfile(concurrency=-1)}, "load.concurrency", "concurrency"),
            ({"load": C.LoadProfile(concurrency=1, slo={"p99": "fast"})}, "load.slo.p99",
             "duration"),
            ({"parameters": {"connections": "lots"}}, "params.connections", "connections"),
            ({"parameters": {"nope": "1"}}, "params.nope", "nope"),
            ({"request_id": "has space"}, "request_id", "request_id"),
        ]
        for change, field, text in cases:
            err = create_error(stub, **{**ok, **change})
            assert isinstance(err, InvalidArgument), (change, err)
            assert getattr(err, "field", "") == field, (change, err.metadata)
            assert text in err.message, (change, err.message)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetBenchmark(C.GetBenchmarkRequest(name="benchmarks/NOPE!"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_target_and_a_target_answering_500_end_failed_with_the_reason(
        aifb_home: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with bench_mesh(aifb_home) as mesh, failing_http_server() as broken:
        stub = mesh.bench_stub()
        run = create(stub, workload="http", url=dead,
                     load=C.LoadProfile(concurrency=1, duration=seconds(2)))
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_FAILED
        assert "unreachable" in final.state_message and dead in final.state_message

        run = create(stub, workload="http", url=broken,
                     load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=100,
                                        duration=seconds(3)))
        final, _ = follow(stub, run.name)
        assert final.state == C.BENCHMARK_STATE_FAILED
        assert "error budget exceeded" in final.state_message
        assert "status_500" in final.state_message
        doc = json.loads(_report(stub, run.name, C.REPORT_FORMAT_JSON).content)
        assert doc["figures"]["errors_by_kind"]["status_500"] > 0


def test_runs_are_private_listed_in_pages_and_cancel_keeps_what_was_measured(
        nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        names = [create(stub, workload="http", url=nginx.base_url,
                        load=C.LoadProfile(concurrency=1, max_requests=20,
                                           duration=seconds(5)), labels={"batch": "a"}).name
                 for _ in range(3)]
        for name in names:
            assert follow(stub, name)[0].state == C.BENCHMARK_STATE_SUCCEEDED
        first = stub.ListBenchmarks(C.ListBenchmarksRequest(page_size=2), timeout=10)
        rest = stub.ListBenchmarks(C.ListBenchmarksRequest(
            page_size=2, page_token=first.next_page_token), timeout=10)
        assert [b.name for b in [*first.benchmarks, *rest.benchmarks]] == names
        assert not rest.next_page_token
        only = stub.ListBenchmarks(C.ListBenchmarksRequest(filter="state=FAILED"), timeout=10)
        assert not only.benchmarks

        other = TokenStore(aifb_home).issue("someone-else")
        theirs = mesh.bench_stub(token=other)
        assert not theirs.ListBenchmarks(C.ListBenchmarksRequest(), timeout=10).benchmarks
        with pytest.raises(grpc.RpcError) as info:
            theirs.GetBenchmark(C.GetBenchmarkRequest(name=names[0]), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        long = create(stub, workload="http", url=nginx.base_url,
                      load=C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=50,
                                         duration=seconds(60)))
        for msg in stub.WatchBenchmark(C.WatchBenchmarkRequest(name=long.name), timeout=30):
            if msg.HasField("progress") and msg.progress.requests:
                break
        start = time.monotonic()
        done = stub.CancelBenchmark(C.CancelBenchmarkRequest(name=long.name),
                                    timeout=30).benchmark
        assert time.monotonic() - start < 15
        assert done.state == C.BENCHMARK_STATE_CANCELLED and "cancelled" in done.state_message
        doc = json.loads(_report(stub, long.name, C.REPORT_FORMAT_JSON).content)
        assert doc["figures"]["counters"]["completed"] > 0


def test_a_sweep_runs_its_steps_and_reports_percentiles_against_rate(
        nginx: NginxServer, aifb_home: Path) -> None:
    with bench_mesh(aifb_home) as mesh:
        stub = mesh.bench_stub()
        run = create(stub, workload="http", url=nginx.base_url, parameters={"connections": "8"},
                     load=C.LoadProfile(mode=C.LOAD_MODE_SWEEP, concurrency=8,
                                        duration=seconds(0.8), slo={"p99": "2s"}))
        final, msgs = follow(stub, run.name, timeout=120)
        assert final.state == C.BENCHMARK_STATE_SUCCEEDED, final.state_message
        seconds_seen = [int(m.progress.extra["total_requests"]) for m in msgs
                        if m.HasField("progress")]
        assert seconds_seen == sorted(seconds_seen)  # one continuous run across the steps
        doc = json.loads(_report(stub, run.name, C.REPORT_FORMAT_JSON).content)
        steps = doc["sweep"]["steps"]
        assert [s["name"] for s in steps[:2]] == ["synchronous", "throughput"]
        assert len(steps) >= 3 and all(s["name"] == "rate" for s in steps[2:])
        rates = [s["target_rate"] for s in steps[2:]]
        assert rates == sorted(rates) and rates[0] > steps[0]["achieved_rate"]
        html = _report(stub, run.name, C.REPORT_FORMAT_HTML).content.decode()
        assert "Latency percentiles against rate" in html

"""`aifb demo`: start the embedded mesh, deploy nginx through the server, benchmark it through
the BenchmarkService with live progress, print the summary and the report's path, tear down."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer
from google.protobuf.duration_pb2 import Duration
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from aifb.cli.context import CliState, handle_errors, state_of
from aifb.mesh.errors import FailedPrecondition
from aifb.v1 import client_pb2 as C
from aifb.v1 import client_pb2_grpc, server_pb2_grpc
from aifb.v1 import server_pb2 as S

TERMINAL = {S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED}


def demo(
    ctx: typer.Context,
    duration: float = typer.Option(10.0, help="Seconds of load."),
    rate: float = typer.Option(200.0, help="Target requests per second (open loop)."),
    scheduler: str = typer.Option("auto", help="auto (SLURM if present, else local), local, "
                                  "slurm."),
    keep: bool = typer.Option(False, help="Keep the demo's state directory."),
) -> None:
    """Deploy a real nginx through the embedded server, benchmark it, print the summary."""
    # Here, not at the top: every `aifb` command imports this module.
    from aifb.cli.host.threaded import ThreadedMesh
    from aifb.server.embedded import embedded_config

    state = state_of(ctx)
    with handle_errors(state):
        home = Path(tempfile.mkdtemp(prefix="aifb-demo-"))
        config = embedded_config(home, scheduler=scheduler, poll_interval_seconds=0.2)
        con = state.err
        with ThreadedMesh(config) as mesh:
            assert mesh.app is not None
            con.print(f"[bold]aifb demo[/]: embedded mesh on {mesh.address} "
                      f"(ServerService + BenchmarkService; scheduler: "
                      f"{mesh.app.scheduler.name}; state in {home})")
            stub = mesh.stub()
            svc = _deploy(stub, state)
            try:
                doc, run_dir = _benchmark(mesh.bench_stub(), svc.name, duration, rate, state)
            finally:
                stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
                for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=60):
                    svc = msg.service
                con.print(f"{svc.name} is "
                          f"{S.ServiceState.Name(svc.state).removeprefix('SERVICE_STATE_')}")
        reports = _keep_reports(state, run_dir)
        figures = doc["figures"]
        summary = {**figures, "benchmark": doc["benchmark"]["name"],
                   "report": str(reports / "report.html"),
                   "latency_ms": {k: v * 1000 for k, v in
                                  figures["histograms"].get("latency", {}).items()
                                  if k.startswith("p")}}
        summary["histograms"] = {k: {kk: vv for kk, vv in h.items() if kk != "hdr"}
                                 for k, h in figures["histograms"].items()}
        state.emit(summary, lambda: _print(state, doc, reports))
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
        if figures["state"] != "SUCCEEDED":
            raise typer.Exit(1)


def _deploy(stub: server_pb2_grpc.ServerServiceStub, state: CliState) -> S.Service:
    con = state.err
    svc: S.Service = stub.CreateService(S.CreateServiceRequest(
        recipe="nginx", parameters={"port": "0"}, request_id="demo"), timeout=60).service
    with con.status(f"deploying nginx as {svc.name} ...") as status:
        for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=180):
            svc = msg.service
            status.update(f"{svc.name}: "
                          f"{S.ServiceState.Name(svc.state).removeprefix('SERVICE_STATE_')}")
            if svc.state == S.SERVICE_STATE_READY or svc.state in TERMINAL:
                break
    if svc.state != S.SERVICE_STATE_READY:
        raise FailedPrecondition(f"nginx did not become ready: {svc.state_message}")
    url = svc.endpoint.url or f"http://{svc.endpoint.host}:{svc.endpoint.port}/"
    con.print(f"nginx is READY at {url} (job {svc.job.scheduler}:{svc.job.job_id})")
    return svc


def _benchmark(bench: client_pb2_grpc.BenchmarkServiceStub, service: str, duration: float,
               rate: float, state: CliState) -> tuple[dict[str, Any], Path]:
    """A constant-rate run against the service through BenchmarkService, followed live."""
    d = Duration()
    d.FromNanoseconds(round((duration + 1.0) * 1e9))
    load = C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=rate, duration=d,
                         warmup=Duration(seconds=1), error_budget=0.05)
    run = bench.CreateBenchmark(C.CreateBenchmarkRequest(
        workload="http", service=service, parameters={"connections": "16"}, load=load,
        request_id="demo"), timeout=30).benchmark
    state.err.print(f"benchmarking {service} as {run.name}: {rate:.0f} req/s for "
                    f"{duration:g}s after 1s of warm-up")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=state.err, transient=True) as bar:
        task = bar.add_task("load", total=duration + 1.0)
        for msg in bench.WatchBenchmark(C.WatchBenchmarkRequest(name=run.name),
                                        timeout=duration + 120):
            run = msg.benchmark
            if msg.HasField("progress"):
                p = msg.progress
                bar.update(task, completed=p.elapsed.seconds + p.elapsed.nanos / 1e9,
                           description=f"{p.achieved_rate:6.0f} req/s  p99 "
                           f"{p.latency_p99_seconds * 1000:6.2f} ms  errors "
                           f"{int(p.extra.get('total_errors', 0))}")
    for fmt in (C.REPORT_FORMAT_HTML, C.REPORT_FORMAT_MARKDOWN, C.REPORT_FORMAT_PARQUET):
        bench.GetBenchmarkReport(C.GetBenchmarkReportRequest(name=run.name, format=fmt),
                                 timeout=60)
    resp = bench.GetBenchmarkReport(C.GetBenchmarkReportRequest(
        name=run.name, format=C.REPORT_FORMAT_JSON), timeout=60)
    return json.loads(resp.content), Path(resp.directory)


def _keep_reports(state: CliState, run_dir: Path) -> Path:
    """Copy the run's reports out of the demo's temporary home into the user's aifb home."""
    dest = state.config.mesh.home_path / "demo-reports" / run_dir.name
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copytree(run_dir, dest, dirs_exist_ok=True)
    return dest


def _print(state: CliState, doc: dict[str, Any], reports: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{doc['benchmark']['name']} ({doc['figures']['state']})", box=None,
                  show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    from aifb.client.report.pages import summary_rows

    for key, value in summary_rows(doc):
        table.add_row(key, Text(value))
    state.console.print(table)
    state.console.print(f"report: {reports / 'report.html'} (also report.md, report.json, "
                        "series.parquet)")

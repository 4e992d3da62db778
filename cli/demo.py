"""`aifb demo`: start the embedded mesh, deploy nginx through the server, load it, tear down."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import typer
from rich.table import Table

from aifb.cli.context import handle_errors, state_of
from aifb.mesh.errors import FailedPrecondition
from aifb.server.embedded import ThreadedServer, embedded_config
from aifb.v1 import server_pb2 as S

TERMINAL = {S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED}


def demo(
    ctx: typer.Context,
    duration: float = typer.Option(10.0, help="Seconds of load."),
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
            latencies, errors = _load(url, duration)
            stub.DeleteService(S.DeleteServiceRequest(name=svc.name), timeout=30)
            for msg in stub.WatchService(S.WatchServiceRequest(name=svc.name), timeout=60):
                svc = msg.service
            con.print(f"{svc.name} is "
                      f"{S.ServiceState.Name(svc.state).removeprefix('SERVICE_STATE_')}")
        _summary(state.console, latencies, errors, duration)
        if not keep:
            import shutil
            shutil.rmtree(home, ignore_errors=True)


def _load(url: str, duration: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + duration
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                ok = client.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok
    return latencies, errors


def _summary(console: object, latencies: list[float], errors: int, duration: float) -> None:
    from rich.console import Console

    assert isinstance(console, Console)
    lat = sorted(latencies)

    def pct(p: float) -> str:
        return f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.2f} ms" if lat else "-"

    table = Table(title="closed loop, 1 user", box=None, header_style="bold")
    for col in ("requests", "errors", "rate", "p50", "p99", "max"):
        table.add_column(col)
    table.add_row(str(len(lat)), str(errors), f"{len(lat) / duration:.0f}/s", pct(0.5),
                  pct(0.99), pct(1.0))
    console.print(table)

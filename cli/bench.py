"""`aifb bench ...`: run, watch, report, compare, list, cancel, workloads."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import typer
from google.protobuf.duration_pb2 import Duration
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from aifb.cli.context import CliState, handle_errors, state_of, to_dict
from aifb.cli.params import parse_params
from aifb.client.runs.options import parse_duration
from aifb.mesh.channel import raise_for_rpc_error
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from aifb.v1 import client_pb2_grpc

app = typer.Typer(help="Drive load against a service or a URL and report what it saw.",
                  no_args_is_help=True)

_PROFILES = {"sweep": C.LOAD_MODE_SWEEP, "ramp": C.LOAD_MODE_RAMP, "step": C.LOAD_MODE_STEP,
             "constant": C.LOAD_MODE_CONSTANT, "poisson": C.LOAD_MODE_POISSON,
             "closed": C.LOAD_MODE_CLOSED, "trace": C.LOAD_MODE_TRACE}
_FORMATS = {"json": C.REPORT_FORMAT_JSON, "md": C.REPORT_FORMAT_MARKDOWN,
            "markdown": C.REPORT_FORMAT_MARKDOWN, "html": C.REPORT_FORMAT_HTML,
            "parquet": C.REPORT_FORMAT_PARQUET}
_SUFFIX = {"json": "json", "md": "md", "markdown": "md", "html": "html", "parquet": "parquet"}
_SEED_MOD = 2 ** 63  # a workload's seed is >= 0: a negative --seed is taken modulo this


def _stub(state: CliState) -> client_pb2_grpc.BenchmarkServiceStub:
    return client_pb2_grpc.BenchmarkServiceStub(state.channel())


def _name(run: str) -> str:
    return run if run.startswith("benchmarks/") else f"benchmarks/{run}"


def _duration(text: str, flag: str) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(parse_duration(text, field=flag) * 1e9))
    return d


def state_text(state: int) -> str:
    return C.BenchmarkState.Name(state).removeprefix("BENCHMARK_STATE_")


def _watch(state: CliState, name: str) -> Iterator[C.WatchBenchmarkResponse]:
    try:
        yield from _stub(state).WatchBenchmark(C.WatchBenchmarkRequest(name=name))
    except grpc.RpcError as exc:
        raise_for_rpc_error(exc)


def _follow(state: CliState, name: str) -> C.Benchmark:
    """Stream progress (a rich bar on stderr, or JSON lines with --output json) until the run
    is terminal; returns its final record."""
    final: C.Benchmark | None = None
    if state.output.value == "json":
        for msg in _watch(state, name):
            final = msg.benchmark
            if msg.HasField("progress"):
                sys.stderr.write(json.dumps(to_dict(msg.progress), sort_keys=True) + "\n")
        assert final is not None
        return final
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=state.err, transient=False) as bar:
        task = bar.add_task(f"{name}: starting", total=None)
        for msg in _watch(state, name):
            final = msg.benchmark
            total = final.load.duration.seconds + final.load.duration.nanos / 1e9
            if total and final.load.mode != C.LOAD_MODE_SWEEP:
                bar.update(task, total=total)
            if msg.HasField("progress"):
                p = msg.progress
                bar.update(task, completed=p.elapsed.seconds + p.elapsed.nanos / 1e9,
                           description=(
                               f"{state_text(final.state):<9} {p.achieved_rate:8.1f} req/s"
                               + (f" (target {p.target_rate:.0f})" if p.target_rate else "")
                               + f"  p50 {p.latency_p50_seconds * 1000:7.2f} ms"
                               f"  p99 {p.latency_p99_seconds * 1000:7.2f} ms"
                               f"  errors {p.errors:<5} in flight {p.in_flight}"
                               + (f"  cancelled {p.extra['cancelled']:.0f}"
                                  if p.extra.get("cancelled") else "")))
            else:
                bar.update(task, description=f"{name}: {state_text(final.state)}")
    assert final is not None
    return final


def _workload_seed(state: CliState, workload: str, params: dict[str, str], seed: int) -> None:
    """--seed also seeds the workload's own draws (prompts, lengths, vectors) when it has a
    seed parameter and -p seed was not given: one seed, the same requests."""
    if "seed" in params:
        return
    resp = state.call(_stub(state).ListWorkloads, C.ListWorkloadsRequest())
    for kind in resp.workloads:
        if kind.name == workload and any(p.name == "seed" for p in kind.parameters):
            params["seed"] = str(seed % _SEED_MOD)


def _report(state: CliState, name: str, fmt: str) -> C.GetBenchmarkReportResponse:
    if fmt not in _FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r} (known: {', '.join(_FORMATS)})",
                              field="--format")
    resp: C.GetBenchmarkReportResponse = state.call(
        _stub(state).GetBenchmarkReport,
        C.GetBenchmarkReportRequest(name=name, format=_FORMATS[fmt]))
    return resp


def _print_summary(state: CliState, doc: dict[str, Any], directory: str) -> None:
    table = Table(title=doc["benchmark"]["name"], box=None, header_style="bold",
                  show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    from aifb.client.report.pages import summary_rows

    for key, value in summary_rows(doc):
        table.add_row(key, Text(value))
    state.console.print(table)
    for slo in doc["slo"]:
        verdict = {True: "met", False: "[red]BREACHED[/]", None: "no data"}[slo["met"]]
        state.console.print(f"SLO {slo['slo']}: {verdict}")
    state.console.print(f"report: {directory}/report.json (aifb bench report "
                        f"{doc['benchmark']['name'].removeprefix('benchmarks/')} --format html)")


def _finish(state: CliState, final: C.Benchmark) -> None:
    """Print the summary (or JSON) of a terminal run; exit 1 unless it SUCCEEDED."""
    if final.state in (C.BENCHMARK_STATE_SUCCEEDED, C.BENCHMARK_STATE_FAILED,
                       C.BENCHMARK_STATE_CANCELLED):
        resp = _report(state, final.name, "json")
        doc = json.loads(resp.content)
        out = {"benchmark": to_dict(final), "report": doc, "directory": resp.directory}
        state.emit(out, lambda: _print_summary(state, doc, resp.directory))
    if final.state != C.BENCHMARK_STATE_SUCCEEDED:
        state.fail(final.name, state_text(final.state), final.state_message)


@app.command()
def run(
    ctx: typer.Context,
    service: str = typer.Option("", help="Target service id (resolved through the server)."),
    url: str = typer.Option("", help="Target URL, e.g. http://127.0.0.1:8080/."),
    workload: str = typer.Option("http", help="Workload (see `aifb bench workloads`)."),
    rate: float = typer.Option(0.0, help="Requests per second (open loop; a ramp's end)."),
    concurrency: int = typer.Option(0, help="Concurrent users (closed loop; a sweep's max)."),
    duration: str = typer.Option("", help="How long: 60s, 2m, 500ms (per step in a sweep); "
                                 "default 10s, and for a trace replay the whole trace (a "
                                 "duration keeps the entries due before it)."),
    profile: str = typer.Option("", help="sweep, ramp, step, poisson, constant, closed or "
                                "trace."),
    start_rate: float = typer.Option(0.0, help="Ramp/step: the first rate."),
    start_users: int = typer.Option(0, help="Closed loop or ramp without --rate: users at the "
                                    "start, rising linearly to --concurrency over the "
                                    "duration."),
    trace: str = typer.Option("", help="--profile trace: the trace to replay (mooncake JSONL: "
                              "timestamp ms, input_length, output_length, hash_ids); the LLM "
                              "workloads take their prompts from it too."),
    time_scale: float = typer.Option(1.0, help="--profile trace: replay this many times "
                                     "faster (2: twice as fast)."),
    cancel_fraction: float = typer.Option(0.0, help="Cancel this fraction (0..1) of the "
                                          "requests, chosen from --seed, closing their "
                                          "connection; counted apart from errors."),
    cancel_after: str = typer.Option("0s", help="With --cancel-fraction: how long after its "
                                     "send a request is cancelled if still unanswered."),
    time_slice: str = typer.Option("0s", "--slice", help="The report's time slices: figures "
                                   "per slice of this many whole seconds (0s: about ten)."),
    step_rate: float = typer.Option(0.0, help="Step: the rate added each step."),
    step_duration: str = typer.Option("0s", help="Step: how long each step lasts."),
    warmup: str = typer.Option("0s", help="Excluded from statistics at the start."),
    cooldown: str = typer.Option("0s", help="Excluded from statistics at the end."),
    max_requests: int = typer.Option(0, help="Stop after this many requests (0: no bound)."),
    error_budget: float = typer.Option(0.0, help="Fraction of requests that may fail before "
                                       "the run FAILS (0: the service default, 5%)."),
    slo: list[str] = typer.Option([], "--slo", help="Objective, e.g. p99=50ms, errors=1%."),
    dataset: str = typer.Option("", help="Dataset file for LLM workloads (parameter "
                                "'dataset')."),
    param: list[str] = typer.Option([], "--param", "-p", help="Workload parameter KEY=VALUE."),
    label: list[str] = typer.Option([], "--label", "-l", help="Label KEY=VALUE."),
    engine: str = typer.Option("inprocess", help="inprocess or spark."),
    spark_master: str = typer.Option("", help="Spark master: local[2] or spark://host:7077."),
    partitions: int = typer.Option(0, help="Spark partitions (0: the master's parallelism)."),
    workers: int = typer.Option(1, help="In-process engine: worker processes generating the "
                                "load, one per core to use (the load is split between them "
                                "and their results merged exactly)."),
    samples: bool = typer.Option(False, "--samples", help="Record one row per request in "
                                 "samples.parquet beside the report (a sweep adds a step "
                                 "column, a Spark run a partition column)."),
    max_samples: int = typer.Option(0, help="With --samples: keep at most this many rows "
                                    "(0: 1,000,000)."),
    seed: int | None = typer.Option(None, help="Seed of every random choice: Poisson "
                                    "arrivals, cancelled requests, and the workload's prompts "
                                    "and lengths (its seed parameter, unless given): the same "
                                    "seed, the same requests."),
    spread: str = typer.Option(
        "", help="Over a replicated service's READY replicas (followed as they change): "
                 "round-robin (default) or least-outstanding."),
    request_id: str = typer.Option("", help="Idempotency key (default: a new random one)."),
    detach: bool = typer.Option(False, "--detach", help="Print the run's name and return."),
) -> None:
    """Start a run and follow it live; exits 1 unless it SUCCEEDED."""
    state = state_of(ctx)
    with handle_errors(state):
        if bool(service) == bool(url):
            raise InvalidArgument("give exactly one of --service or --url", field="--service")
        if profile and profile not in _PROFILES:
            raise InvalidArgument(f"unknown profile {profile!r} (known: "
                                  f"{', '.join(_PROFILES)})", field="--profile")
        if engine not in ("inprocess", "spark"):
            raise InvalidArgument("engine must be inprocess or spark", field="--engine")
        params = parse_params(param, "--param")
        if dataset:
            params["dataset"] = str(Path(dataset).expanduser().resolve())
        if seed is not None:
            _workload_seed(state, workload, params, seed)
        if trace:  # the service reads it: a path it can open wherever it runs from
            trace = str(Path(trace).expanduser().resolve())
        if not duration and profile != "trace":
            duration = "10s"
        load = C.LoadProfile(
            mode=_PROFILES.get(profile, C.LOAD_MODE_UNSPECIFIED), concurrency=concurrency,
            rate=rate, start_rate=start_rate, step_rate=step_rate,
            step_duration=_duration(step_duration, "--step-duration"),
            duration=_duration(duration, "--duration") if duration else None,
            warmup=_duration(warmup, "--warmup"),
            cooldown=_duration(cooldown, "--cooldown"), max_requests=max_requests,
            error_budget=error_budget, slo=parse_params(slo, "--slo"),
            engine=C.LOAD_ENGINE_SPARK if engine == "spark" else C.LOAD_ENGINE_INPROCESS,
            spark_master=spark_master, partitions=partitions, record_samples=samples,
            max_samples=max_samples, workers=workers, seed=seed,
            start_concurrency=start_users, trace_file=trace, time_scale=time_scale,
            cancel_fraction=cancel_fraction,
            cancel_after=_duration(cancel_after, "--cancel-after"),
            time_slice=_duration(time_slice, "--slice"))
        req = C.CreateBenchmarkRequest(workload=workload, parameters=params, load=load,
                                       labels=parse_params(label, "--label"),
                                       request_id=request_id or uuid.uuid4().hex,
                                       spread=spread)
        if service:
            req.service = service if service.startswith("services/") else f"services/{service}"
        else:
            req.url = url
        created = state.call(_stub(state).CreateBenchmark, req).benchmark
        if detach:
            state.emit(created, lambda: state.console.print(
                f"started {created.name}; follow with: aifb bench watch "
                f"{created.name.removeprefix('benchmarks/')}"))
            return
        _finish(state, _follow(state, created.name))


@app.command()
def watch(ctx: typer.Context, run: str = typer.Argument(..., help="Run id.")) -> None:
    """Follow a run live (rate, p50/p99, errors, per second) until it ends."""
    state = state_of(ctx)
    with handle_errors(state):
        _finish(state, _follow(state, _name(run)))


@app.command()
def report(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="Run id."),
    format_: str = typer.Option("json", "--format", "-f", help="html, json, md or parquet."),
    output_path: str = typer.Option("", "--out", "-o", help="Write here (default: stdout for "
                                    "text formats; the server's run folder is printed)."),
) -> None:
    """Fetch a finished run's report."""
    state = state_of(ctx)
    with handle_errors(state):
        resp = _report(state, _name(run), format_)
        if output_path:
            path = Path(output_path).expanduser()
            path.write_bytes(resp.content)
            state.err.print(f"wrote {path} ({len(resp.content)} bytes); plots and data in "
                            f"{resp.directory}")
        elif format_ == "parquet":  # the paths, one a line, unwrapped (for scripts)
            sys.stdout.write(str(Path(resp.directory) / "series.parquet") + "\n")
            per_request = Path(resp.directory) / "samples.parquet"
            if per_request.exists():  # the run recorded per-request rows (--samples)
                sys.stdout.write(str(per_request) + "\n")
        else:
            sys.stdout.write(resp.content.decode())
            if format_ in ("md", "markdown", "html"):
                state.err.print(f"plots in {resp.directory}")


@app.command()
def compare(
    ctx: typer.Context,
    run_a: str = typer.Argument(..., help="The baseline run."),
    run_b: str = typer.Argument(..., help="The run compared with it."),
) -> None:
    """Two runs side by side with the differences (b - a, and b / a)."""
    state = state_of(ctx)
    with handle_errors(state):
        docs = [json.loads(_report(state, _name(r), "json").content) for r in (run_a, run_b)]
        from aifb.client.report.compare import compare as compare_docs

        rows = compare_docs(docs[0], docs[1])

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("figure", docs[0]["benchmark"]["name"], docs[1]["benchmark"]["name"],
                        "diff", "b/a"):
                table.add_column(col, justify="right" if col != "figure" else "left")
            for r in rows:
                scale, unit = (1000.0, " ms") if r.unit == "s" else (1.0, "")

                def cell(v: float | None, scale: float = scale, unit: str = unit) -> str:
                    return "-" if v is None else f"{v * scale:,.3f}{unit}"

                ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
                table.add_row(r.figure, cell(r.a), cell(r.b), cell(r.diff), ratio)
            state.console.print(table)

        state.emit({"a": docs[0]["benchmark"]["name"], "b": docs[1]["benchmark"]["name"],
                    "rows": [r.to_dict() for r in rows]}, text)


@app.command("list")
def list_(
    ctx: typer.Context,
    filter_: str = typer.Option("", "--filter", help="e.g. 'state=FAILED workload=http'"),
) -> None:
    """List your runs (all pages)."""
    state = state_of(ctx)
    with handle_errors(state):
        runs: list[C.Benchmark] = state.all_pages(
            _stub(state).ListBenchmarks, C.ListBenchmarksRequest(filter=filter_), "benchmarks")

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("run", "state", "workload", "target", "created", "req/s", "p99",
                        "message"):
                table.add_column(col)
            for b in runs:
                p = b.last_progress
                table.add_row(b.name.removeprefix("benchmarks/"), state_text(b.state),
                              b.workload, Text(b.service or b.url),
                              time.strftime("%Y-%m-%d %H:%M:%S",
                                            time.localtime(b.create_time.seconds)),
                              f"{p.achieved_rate:.1f}", f"{p.latency_p99_seconds * 1000:.2f} ms",
                              Text(b.state_message.splitlines()[0] if b.state_message
                                   else ""))
            state.console.print(table)

        state.emit(list(runs), text)


@app.command()
def cancel(ctx: typer.Context, run: str = typer.Argument(..., help="Run id.")) -> None:
    """Stop a run; what it measured so far is kept."""
    state = state_of(ctx)
    with handle_errors(state):
        b = state.call(_stub(state).CancelBenchmark,
                       C.CancelBenchmarkRequest(name=_name(run))).benchmark
        state.emit(b, lambda: state.console.print(f"{b.name} is {state_text(b.state)}"))


@app.command()
def workloads(ctx: typer.Context) -> None:
    """The workloads this service runs, with their parameters."""
    state = state_of(ctx)
    with handle_errors(state):
        resp = state.call(_stub(state).ListWorkloads, C.ListWorkloadsRequest())

        def text() -> None:
            for w in resp.workloads:
                state.console.print(f"[bold]{w.name}[/]: {escape(w.description)}")
                for p in w.parameters:
                    default = f" (default {p.default_value})" if p.default_value else ""
                    state.console.print(f"  {p.name}: {p.type}{default} {p.description}",
                                        markup=False)

        state.emit(list(resp.workloads), text)

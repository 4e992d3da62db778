"""`aifb experiment ...`: run, list, get, watch, cancel, report, compare."""

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
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from aifb.cli.context import CliState, handle_errors, state_of, to_dict
from aifb.mesh.channel import raise_for_rpc_error
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import client_pb2 as C
from aifb.v1 import experiment_pb2 as E
from aifb.v1 import experiment_pb2_grpc

app = typer.Typer(help="Compare deployments: a study file expands into configurations x load "
                       "x repeats, each deployed, benchmarked and torn down, with one report.",
                  no_args_is_help=True)

_FORMATS = {"json": C.REPORT_FORMAT_JSON, "md": C.REPORT_FORMAT_MARKDOWN,
            "markdown": C.REPORT_FORMAT_MARKDOWN, "html": C.REPORT_FORMAT_HTML,
            "parquet": C.REPORT_FORMAT_PARQUET}


def _stub(state: CliState) -> experiment_pb2_grpc.ExperimentServiceStub:
    return experiment_pb2_grpc.ExperimentServiceStub(state.channel())


def _name(experiment: str) -> str:
    return experiment if experiment.startswith("experiments/") else f"experiments/{experiment}"


def state_text(state: int) -> str:
    return E.ExperimentState.Name(state).removeprefix("EXPERIMENT_STATE_")


def trial_state(state: int) -> str:
    return E.TrialState.Name(state).removeprefix("TRIAL_STATE_")


def _level(t: E.Trial) -> str:
    if t.level_kind == "rate" or t.level_kind == "search":
        return f"{t.level:g} req/s"
    if t.level_kind == "concurrency":
        return f"{t.level:g} users"
    return t.level_kind


def _counts(x: E.Experiment) -> str:
    done = sum(t.state in (E.TRIAL_STATE_SUCCEEDED, E.TRIAL_STATE_FAILED,
                           E.TRIAL_STATE_CANCELLED, E.TRIAL_STATE_SKIPPED) for t in x.trials)
    return f"{done}/{len(x.trials)} trials"


def _table(x: E.Experiment) -> Table:
    keys = {c.index: c.key for c in x.configurations}
    table = Table(title=f"{x.name} {state_text(x.state)} ({_counts(x)}): "
                        f"{escape(x.state_message)}", box=None, header_style="bold")
    for col in ("trial", "configuration", "workload", "level", "rep", "state", "req/s",
                "p99 ms", "SLO", "message"):
        table.add_column(col)
    for t in x.trials:
        f = t.figures
        done = t.state == E.TRIAL_STATE_SUCCEEDED
        table.add_row(str(t.name.rsplit("/", 1)[-1]), Text(keys.get(t.configuration, "")),
                      t.workload, _level(t), str(t.repeat), trial_state(t.state),
                      f"{f.achieved_rate:.1f}" if done else "",
                      f"{f.latency_p99_seconds * 1000:.2f}" if done else "",
                      ("met" if f.slo_met else "missed") if done else "",
                      Text(t.state_message.splitlines()[0] if t.state_message else ""))
    for s in x.searches:  # (a caption is markup: a key holds the user's values, e.g. "[/]")
        table.caption = (table.caption or "") + escape(
            f"\nsearch {keys.get(s.configuration, s.configuration)} / {s.workload} "
            f"repeat {s.repeat}: best {s.best_rate:g} req/s ({s.reason})")
    return table


def _in_file(exc: InvalidArgument, study: Path) -> InvalidArgument:
    """A refusal from the services (an unknown recipe parameter, a workload the benchmark
    service does not take) pointed at the study file's line, as the file's own errors are."""
    from aifb.mesh.yamlfile import load_yaml_file, path_loc

    where = exc.field.removeprefix("study.")
    pos = load_yaml_file(study).where(path_loc(where)) if where else None
    if pos is None:
        return exc
    return InvalidArgument(f"{study}:{pos[0]}:{pos[1]}: {exc.message}", field=exc.field)


def _watch(state: CliState, name: str, reconnect_s: float = 300.0
           ) -> Iterator[E.WatchExperimentResponse]:
    """The experiment's stream until it ends. An experiment outlives its server's restarts, and
    so does a watch: when the server goes away mid-stream, it is asked again (each second, for
    up to `reconnect_s`), and the stream resumes from the experiment's state then."""
    lost_at: float | None = None
    while True:
        try:
            for msg in _stub(state).WatchExperiment(E.WatchExperimentRequest(name=name)):
                lost_at = None
                yield msg
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise_for_rpc_error(exc)
            now = time.monotonic()
            if lost_at is None:
                lost_at = now
                state.err.print(f"lost the server ({escape(exc.details() or '')}); "
                                "reconnecting...")
            elif now - lost_at > reconnect_s:
                raise_for_rpc_error(exc)
            time.sleep(1.0)


def _follow(state: CliState, name: str) -> E.Experiment:
    """Live: the trials table on stderr (JSON lines with --output json) until terminal."""
    final: E.Experiment | None = None
    if state.output.value == "json":
        for msg in _watch(state, name):
            if msg.HasField("experiment"):  # a progress message leaves it out
                final = msg.experiment
            if final is None:
                continue
            line: dict[str, Any] = {"state": state_text(final.state),
                                    "trials": _counts(final)}
            if msg.trial:
                line.update(trial=msg.trial, progress=to_dict(msg.progress))
            sys.stderr.write(json.dumps(line, sort_keys=True) + "\n")
        assert final is not None
        return final
    from rich.live import Live

    with Live(console=state.err, refresh_per_second=4, transient=False) as live:
        for msg in _watch(state, name):
            if msg.HasField("experiment"):  # a progress message leaves it out
                final = msg.experiment
            if final is None:
                continue
            table = _table(final)
            if msg.trial and msg.HasField("progress"):
                p = msg.progress
                table.caption = (f"{msg.trial}: {p.achieved_rate:.1f} req/s  p99 "
                                 f"{p.latency_p99_seconds * 1000:.2f} ms  errors {p.errors}")
            live.update(table)
    assert final is not None
    return final


def _finish(state: CliState, final: E.Experiment) -> None:
    state.emit(final, lambda: state.console.print(_table(final)))
    if final.state != E.EXPERIMENT_STATE_SUCCEEDED:
        state.fail(final.name, state_text(final.state), final.state_message)


@app.command()
def run(
    ctx: typer.Context,
    study: Path = typer.Argument(..., help="The study file (YAML; schema: recipes/"
                                           "study-schema.json)."),
    watch_: bool = typer.Option(False, "--watch", "-w", help="Follow it live until it ends "
                                "(exit 1 unless it SUCCEEDED)."),
    label: list[str] = typer.Option([], "--label", help="KEY=VALUE, repeatable."),
    request_id: str = typer.Option("", "--request-id", help="Idempotency key (default: a new "
                                   "one); the same key returns the same experiment."),
) -> None:
    """Validate a study (nothing is deployed when anything is wrong), then start it."""
    state = state_of(ctx)
    with handle_errors(state):
        from aifb.cli.params import parse_params
        from aifb.experiment.convert import study_to_proto
        from aifb.experiment.study import load_study_file

        model = load_study_file(study)
        request = E.CreateExperimentRequest(
            study=study_to_proto(model),
            labels={**model.labels, **parse_params(label, "--label")},
            request_id=request_id or uuid.uuid4().hex)
        try:
            x = state.call(_stub(state).CreateExperiment, request).experiment
        except InvalidArgument as exc:
            raise _in_file(exc, study) from None
        if not watch_:
            state.emit(x, lambda: state.console.print(
                f"{x.name} started: {len(x.configurations)} configurations, "
                f"{len(x.trials)} trials (aifb experiment watch "
                f"{x.name.removeprefix('experiments/')})"))
            return
        _finish(state, _follow(state, x.name))


@app.command()
def watch(ctx: typer.Context,
          experiment: str = typer.Argument(..., help="Experiment id.")) -> None:
    """Follow an experiment live (the trials table, the running benchmark) until it ends."""
    state = state_of(ctx)
    with handle_errors(state):
        _finish(state, _follow(state, _name(experiment)))


@app.command()
def get(ctx: typer.Context, experiment: str = typer.Argument(..., help="Experiment id.")) -> None:
    """One experiment: its configurations and trials."""
    state = state_of(ctx)
    with handle_errors(state):
        x = state.call(_stub(state).GetExperiment,
                       E.GetExperimentRequest(name=_name(experiment))).experiment
        state.emit(x, lambda: state.console.print(_table(x)))


@app.command("list")
def list_(
    ctx: typer.Context,
    filter_: str = typer.Option("", "--filter", help="e.g. 'state=RUNNING study=nginx-workers'"),
) -> None:
    """List your experiments (all pages)."""
    state = state_of(ctx)
    with handle_errors(state):
        items: list[E.Experiment] = state.all_pages(
            _stub(state).ListExperiments, E.ListExperimentsRequest(filter=filter_),
            "experiments")

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("experiment", "study", "state", "trials", "created", "message"):
                table.add_column(col)
            for x in items:
                table.add_row(x.name.removeprefix("experiments/"), x.study.name,
                              state_text(x.state), _counts(x),
                              time.strftime("%Y-%m-%d %H:%M:%S",
                                            time.localtime(x.create_time.seconds)),
                              Text(x.state_message.splitlines()[0] if x.state_message
                                   else ""))
            state.console.print(table)

        state.emit(list(items), text)


@app.command()
def cancel(ctx: typer.Context,
           experiment: str = typer.Argument(..., help="Experiment id.")) -> None:
    """Stop it: running benchmarks are cancelled and every deployment is deleted."""
    state = state_of(ctx)
    with handle_errors(state):
        x = state.call(_stub(state).CancelExperiment,
                       E.CancelExperimentRequest(name=_name(experiment))).experiment
        state.emit(x, lambda: state.console.print(f"{x.name} is {state_text(x.state)}"))


def _report(state: CliState, name: str, fmt: str) -> bytes:
    if fmt not in _FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r} (known: {', '.join(_FORMATS)})",
                              field="--format")
    resp: E.GetExperimentReportResponse = state.call(
        _stub(state).GetExperimentReport,
        E.GetExperimentReportRequest(name=name, format=_FORMATS[fmt]))
    return resp.content


@app.command(help="The comparative report: figures over repeats with 95 % intervals, the "
                  "best configuration, rate searches, plots (html).")
def report(
    ctx: typer.Context,
    experiment: str = typer.Argument(..., help="Experiment id."),
    format_: str = typer.Option("json", "--format", "-f", help="html, json, md or parquet."),
    output_path: str = typer.Option("", "--out", "-o", help="Write here (default: stdout; "
                                    "parquet needs --out)."),
) -> None:
    state = state_of(ctx)
    with handle_errors(state):
        if format_ == "parquet" and not output_path:  # (before the server renders it)
            raise InvalidArgument("parquet is binary: give --out FILE", field="--out")
        content = _report(state, _name(experiment), format_)
        if output_path:
            path = Path(output_path).expanduser()
            try:
                path.write_bytes(content)
            except OSError as exc:  # one line and exit 1, as every other error
                raise InvalidArgument(f"--out {path}: {exc.strerror or exc}",
                                      field="--out") from None
            state.err.print(f"wrote {escape(str(path))} ({len(content)} bytes)")
        else:
            sys.stdout.write(content.decode())


@app.command(help="Two experiments side by side, group by group (same deployment, workload "
                  "and level); with --fail-on, a regression gate for CI.")
def compare(
    ctx: typer.Context,
    experiment_a: str = typer.Argument(..., help="The baseline experiment."),
    experiment_b: str = typer.Argument(..., help="The experiment compared with it."),
    fail_on: str = typer.Option("", "--fail-on", help="Exit 1 when a figure worsens beyond "
                                "a threshold, e.g. 'p99>+10%,achieved_rate<-5%'."),
) -> None:
    state = state_of(ctx)
    with handle_errors(state):
        from aifb.experiment.stats import parse_thresholds

        thresholds = parse_thresholds(fail_on) if fail_on else []
        docs = [json.loads(_report(state, _name(x), "json")) for x in (experiment_a,
                                                                       experiment_b)]
        from aifb.experiment.compare import compare_documents

        rows, breaches = compare_documents(docs[0], docs[1], thresholds)

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("configuration", "workload", "level", "figure", "a", "b", "b/a",
                        "difference"):
                table.add_column(col)
            for r in rows:
                table.add_row(Text(r["configuration"]), r["workload"], r["level"], r["figure"],
                              f"{r['a']:.4g}", f"{r['b']:.4g}",
                              "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                              {True: "within the noise", False: "beyond the noise",
                               None: "-"}[r["within_noise"]])
            state.console.print(table)
            for b in breaches:
                state.err.print(f"[bold red]regression[/]: {escape(b)}")

        state.emit({"a": docs[0]["experiment"]["name"], "b": docs[1]["experiment"]["name"],
                    "rows": rows, "breaches": breaches}, text)
        if breaches:
            raise typer.Exit(1)

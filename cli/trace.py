"""`aifb trace show|list`: the span tree of one flow, and where to find trace ids."""

from __future__ import annotations

import re

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from aifb.cli.collector import collector_stub
from aifb.cli.context import CliState, handle_errors, state_of, to_dict
from aifb.cli.logs import service_name
from aifb.mesh.errors import AifbError, InvalidArgument, NotFound
from aifb.v1 import collector_pb2, server_pb2

__all__ = ["app", "span_tree"]

app = typer.Typer(help="Traces: one trace follows a flow from the CLI through the server, "
                  "the SLURM job and its readiness report.", no_args_is_help=True)

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
_SHOWN_ATTRIBUTES = ("aifb.", "rpc.method", "rpc.grpc.status_code")


def _ms(span: collector_pb2.Span) -> float:
    return (span.end_time.ToNanoseconds() - span.start_time.ToNanoseconds()) / 1e6


def _label(span: collector_pb2.Span, origin: int) -> str:
    offset = (span.start_time.ToNanoseconds() - origin) / 1e6
    # Span names and attributes come from any OTLP sender: escape them, never read as markup.
    attrs = escape(" ".join(f"{k}={v}" for k, v in sorted(span.attributes.items())
                            if k.startswith(_SHOWN_ATTRIBUTES)))
    status = ("" if span.status in ("", "UNSET", "OK")
              else f" [bold red]{escape(span.status)}[/]")
    service = f" [dim]({escape(span.service_name)})[/]" if span.service_name else ""
    return (f"[bold]{escape(span.name)}[/]{service} {_ms(span):.1f} ms [dim]+{offset:.1f} ms[/]"
            f"{status}" + (f" [dim]{attrs}[/]" if attrs else ""))


def span_tree(trace_id: str, spans: list[collector_pb2.Span]) -> Tree:
    """Spans under their parents, children by start time; spans whose parent this collector
    does not keep (exported by a process that sends elsewhere) hang from the root, marked."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[collector_pb2.Span]] = {}
    for s in sorted(spans, key=lambda s: s.start_time.ToNanoseconds()):
        parent = s.parent_span_id if s.parent_span_id in ids else ""
        children.setdefault(parent, []).append(s)
    origin = min((s.start_time.ToNanoseconds() for s in spans), default=0)
    root = Tree(f"trace {trace_id} ({len(spans)} spans)")

    def add(node: Tree, parent: str) -> None:
        for s in children.get(parent, []):
            orphan = " [yellow](parent not kept)[/]" if not parent and s.parent_span_id else ""
            add(node.add(_label(s, origin) + orphan), s.span_id)

    add(root, "")
    return root


def _resolve(state: CliState, what: str) -> str:
    """A trace id as given, or the trace that created the service `what`."""
    if _TRACE_ID.fullmatch(what):
        return what.lower()
    name = service_name(what)
    svc = state.call(state.server_stub().GetService,
                     server_pb2.GetServiceRequest(name=name)).service
    if not svc.trace_id:
        raise NotFound(f"{name} has no trace id (it was created without tracing)")
    return str(svc.trace_id)


@app.command()
def show(
    ctx: typer.Context,
    trace: str = typer.Argument(..., help="A trace id (32 hex digits) or a service id (its "
                                "creation trace)."),
    collector: str = typer.Option(None, "--collector", metavar="HOST:PORT",
                                  help="CollectorService to ask (default: the server's)."),
) -> None:
    """Print the span tree of one trace: each span's name, duration, offset from the start of
    the trace and key attributes. `--output json` prints the spans as a list."""
    state = state_of(ctx)
    with handle_errors(state):
        trace_id = _resolve(state, trace)
        resp = state.call(collector_stub(state, collector).GetTrace,
                          collector_pb2.GetTraceRequest(trace_id=trace_id))
        spans = list(resp.spans)
        state.emit(spans, lambda: state.console.print(span_tree(trace_id, spans)))


@app.command("list")
def list_(
    ctx: typer.Context,
    service: str = typer.Option(None, "--service", help="Only this service's trace."),
    limit: int = typer.Option(20, help="At most this many, newest first (1..1000)."),
    collector: str = typer.Option(None, "--collector", metavar="HOST:PORT",
                                  help="CollectorService to ask for span counts (default: "
                                  "the server's)."),
) -> None:
    """Recent trace ids: the trace that created each service, newest first, with the number of
    its spans the collector keeps (0: gone or sent elsewhere)."""
    state = state_of(ctx)
    with handle_errors(state):
        if not 1 <= limit <= 1000:
            raise InvalidArgument(f"--limit must be 1..1000, got {limit}", field="limit")
        server = state.server_stub()
        if service:
            services = [state.call(server.GetService, server_pb2.GetServiceRequest(
                name=service_name(service))).service]
        else:
            services = list(state.call(server.ListServices,
                                       server_pb2.ListServicesRequest(page_size=1000)).services)
        services = [s for s in services if s.trace_id]
        services.sort(key=lambda s: s.create_time.ToNanoseconds(), reverse=True)
        stub = collector_stub(state, collector)
        rows = []
        for svc in services[:limit]:
            try:
                kept = len(state.call(stub.GetTrace, collector_pb2.GetTraceRequest(
                    trace_id=svc.trace_id)).spans)
            except AifbError as exc:
                if not isinstance(exc, NotFound):
                    raise
                kept = 0
            rows.append({"trace_id": svc.trace_id, "service": svc.name, "recipe": svc.recipe,
                         "create_time": to_dict(svc)["create_time"], "spans": kept})

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("TRACE", "SERVICE", "RECIPE", "CREATED", "SPANS"):
                table.add_column(col)
            for r in rows:
                table.add_row(r["trace_id"], str(r["service"]).removeprefix("services/"),
                              str(r["recipe"]), str(r["create_time"]), str(r["spans"]))
            state.console.print(table)

        state.emit({"traces": rows}, text)

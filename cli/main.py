"""The `aifb` command: one sub-app per noun, every command a client of the aifb services."""

from __future__ import annotations

import os
import sys

# Before gRPC loads: its fork handlers can crash a child forked while gRPC threads are busy
# (PySpark starts its JVM with a Python preexec_fn under `bench --engine spark`); aifb only
# forks to exec, so it needs none of them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import typer

from aifb.cli import (
    bench,
    collector,
    experiment,
    logger,
    monitor,
    recipes,
    services,
    tokens,
    trace,
)
from aifb.cli.bench_serve import serve as bench_serve
from aifb.cli.context import CliState, Output
from aifb.cli.demo import demo
from aifb.cli.logs import logs
from aifb.cli.up import up

app = typer.Typer(
    name="aifb",
    help="Benchmark AI infrastructure on HPC clusters: deploy services as SLURM jobs from "
    "recipes, drive load against them, and collect what happens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(services.app, name="services")
app.add_typer(recipes.app, name="recipes")
app.add_typer(tokens.app, name="tokens")
bench.app.command("serve")(bench_serve)  # the BenchmarkService on its own
app.add_typer(bench.app, name="bench")
app.add_typer(experiment.app, name="experiment")
app.add_typer(collector.app, name="collector")
app.add_typer(monitor.app, name="monitor")
app.add_typer(logger.app, name="logger")
app.add_typer(trace.app, name="trace")
app.command()(logs)
app.command(help="Run every aifb service in this process (embedded mode).")(up)
app.command(help="Deploy a real service through the embedded mesh, load it, print a summary.")(
    demo)


@app.callback()
def _root(
    ctx: typer.Context,
    server: str = typer.Option(None, "--server", "-s", envvar="AIFB_SERVER_ADDRESS",
                               help="host:port of the aifb server (default: mesh.listen)."),
    home: str = typer.Option(None, "--home", envvar="AIFB_HOME",
                             help="aifb's state directory (default ~/.aifb)."),
    config: str = typer.Option(None, "--config", envvar="AIFB_CONFIG",
                               help="Config file (YAML)."),
    output: Output = typer.Option(Output.text, "--output", "-o",
                                  help="text for people, json for scripts."),
    timeout: float = typer.Option(30.0, help="Deadline of each call, in seconds."),
    ca_file: str = typer.Option(None, "--ca-file", envvar="AIFB_CA_FILE",
                                help="CA (PEM) that signed the server's certificate: use TLS."),
    cert: str = typer.Option(None, "--cert", envvar="AIFB_CLIENT_CERT",
                             help="Client certificate (PEM), for a server that requires mTLS."),
    key: str = typer.Option(None, "--key", envvar="AIFB_CLIENT_KEY",
                            help="Client certificate's key (PEM)."),
) -> None:
    ctx.obj = CliState(server=server, home=home, config_file=config, output=output,
                       timeout=timeout, ca_file=ca_file or "", cert_file=cert or "",
                       key_file=key or "")


def _not_utf8(argv: list[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps such bytes as lone surrogates,
    which no protobuf string, file name in a message or terminal line can carry)."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(arg).decode("utf-8", "backslashreplace")
    return None


def main() -> None:
    bad = _not_utf8(sys.argv[1:])
    if bad is not None:
        sys.stderr.write(f"error: argument '{bad}' is not valid UTF-8 (aifb takes text only)\n")
        raise SystemExit(2)
    try:
        app()
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("AIFB_DEBUG"):
            raise
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc} "
                         "(set AIFB_DEBUG=1 for the traceback)\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

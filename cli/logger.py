"""`aifb logger serve|sources`: the node log agent as a daemon, and what it follows."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.table import Table

from aifb.cli.context import handle_errors, state_of
from aifb.cli.remote import channel_to
from aifb.cli.serve_options import INSECURE
from aifb.v1 import logger_pb2, logger_pb2_grpc

app = typer.Typer(help="Job logs: run the logger agent that tails SLURM output files and "
                  "ships them to the collector.", no_args_is_help=True)

DEFAULT_LISTEN = "127.0.0.1:50054"


@app.command()
def serve(
    ctx: typer.Context,
    listen: str = typer.Option(DEFAULT_LISTEN, metavar="HOST:PORT",
                               help="Serve LoggerService here ('' for none)."),
    collector: str = typer.Option(None, "--collector", metavar="HOST:PORT",
                                  help="Push log lines to this CollectorService."),
    server: str = typer.Option(None, "--watch-server", metavar="HOST:PORT",
                               help="Learn this node's jobs and their files from this "
                               "ServerService; default: the --server address; '' for none "
                               "(only the config's `logger.targets`)."),
    node: str = typer.Option(None, help="This node's name as SLURM knows it."),
    state_dir: str = typer.Option(None, help="Checkpoint and spool directory (default "
                                  "<home>/logger-<port>)."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="Follow every service, on any "
                                   "node (single-machine setups)."),
    insecure: bool = INSECURE,
) -> None:
    """Run this node's logger agent (a node daemon) until Ctrl-C or SIGTERM.

    It tails the .out/.err files of the jobs on this node (and recipe-declared log files),
    joins tracebacks into one record, and pushes them to --collector; its checkpoint makes a
    restart lose and repeat nothing. Other settings come from the `logger:` config section.
    """
    state = state_of(ctx)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        from aifb.logger.config import LoggerConfig
        from aifb.mesh.config import load_config, section_config

        config = load_config(file=state.config_file,
                             overrides={"mesh": {"home": state.home, "insecure": insecure}})
        from aifb.cli.agent_daemon import instance_defaults

        # Per port: `aifb up`'s embedded logger keeps <home>/logger on the same host.
        port = listen.rsplit(":", 1)[-1] if ":" in listen else ""
        default_dir = (None if "state_dir" in config.logger else str(
            config.mesh.home_path / f"logger-{port if port.strip('0') else 'daemon'}"))
        logger = section_config(LoggerConfig, config, "logger", {
            "collector": collector, "node": node,
            "server": state.address if server is None else server,
            "state_dir": state_dir or default_dir, "all_nodes": all_nodes or None,
            **instance_defaults("logger", config.logger, node or config.logger.get("node", ""),
                                listen)})
        from aifb.mesh.heap import keep_freed_memory

        keep_freed_memory()  # this process is the agent alone: see aifb.mesh.heap
        asyncio.run(_serve(config, logger, listen))


async def _serve(config: object, logger: object, listen: str) -> None:
    from aifb.cli.agent_daemon import serve_agent
    from aifb.logger.app import build_logger
    from aifb.logger.config import LoggerConfig
    from aifb.mesh.config import Config

    assert isinstance(config, Config) and isinstance(logger, LoggerConfig)
    await serve_agent(config, logger, build_logger, kind="logger", service="LoggerService",
                      listen=listen)


@app.command()
def sources(
    ctx: typer.Context,
    logger: str = typer.Option(None, "--logger", metavar="HOST:PORT",
                               help="LoggerService address (default: the server's)."),
) -> None:
    """The files a logger agent follows, with offsets, rotations and truncations."""
    state = state_of(ctx)
    with handle_errors(state):
        stub = logger_pb2_grpc.LoggerServiceStub(channel_to(state, logger))
        resp = state.call(stub.ListLogSources, logger_pb2.ListLogSourcesRequest())

        def text() -> None:
            table = Table(box=None, header_style="bold")
            for col in ("PATH", "SERVICE", "STREAM", "OFFSET", "SIZE", "ROTATIONS"):
                table.add_column(col)
            for s in resp.sources:
                table.add_row(s.path, s.labels.get("service", ""), s.labels.get("stream", ""),
                              str(s.offset), str(s.size_bytes), str(s.rotations))
            state.console.print(table)

        state.emit(resp, text)

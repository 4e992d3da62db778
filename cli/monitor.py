"""`aifb monitor serve|top`: the node monitor as a daemon, and its live view."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from aifb.cli.context import CliState, Output, handle_errors, state_of, to_dict
from aifb.cli.remote import channel_to
from aifb.cli.serve_options import INSECURE
from aifb.mesh.channel import raise_for_rpc_error
from aifb.v1 import monitor_pb2, monitor_pb2_grpc

app = typer.Typer(help="Node, GPU and job metrics: run the monitor agent, watch it live.",
                  no_args_is_help=True)

DEFAULT_LISTEN = "127.0.0.1:50053"


@app.command()
def serve(
    ctx: typer.Context,
    listen: str = typer.Option(DEFAULT_LISTEN, metavar="HOST:PORT",
                               help="Serve MonitorService here ('' for none)."),
    collector: str = typer.Option(None, "--collector", metavar="HOST:PORT",
                                  help="Push metrics to this CollectorService."),
    server: str = typer.Option(None, "--watch-server", metavar="HOST:PORT",
                               help="Learn this node's jobs from this ServerService "
                               "(WatchServices); default: the --server address; '' for none "
                               "(only the config's `monitor.targets`)."),
    node: str = typer.Option(None, help="This node's name as SLURM knows it (default: the "
                             "short host name)."),
    interval: float = typer.Option(None, help="Seconds between collections (default 5)."),
    all_nodes: bool = typer.Option(False, "--all-nodes", help="Watch every service, on any "
                                   "node (single-machine setups)."),
    insecure: bool = INSECURE,
) -> None:
    """Run this node's monitor agent (a node daemon) until Ctrl-C or SIGTERM.

    It collects CPU, memory, disk, network, GPUs (NVML), the process trees of the jobs on this
    node and each service's own /metrics, pushes them to --collector and serves MonitorService
    for `aifb monitor top`. Other settings come from the `monitor:` config section.
    """
    state = state_of(ctx)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with handle_errors(state):
        from aifb.mesh.config import load_config, section_config
        from aifb.monitor.config import MonitorConfig

        config = load_config(file=state.config_file,
                             overrides={"mesh": {"home": state.home, "insecure": insecure}})
        from aifb.cli.agent_daemon import instance_defaults

        monitor = section_config(MonitorConfig, config, "monitor", {
            "collector": collector, "node": node,
            "server": state.address if server is None else server,
            "interval_seconds": interval, "all_nodes": all_nodes or None,
            "local_state_dir": str(config.mesh.home_path / "local-jobs"),
            **instance_defaults("monitor", config.monitor, node or config.monitor.get("node", ""),
                                listen)})
        asyncio.run(_serve(config, monitor, listen))


async def _serve(config: object, monitor: object, listen: str) -> None:
    from aifb.cli.agent_daemon import serve_agent
    from aifb.mesh.config import Config
    from aifb.monitor.app import build_monitor
    from aifb.monitor.config import MonitorConfig

    assert isinstance(config, Config) and isinstance(monitor, MonitorConfig)
    await serve_agent(config, monitor, build_monitor, kind="monitor", service="MonitorService",
                      listen=listen)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def render(summaries: list[monitor_pb2.NodeSummary]) -> Group:
    """The node table, then one table of GPUs and one of jobs."""
    nodes = Table(title="nodes", box=None, header_style="bold", title_justify="left")
    for col in ("NODE", "CPU %", "LOAD1", "MEM GiB", "GPUS", "JOBS", "TIME"):
        nodes.add_column(col, justify="left" if col == "NODE" else "right")
    gpus = Table(title="GPUs", box=None, header_style="bold", title_justify="left")
    for col in ("NODE", "GPU", "NAME", "UTIL %", "MEM GiB", "POWER W", "TEMP C"):
        gpus.add_column(col, justify="left" if col in ("NODE", "NAME") else "right")
    jobs = Table(title="jobs", box=None, header_style="bold", title_justify="left")
    for col in ("NODE", "SERVICE", "JOB", "PROCS", "CPU %", "RSS GiB", "GPU MEM GiB"):
        jobs.add_column(col, justify="left" if col in ("NODE", "SERVICE", "JOB") else "right")
    notes: list[str] = []
    for s in sorted(summaries, key=lambda s: s.node):
        when = time.strftime("%H:%M:%S", time.localtime(s.time.seconds))
        gpu_text = str(len(s.gpus))
        if s.gpu_status:
            notes.append(f"{s.node}: {s.gpu_status}")
        nodes.add_row(s.node, f"{100 * s.cpu_ratio:.1f}", f"{s.load1:.2f}",
                      f"{_gib(s.memory_used_bytes)}/{_gib(s.memory_total_bytes)}", gpu_text,
                      str(len(s.jobs)), when)
        for g in s.gpus:
            gpus.add_row(
                s.node, str(g.index), g.name,
                f"{100 * g.utilization_ratio:.0f}" if g.HasField("utilization_ratio") else "-",
                (f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}"
                 if g.HasField("memory_used_bytes") else "-"),
                f"{g.power_watts:.0f}" if g.HasField("power_watts") else "-",
                f"{g.temperature_celsius:.0f}" if g.HasField("temperature_celsius") else "-")
        for j in s.jobs:
            jobs.add_row(s.node, j.service.removeprefix("services/"), j.job_id,
                         str(j.processes), f"{100 * j.cpu_ratio:.1f}", _gib(j.rss_bytes),
                         _gib(j.gpu_memory_bytes))
    if notes:
        nodes.caption = "; ".join(notes)
        nodes.caption_justify = "left"
    parts: list[Table] = [nodes]
    if gpus.row_count:
        parts.append(gpus)
    parts.append(jobs)
    return Group(*parts)


def _stream(stub: monitor_pb2_grpc.MonitorServiceStub, interval_ms: int
            ) -> Iterator[monitor_pb2.NodeSummary]:
    request = monitor_pb2.WatchSnapshotsRequest(interval_ms=interval_ms)
    for msg in stub.WatchSnapshots(request):
        yield msg.snapshot.summary


def _stubs(state: CliState, addresses: list[str]) -> list[monitor_pb2_grpc.MonitorServiceStub]:
    return [monitor_pb2_grpc.MonitorServiceStub(channel_to(state, a))
            for a in (addresses or [state.address])]


@app.command()
def top(
    ctx: typer.Context,
    monitor: list[str] = typer.Option(None, "--monitor", "-m", metavar="HOST:PORT",
                                      help="MonitorService address; repeat for several nodes "
                                      "(default: the server's, where `aifb up` serves it)."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit."),
    interval: float = typer.Option(0.0, help="Seconds between updates (default: the agent's "
                                   "interval; at least 0.2)."),
) -> None:
    """Live node, GPU and job view streamed from MonitorService (Ctrl-C ends it).

    `--once --output json` prints the nodes' summaries as a JSON list for scripts; without
    --once, json output is one summary per line as they arrive.
    """
    state = state_of(ctx)
    with handle_errors(state):
        if interval and interval < 0.2:
            from aifb.mesh.errors import InvalidArgument

            raise InvalidArgument(f"--interval must be at least 0.2 s, got {interval:g}",
                                  field="interval")
        stubs = _stubs(state, monitor or [])
        if once:
            summaries = [state.call(s.GetSnapshot, monitor_pb2.GetSnapshotRequest()
                                    ).snapshot.summary for s in stubs]
            state.emit(summaries, lambda: state.console.print(render(summaries)))
            return
        _live(state, stubs, int(interval * 1000))


def _live(state: CliState, stubs: list[monitor_pb2_grpc.MonitorServiceStub],
          interval_ms: int) -> None:
    latest: dict[int, monitor_pb2.NodeSummary] = {}
    errors: list[grpc.RpcError] = []
    changed = threading.Condition()

    def follow(i: int, stub: monitor_pb2_grpc.MonitorServiceStub) -> None:
        try:
            for summary in _stream(stub, interval_ms):
                with changed:
                    latest[i] = summary
                    changed.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                with changed:
                    errors.append(exc)
                    changed.notify_all()

    threads = [threading.Thread(target=follow, args=(i, s), daemon=True)
               for i, s in enumerate(stubs)]
    for t in threads:
        t.start()
    live = None if state.output is Output.json else Live(
        render([]), console=state.console, auto_refresh=False)
    try:
        if live is not None:
            live.start()
        while True:
            with changed:
                changed.wait(1.0)
                if errors:
                    raise_for_rpc_error(errors[0])
                summaries = [latest[i] for i in sorted(latest)]
                latest_seen = dict(latest)
                if state.output is Output.json:
                    latest.clear()
            if live is not None:
                live.update(render(summaries), refresh=True)
            else:
                for summary in latest_seen.values():
                    sys.stdout.write(json.dumps(to_dict(summary), sort_keys=True) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()

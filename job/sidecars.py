"""The job's telemetry sidecars: monitor and logger agents the in-job entry point runs for its
own job, as the server's `AIFB_SIDECARS`... environment asks (see `aifb.server.sidecars`).

`aifb.job.run` calls `start_job_sidecars` before the program starts, `ready()` once it is ready
and `stop()` at the end. Nothing here may break the job: a sidecar that cannot start is logged
and replaced by `NoSidecars`. This part is the one place the monitor and logger agents are
imported outside the composition layer.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["JobSidecars", "NoSidecars", "Sidecars", "own_output_file", "start_job_sidecars"]

log = logging.getLogger("aifb.sidecars")


def own_output_file(fd: int) -> str:
    """The regular file behind one of this process's descriptors (SLURM's .out/.err), or ""."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return path if stat.S_ISREG(os.stat(path).st_mode) else ""
    except OSError:
        return ""


class Sidecars(Protocol):
    def ready(self, port: int, http: bool) -> None: ...
    async def stop(self) -> None: ...


class NoSidecars:
    """The job runs without agents."""

    def ready(self, port: int, http: bool) -> None:
        return None

    async def stop(self) -> None:
        return None


class JobSidecars:
    """The agents of one job, in the entry point's event loop."""

    def __init__(self, service: str, environ: Mapping[str, str], workdir: Path,
                 log_files: Sequence[str]) -> None:
        from aifb.logger.agent import LoggerAgent
        from aifb.logger.config import LoggerConfig
        from aifb.mesh.channel import load_token
        from aifb.mesh.discovery import TargetSpec, channel_factory
        from aifb.mesh.tls import ClientTls
        from aifb.monitor.agent import MonitorAgent
        from aifb.monitor.config import MonitorConfig

        wanted = {w.strip() for w in environ.get("AIFB_SIDECARS", "").split(",") if w.strip()}
        self.service = environ.get("AIFB_SERVICE") or service
        sid = self.service.rsplit("/", 1)[-1]
        self.job_id = environ.get("SLURM_JOB_ID") or environ.get("AIFB_LOCAL_JOB_ID", "")
        self.metrics_path = environ.get("AIFB_METRICS_PATH", "/metrics")
        port_text = environ.get("AIFB_METRICS_PORT", "")
        self.metrics_port = int(port_text) if port_text.isdigit() else 0
        address = environ.get("AIFB_COLLECTOR", "")
        if address:
            home = Path(environ.get("AIFB_HOME", "~/.aifb")).expanduser()
            token = environ.get("AIFB_COLLECTOR_TOKEN") or load_token(home, environ)
        else:
            address, token = environ.get("AIFB_SERVER", ""), environ.get("AIFB_REPORT_TOKEN")
        if not address:
            raise ValueError("neither AIFB_COLLECTOR nor AIFB_SERVER is set")
        tls = ClientTls.from_environment(environ)
        connect = channel_factory(address, token=token, ca_file=tls.ca_file,
                                  cert_file=tls.cert_file, key_file=tls.key_file)
        node = socket.gethostname().split(".", 1)[0]
        self.address = address
        self.monitor: MonitorAgent | None = None
        self.logger: LoggerAgent | None = None
        self._target = TargetSpec(service=self.service, job_id=self.job_id, pid=os.getpid())
        if "monitor" in wanted:
            interval = float(environ.get("AIFB_SIDECAR_INTERVAL", "5") or 5)
            # Its own job's SLURM stats (the node monitors report none of a job with sidecars).
            slurm_job = environ.get("SLURM_JOB_ID", "")
            self.monitor = MonitorAgent(MonitorConfig(
                node=node, agent_id=f"monitor@{node}/{sid}", interval_seconds=interval,
                targets=[self._target], slurm=None if slurm_job else False,
                slurm_job=slurm_job), collector=connect)
        if "logger" in wanted:
            stdout, stderr = own_output_file(1), own_output_file(2)
            self.logger = LoggerAgent(LoggerConfig(
                node=node, agent_id=f"logger@{node}/{sid}", idle_flush_seconds=0.5,
                state_dir=str(workdir / ".aifb-sidecar" / f"logger-{self.job_id or 'job'}"),
                targets=[TargetSpec(service=self.service, job_id=self.job_id,
                                    stdout_path=stdout, stderr_path=stderr,
                                    log_files=list(log_files))]), collector=connect)

    async def start(self) -> None:
        for agent in (self.monitor, self.logger):
            if agent is not None:
                await agent.start()
        log.info("sidecars for %s push to %s (monitor %s, logger %s)", self.service,
                 self.address, "on" if self.monitor else "off", "on" if self.logger else "off")

    def ready(self, port: int, http: bool) -> None:
        """Scrape the service's own metrics from now on: on AIFB_METRICS_PORT, else on the
        service's port when it speaks HTTP."""
        if self.monitor is None or self.metrics_path in ("", "off", "false"):
            return
        if not (http or self.metrics_port):
            return
        url = f"http://127.0.0.1:{self.metrics_port or port}{self.metrics_path}"
        target = self._target.model_copy(update={"metrics_url": url})
        self.monitor.discovery.set_static([target.to_target()])

    async def stop(self) -> None:
        """Ship what the job wrote last (a pending multi-line record waits for the idle
        flush), then stop both agents, flushing their unacknowledged batches."""
        import asyncio

        if self.logger is not None:
            try:
                await self.logger.poll_once()
                await asyncio.sleep(self.logger.config.idle_flush_seconds + 0.05)
                await self.logger.poll_once()
            except Exception:
                log.exception("sidecar logger: final read failed")
        async def stop(agent: Any) -> None:
            try:
                await agent.stop(flush_timeout=5.0)
            except Exception:
                log.exception("sidecar %s did not stop cleanly", type(agent).__name__)

        # Both at once: with the collector unreachable each waits out its flush timeout.
        await asyncio.gather(*(stop(a) for a in (self.monitor, self.logger) if a is not None))


async def start_job_sidecars(service: str, environ: Mapping[str, str], workdir: Path,
                             log_files: Sequence[str]) -> Sidecars:
    """The job's sidecars as its environment asks, started; `NoSidecars` when none (or when
    they cannot start: the job must run anyway)."""
    if not environ.get("AIFB_SIDECARS"):
        return NoSidecars()
    try:
        sidecars = JobSidecars(service, environ, workdir, log_files)
        await sidecars.start()
        return sidecars
    except Exception as exc:
        log.warning("telemetry sidecars not started: %s", exc)
        return NoSidecars()

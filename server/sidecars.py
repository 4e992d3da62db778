"""Telemetry sidecars: monitor and logger agents that the in-job entry point runs for its job.

Users cannot install node daemons on compute nodes, so a job can carry its own agents. The
server decides (`server.sidecars: auto|on|off`; auto means on for the SLURM schedulers, whose
jobs may run on nodes without agents) and says so in the job's environment:

    AIFB_SIDECARS=monitor,logger      which agents to run (absent: none)
    AIFB_SIDECAR_INTERVAL=5           the monitor's interval in seconds
    AIFB_COLLECTOR=host:port          where to push (absent: AIFB_SERVER, whose `aifb up`
                                      mounts the collector); its token is AIFB_COLLECTOR_TOKEN,
                                      else the user's token file; for AIFB_SERVER the job's
                                      own AIFB_REPORT_TOKEN is enough
    AIFB_METRICS_PATH=/metrics        the path scraped once the service is ready ("off"
                                      disables the scrape); set from the recipe's `metrics:`
    AIFB_METRICS_PORT=8000            the port scraped (an auto port's token, filled in by
                                      jobrun); absent: the service's port, HTTP services only

The job's entry point runs them (`aifb.job.sidecars`); this module is the server's side: whether
jobs carry sidecars and the environment that says so.
"""

from __future__ import annotations

import logging

from aifb.mesh.config import Config

__all__ = ["COLLECTOR_SERVICE", "sidecar_environment", "sidecars_enabled"]

log = logging.getLogger("aifb.sidecars")

_SLURM_SCHEDULERS = {"slurm", "slurmrest"}
# The gRPC service whose presence among a server's bindings means "a collector is here".
COLLECTOR_SERVICE = "aifb.v1.CollectorService"


def sidecars_enabled(setting: str, scheduler: str) -> bool:
    """`server.sidecars` for a scheduler: auto is on exactly for the SLURM backends."""
    if setting == "auto":
        return scheduler in _SLURM_SCHEDULERS
    return setting == "on"


def sidecar_environment(config: Config, scheduler: str, *, collector_here: bool
                        ) -> dict[str, str]:
    """The variables that switch the sidecars on in every job this server creates. With no
    collector to push to (none mounted beside this server, no `server.sidecar_collector`)
    there are no sidecars, whatever the setting."""
    if not sidecars_enabled(config.server.sidecars, scheduler):
        return {}
    if not (collector_here or config.server.sidecar_collector):
        if config.server.sidecars == "on":
            log.warning("server.sidecars is on but no collector is mounted here and "
                        "server.sidecar_collector is empty: jobs run without sidecars")
        return {}
    env = {"AIFB_SIDECARS": "monitor,logger",
           "AIFB_SIDECAR_INTERVAL": str(config.monitor.get("interval_seconds", 5.0))}
    if config.server.sidecar_collector:
        env["AIFB_COLLECTOR"] = config.server.sidecar_collector
    return env

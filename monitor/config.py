"""The monitor agent's typed configuration."""

from __future__ import annotations

import socket

from pydantic import BaseModel, ConfigDict, Field

from aifb.mesh.discovery import TargetSpec

__all__ = ["MonitorConfig"]


class MonitorConfig(BaseModel):
    """Defaults suit a node daemon; a sidecar sets `targets` to its own job."""

    model_config = ConfigDict(extra="forbid")
    # This node's name as SLURM knows it; empty: the host name.
    node: str = ""
    # Stable id for the collector's de-duplication; empty: "monitor@<node>".
    agent_id: str = ""
    interval_seconds: float = Field(default=5.0, ge=0.2)
    # host:port of the CollectorService; empty: collect and serve, push nothing.
    collector: str = ""
    # host:port of the ServerService for discovery; empty: static targets only.
    server: str = ""
    # Watch every service whatever its node (embedded / local mode).
    all_nodes: bool = False
    targets: list[TargetSpec] = Field(default_factory=list)
    gpu: bool = True
    # None: read SLURM job stats when squeue is installed.
    slurm: bool | None = None
    scrape_timeout_seconds: float = Field(default=3.0, gt=0)
    process_refresh_seconds: float = Field(default=10.0, gt=0)
    count_fds: bool = True
    # The local executor's state directory (<aifb home>/local-jobs), to find local jobs' pids.
    local_state_dir: str = ""
    # Unacknowledged batches kept (720 = one hour at 5 s) and sent ahead of acknowledgements.
    buffer_batches: int = Field(default=720, ge=1)
    window: int = Field(default=16, ge=1)
    # A directory for unacknowledged batches, so a restarted agent resends them.
    spool_dir: str = ""

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".", 1)[0]

    @property
    def agent_name(self) -> str:
        return self.agent_id or f"monitor@{self.node_name}"

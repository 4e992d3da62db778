"""The logger agent's typed configuration."""

from __future__ import annotations

import socket

from pydantic import Field

from aifb.mesh.config import Section
from aifb.mesh.discovery import TargetSpec

__all__ = ["LoggerConfig"]


class LoggerConfig(Section):
    """Defaults suit a node daemon; a sidecar sets `targets` to its own job's files."""

    node: str = ""
    # Stable id for the collector's de-duplication; empty: "logger@<node>".
    agent_id: str = ""
    # Where the checkpoint and the spool of unacknowledged batches live.
    state_dir: str = "~/.aifb/logger"
    collector: str = ""
    server: str = ""
    all_nodes: bool = False
    targets: list[TargetSpec] = Field(default_factory=list)
    poll_interval_seconds: float = Field(default=0.25, gt=0)
    # A multi-line record is finished after this long without new data.
    idle_flush_seconds: float = Field(default=1.0, gt=0)
    # A batch closes at this many lines or bytes (1 MiB of 100-byte lines: about 10,000).
    max_batch_lines: int = Field(default=16384, ge=1)
    max_batch_bytes: int = Field(default=1 << 20, ge=1024)
    max_line_bytes: int = Field(default=256 * 1024, ge=1024)
    # Unacknowledged batches; when full the logger stops reading (files are the buffer).
    buffer_batches: int = Field(default=256, ge=2)
    # Bytes of unacknowledged batches held at most; reads shrink, then pause, before this
    # fills (the sender would drop the oldest batches past it).
    buffer_bytes: int = Field(default=64 << 20, ge=1 << 20)
    window: int = Field(default=8, ge=1)
    # Acknowledged positions are written at most this often (one fsync'd write for all the
    # batches acknowledged meanwhile; until then they stay in the spool).
    checkpoint_interval_seconds: float = Field(default=0.2, gt=0)
    # Records kept per file for TailLogs' initial lines.
    recent_records: int = Field(default=1000, ge=0)
    # How long a file is still read after its service left discovery.
    linger_seconds: float = Field(default=30.0, ge=0)

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".", 1)[0]

    @property
    def agent_name(self) -> str:
        return self.agent_id or f"logger@{self.node_name}"

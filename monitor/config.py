"""The monitor agent's typed configuration: a plain dataclass, checked without pydantic.

The agent must stay small (pydantic alone costs it about 6 MB of memory), so `MonitorConfig`
validates itself: types, bounds and unknown keys, each error a `ConfigError` naming its key.
`model_validate` (a mapping, as from YAML) lets `aifb.mesh.config.section_config` treat it like
the other components' pydantic models.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aifb.mesh.discovery import TargetSpec

__all__ = ["ConfigError", "MonitorConfig"]


class ConfigError(ValueError):
    """A bad setting; `loc` is its key path, as in pydantic's errors."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


# Bounds: key -> (minimum, whether the minimum itself is allowed).
_BOUNDS: dict[str, tuple[float, bool]] = {
    "interval_seconds": (0.2, True), "scrape_timeout_seconds": (0.0, False),
    "process_refresh_seconds": (0.0, False), "buffer_batches": (1, True), "window": (1, True),
}
_STR = ("node", "agent_id", "collector", "server", "local_state_dir", "spool_dir", "slurm_job")


@dataclass
class MonitorConfig:
    """Defaults suit a node daemon; a sidecar sets `targets` to its own job."""

    # This node's name as SLURM knows it; empty: the host name.
    node: str = ""
    # Stable id for the collector's de-duplication; empty: "monitor@<node>".
    agent_id: str = ""
    interval_seconds: float = 5.0
    # host:port of the CollectorService; empty: collect and serve, push nothing.
    collector: str = ""
    # host:port of the ServerService for discovery; empty: static targets only.
    server: str = ""
    # Watch every service whatever its node (embedded / local mode).
    all_nodes: bool = False
    targets: list[TargetSpec] = field(default_factory=list)
    gpu: bool = True
    # None: read SLURM job stats when squeue is installed.
    slurm: bool | None = None
    # One job's stats only (a job's sidecar reports its own job); empty: the jobs whose batch
    # host is this node (each job has one reporter, however many nodes it spans).
    slurm_job: str = ""
    scrape_timeout_seconds: float = 3.0
    process_refresh_seconds: float = 10.0
    count_fds: bool = True
    # The local executor's state directory (<aifb home>/local-jobs), to find local jobs' pids.
    local_state_dir: str = ""
    # Unacknowledged batches kept (720 = one hour at 5 s) and sent ahead of acknowledgements.
    buffer_batches: int = 720
    window: int = 16
    # A directory for unacknowledged batches, so a restarted agent resends them.
    spool_dir: str = ""

    def __post_init__(self) -> None:
        for name in _STR:
            if not isinstance(getattr(self, name), str):
                raise ConfigError((name,), f"expected a string, got {getattr(self, name)!r}")
        for name in ("all_nodes", "gpu", "count_fds", "slurm"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "slurm" and value is None):
                raise ConfigError((name,), f"expected true or false, got {value!r}")
        for name, (low, inclusive) in _BOUNDS.items():
            value = getattr(self, name)
            integer = name in ("buffer_batches", "window")
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ConfigError((name,), f"expected {'an integer' if integer else 'a number'}"
                                           f", got {value!r}")
            if not integer:
                setattr(self, name, float(value))
            if value < low or (value == low and not inclusive):
                raise ConfigError((name,), f"must be {'at least' if inclusive else 'above'} "
                                           f"{low:g}, got {value!r}")
        if not isinstance(self.targets, list):
            raise ConfigError(("targets",), f"expected a list, got {self.targets!r}")
        for i, target in enumerate(self.targets):
            if not isinstance(target, TargetSpec):
                raise ConfigError(("targets", i), f"expected a target, got {target!r}")

    @classmethod
    def model_validate(cls, data: Any) -> MonitorConfig:
        """From a mapping (YAML, environment, flags); unknown keys are refused."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError((), f"expected a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError((str(key),), "unknown setting (expected one of "
                                               f"{', '.join(sorted(known))})")
        values = dict(data)
        targets = values.get("targets") or []
        if not isinstance(targets, list):
            raise ConfigError(("targets",), f"expected a list, got {targets!r}")
        specs = []
        for i, item in enumerate(targets):
            try:
                specs.append(item if isinstance(item, TargetSpec)
                             else TargetSpec.from_mapping(item))
            except (TypeError, ValueError) as exc:
                raise ConfigError(("targets", i), str(exc)) from None
        values["targets"] = specs
        return cls(**values)

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".", 1)[0]

    @property
    def agent_name(self) -> str:
        return self.agent_id or f"monitor@{self.node_name}"

"""Typed configuration: packaged YAML defaults < config file < AIFB_* environment < flags."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aifb.mesh.config_data import load_config_data
from aifb.mesh.errors import InvalidArgument

__all__ = ["Config", "MeshConfig", "Section", "ServerConfig", "is_loopback", "load_config",
           "section_config"]


class _Model(Protocol):
    """A section's model: a pydantic model, or a plain one with the same `model_validate`."""

    @classmethod
    def model_validate(cls, obj: Any) -> Any: ...


M = TypeVar("M", bound=_Model)


class Section(BaseModel):
    """The base of every component's pydantic config section: unknown keys are errors, and so
    is a bad value set later. (The monitor's is a plain dataclass with the same behaviour and
    `model_validate`, to keep pydantic out of its small agent.)"""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MeshConfig(Section):
    listen: str = "127.0.0.1:50051"
    home: str = "~/.aifb"
    auth: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # The CA that signed tls_cert, for the mesh's own clients (jobs, agents); default tls_cert.
    tls_ca: str = ""
    # The client certificate the mesh's own clients present under mTLS (signed by tls_client_ca).
    tls_mesh_cert: str = ""
    tls_mesh_key: str = ""
    insecure: bool = False
    otlp_endpoint: str = ""
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


class ServerConfig(Section):
    scheduler: Literal["auto", "local", "slurm", "slurmrest"] = "auto"
    slurmrest_url: str = ""
    slurmrest_user: str = ""
    recipe_dirs: list[str] = Field(default_factory=list)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    poll_max_interval_seconds: float = Field(default=5.0, gt=0)
    advertise_address: str = ""
    local_kill_wait_seconds: float = Field(default=10.0, ge=0)
    # Monitor and logger agents started inside each job by the in-job entry point: "on",
    # "off", or "auto" (on for SLURM schedulers, whose jobs may land on nodes without agents).
    sidecars: Literal["auto", "on", "off"] = "auto"
    # host:port of the CollectorService the sidecars push to; empty: this server's address.
    sidecar_collector: str = ""


class Config(Section):
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    # The telemetry components' sections stay plain mappings here, so that `mesh` (which every
    # component imports) does not import them: each is validated by its own component's model
    # (CollectorConfig, MonitorConfig, LoggerConfig) through `section_config` where it is used.
    collector: dict[str, Any] = Field(default_factory=dict)
    monitor: dict[str, Any] = Field(default_factory=dict)
    logger: dict[str, Any] = Field(default_factory=dict)


def load_config(
    *,
    file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config. `overrides` are flags, as {"mesh": {"listen": ...}}; None values skip."""
    data = load_config_data(file=file, environ=environ, overrides=overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"config: {where}: {first['msg']}", field=where) from exc


def section_config(model: type[M], config: Config, section: str,
                   overrides: Mapping[str, Any] | None = None) -> M:
    """Validate one plain section (`collector`, `monitor`, `logger`) with its component's model;
    `overrides` (flags; None values skip) win. An error names the key: "config: collector.x"."""
    data = dict(getattr(config, section))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cast("M", model.model_validate(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in (section, *first["loc"]))
        raise InvalidArgument(f"config: {where}: {first['msg']}", field=where) from exc
    except ValueError as exc:  # a plain model (MonitorConfig) names its key in `loc`
        where = ".".join(str(p) for p in (section, *getattr(exc, "loc", ())))
        raise InvalidArgument(f"config: {where}: {exc}", field=where) from exc


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost listen addresses (host:port, [v6]:port)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

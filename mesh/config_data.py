"""The merged configuration data (no validation): packaged YAML defaults < config file <
AIFB_* environment < flags.

`aifb.mesh.config` validates it into typed models; an agent that only needs a key or two (the
home directory) reads it here without importing pydantic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from aifb.mesh.errors import InvalidArgument

__all__ = ["home_path", "load_config_data"]


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """AIFB_MESH__LISTEN=... -> {"mesh": {"listen": "..."}}; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("AIFB_") or "__" not in name:
            continue
        section, _, key = name[len("AIFB_"):].lower().partition("__")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}", field=str(path)) from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {path}: expected a mapping at the top", field=str(path))
    return data


def load_config_data(
    *,
    file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merged data. `overrides` are flags, as {"mesh": {"listen": ...}}; None values skip."""
    env = os.environ if environ is None else environ
    text = resources.files("aifb.mesh").joinpath("defaults.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    path = Path(file) if file else Path(env.get("AIFB_CONFIG", "~/.config/aifb/config.yaml"))
    path = path.expanduser()
    if file or path.exists():
        data = _deep_merge(data, _read_yaml(path))
    data = _deep_merge(data, _env_overrides(env))
    if overrides:
        clean = {s: {k: v for k, v in vals.items() if v is not None}
                 for s, vals in overrides.items()}
        data = _deep_merge(data, clean)
    return data


def home_path(data: Mapping[str, Any]) -> Path:
    """`mesh.home` of merged data, expanded (what `MeshConfig.home_path` gives)."""
    mesh = data.get("mesh")
    home = mesh.get("home") if isinstance(mesh, Mapping) else None
    return Path(home if isinstance(home, str) else "~/.aifb").expanduser()

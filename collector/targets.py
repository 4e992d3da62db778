"""Checks of the forwarding targets a user gives (flags or config), before anything starts.

A mistyped URL would otherwise only show as every remote write or Loki push failing and its
data counted as dropped; here it is one clear error naming the setting.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aifb.collector.config import CollectorConfig
from aifb.mesh.errors import InvalidArgument

__all__ = ["check_targets"]


def _check(url: str, key: str, example: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"collector.{key}: expected an http(s) URL such as {example}, "
                              f"got {url!r}", field=f"collector.{key}")
    try:
        _ = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"collector.{key}: bad port in {url!r}",
                              field=f"collector.{key}") from exc


def check_targets(config: CollectorConfig) -> CollectorConfig:
    """`config` when its remote-write and Loki URLs (those set) are usable http(s) URLs."""
    if config.remote_write_url:
        _check(config.remote_write_url, "remote_write_url",
               "http://127.0.0.1:9090/api/v1/write")
    if config.loki_url:
        _check(config.loki_url, "loki_url", "http://127.0.0.1:3100")
    return config

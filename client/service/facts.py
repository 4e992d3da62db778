"""Facts about the machine and software a run came from, for reports (read once per process)."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

__all__ = ["node_facts"]

_PACKAGES = ("aifb", "grpcio", "protobuf", "hdrhistogram", "uvloop", "pyarrow", "pyspark")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _meminfo_mib() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def node_facts() -> dict[str, Any]:
    """Host, OS, CPU, memory and the versions of the packages that shape the numbers."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(cpus) if cpus is not None else None,
        "memory_mib": _meminfo_mib(),
        "python": sys.version.split()[0],
        "versions": {p: v for p in _PACKAGES if (v := _version(p)) is not None},
    }

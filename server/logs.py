"""A service's stdout and stderr as GetServiceLogs returns them: the last bytes of each file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aifb.mesh.errors import InvalidArgument
from aifb.server.model import ServiceRecord

__all__ = ["DEFAULT_LOG_TAIL", "MAX_LOG_TAIL", "ServiceLogs", "read_logs"]

DEFAULT_LOG_TAIL = 64 * 1024
MAX_LOG_TAIL = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceLogs:
    stdout: str
    stderr: str  # empty when the job writes both streams to one file
    truncated: bool  # either file is longer than what was read


def _tail(path: str, limit: int) -> tuple[str, bool]:
    if not path:
        return "", False
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    except FileNotFoundError:
        return "", False
    return data.decode("utf-8", errors="replace"), size > limit


def read_logs(record: ServiceRecord, tail_bytes: int) -> ServiceLogs:
    """The last `tail_bytes` (0: DEFAULT_LOG_TAIL) of the job's output files."""
    if not 0 <= tail_bytes <= MAX_LOG_TAIL:
        raise InvalidArgument(f"tail_bytes must be 0..{MAX_LOG_TAIL}", field="tail_bytes")
    limit = tail_bytes or DEFAULT_LOG_TAIL
    out, cut_out = _tail(record.stdout_path, limit)
    err, cut_err = "", False
    if record.stderr_path != record.stdout_path:
        err, cut_err = _tail(record.stderr_path, limit)
    return ServiceLogs(out, err, cut_out or cut_err)

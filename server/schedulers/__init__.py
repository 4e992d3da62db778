"""The scheduler backends (local, slurm CLI, slurmrestd) and the factory that picks one by name.

    make_scheduler("local", state_dir=..., kill_wait_seconds=10.0)
    make_scheduler("slurm", timeout=30.0, env={"SLURM_CONF": ...})
    make_scheduler("slurmrest", url="unix:/run/slurmrestd.sock")  # or http://host:6820, token=
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
from typing import Any

from aifb.mesh.errors import InvalidArgument
from aifb.server.jobs import Scheduler
from aifb.server.schedulers.local import LocalScheduler
from aifb.server.schedulers.slurm_cli import SlurmCliScheduler
from aifb.server.schedulers.slurm_rest import SlurmRestScheduler

__all__ = [
    "SCHEDULER_KINDS",
    "LocalScheduler",
    "SlurmCliScheduler",
    "SlurmRestScheduler",
    "detect_default_kind",
    "make_scheduler",
]

SCHEDULER_KINDS: dict[str, type[LocalScheduler | SlurmCliScheduler | SlurmRestScheduler]] = {
    "local": LocalScheduler,
    "slurm": SlurmCliScheduler,
    "slurmrest": SlurmRestScheduler,
}


def make_scheduler(kind: str, **options: Any) -> Scheduler:
    """A scheduler of `kind` built with `options`; InvalidArgument names what is wrong."""
    cls = SCHEDULER_KINDS.get(kind)
    if cls is None:
        valid = ", ".join(sorted(SCHEDULER_KINDS))
        raise InvalidArgument(f"unknown scheduler {kind!r}; valid: {valid}", field="scheduler")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(sorted(params))
        raise InvalidArgument(
            f"unknown option(s) {', '.join(unknown)} for scheduler {kind!r}; valid: {valid}",
            field="scheduler_options",
        )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in options]
    if missing:
        raise InvalidArgument(
            f"scheduler {kind!r} needs option(s): {', '.join(missing)}", field="scheduler_options"
        )
    scheduler: Scheduler = cls(**options)
    return scheduler


def detect_default_kind(timeout: float = 2.0) -> str:
    """"slurm" when sbatch is on PATH and sinfo answers within `timeout` seconds, else "local"."""
    sinfo = shutil.which("sinfo")
    if shutil.which("sbatch") is None or sinfo is None:
        return "local"
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            [sinfo, "-h", "-o", "%P"], capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "local"
    return "slurm" if done.returncode == 0 else "local"

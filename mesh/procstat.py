"""Every process' state, process group and session from /proc (Linux), for the parts that
end what a job left behind: the in-job entry point (its program's group) and the local
executor (a job's session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["ProcStat", "processes"]


class ProcStat(NamedTuple):
    pid: int
    state: str  # "R", "S", ..., "Z" (zombie), "X" (dead)
    pgrp: int
    session: int

    @property
    def gone(self) -> bool:
        return self.state in ("Z", "X")


def processes() -> Iterator[ProcStat]:
    """The processes that exist now (those that end while this reads are skipped)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp sid
        if len(fields) > 3:
            yield ProcStat(int(name), fields[0].decode("ascii", "replace"), int(fields[2]),
                           int(fields[3]))

"""What a program leaves behind when it ends: its own process group, ended before a restart.

A server program often starts helpers: nginx's master forks its workers, and a `kill -9` of the
master leaves them serving and holding the port, so a restarted nginx cannot bind it. The entry
point therefore starts the program as the leader of a process group of its own, and once the
program has ended it sends that group SIGTERM, then SIGKILL after a grace period. It is also a
child subreaper (Linux `prctl`), so the helpers the dead program orphaned become its children
and are reaped here instead of lingering as zombies of an unrelated init. Signals for the
program (a stop, a failed liveness check) go to the whole group as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time

from aifb.mesh.procstat import processes

__all__ = ["become_subreaper", "end_group", "group_members", "signal_group"]

log = logging.getLogger("aifb.jobrun")

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants this process' children (Linux); False where not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _scan(pgid: int) -> tuple[list[int], list[int]]:
    """(live, zombie) processes of process group `pgid`."""
    members = [p for p in processes() if p.pgrp == pgid]
    return [p.pid for p in members if not p.gone], [p.pid for p in members if p.gone]


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    return _scan(pgid)[0]


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those that are our children (adopted as subreaper)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


async def end_group(pgid: int, grace: float) -> int:
    """End what is left of the ended program's group: SIGTERM, then SIGKILL after `grace`
    seconds; reap those that became our children. Returns how many were still running."""
    left, dead = _scan(pgid)
    _reap(dead)  # helpers that died with the program (or were stopped with it)
    if not left:
        return 0
    log.info("the program left %d process(es) in its group; ending them", len(left))
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pause = 0.002  # most helpers end within milliseconds of SIGTERM: look again soon
    while True:
        alive, dead = _scan(pgid)
        _reap(dead)
        if not alive or time.monotonic() >= deadline:
            break
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)
    if alive:
        log.warning("%d process(es) of the program's group ignored SIGTERM; killing them",
                    len(alive))
        signal_group(pgid, signal.SIGKILL)
        for _ in range(100):
            alive, dead = _scan(pgid)
            _reap(dead)
            if not alive:
                break
            await asyncio.sleep(0.02)
    return len(left)

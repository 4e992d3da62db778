"""Per-service process trees: CPU seconds, RSS, threads and open fds of each job's processes.

A job's root processes come from a `RootResolver` (a pid from discovery or config, `scontrol
listpids <jobid>` for SLURM jobs, or the local executor's pid file); their descendants are found
by one scan of the process table every `refresh_seconds`, which also counts open fds. Between
scans only the known members are read: on Linux one read of /proc/<pid>/stat each.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import psutil  # type: ignore[import-untyped]

from aifb.mesh.discovery import Target
from aifb.monitor.model import COUNTER, MetricSet

__all__ = ["JobUsage", "ProcStat", "ProcessTreeCollector", "RootResolver", "Runner",
           "StatReader", "read_proc_stat", "run_command"]

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]
_HAVE_PROC = Path("/proc/self/stat").exists()
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def run_command(argv: Sequence[str], timeout: float = 5.0) -> str:
    """Run a command (no shell) and return its stdout; raises OSError or CalledProcessError."""
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        list(argv), capture_output=True, text=True, timeout=timeout,
                          check=True)
    return done.stdout


class ProcStat(NamedTuple):
    pid: int
    ppid: int
    start: int
    cpu_seconds: float
    threads: int
    rss_bytes: int


def _parse_stat(pid: int, raw: bytes) -> ProcStat:
    f = raw[raw.rindex(b")") + 2:].split()
    return ProcStat(pid, int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / _TICK,
                    int(f[17]), int(f[21]) * _PAGE)


def read_proc_stat(pid: int) -> ProcStat | None:
    """One process's counters (None when it is gone)."""
    if _HAVE_PROC:
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:
            return None
        return _parse_stat(pid, raw)
    try:  # other systems: psutil
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            return ProcStat(pid, p.ppid(), int(p.create_time() * 1000), t.user + t.system,
                            p.num_threads(), p.memory_info().rss)
    except psutil.Error:
        return None


class StatReader:
    """Reads /proc/<pid>/stat through descriptors kept open between collections: a pread at 0
    re-renders the file, which saves the path lookup, open and close of every read. A kept
    descriptor stays bound to its process, so a reused pid reads as gone (ESRCH)."""

    def __init__(self, max_open: int = 2048) -> None:
        self._fds: dict[int, int] = {}
        self._max_open = max_open

    def read(self, pid: int) -> ProcStat | None:
        if not _HAVE_PROC:
            return read_proc_stat(pid)
        fd = self._fds.get(pid)
        if fd is None:
            if len(self._fds) >= self._max_open:
                return read_proc_stat(pid)
            try:
                fd = self._fds[pid] = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
            except OSError:
                return None
        try:
            return _parse_stat(pid, os.pread(fd, 4096, 0))
        except OSError:
            self.forget(pid)
            return None

    def forget(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self.forget(pid)


def _open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) if _HAVE_PROC else (
            psutil.Process(pid).num_fds())
    except (OSError, psutil.Error):
        return None


def _all_parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for pid in psutil.pids():
        st = read_proc_stat(pid)
        if st is not None:
            parents[pid] = st.ppid
    return parents


class RootResolver:
    """Finds a target's root pids: its own pid, SLURM's `scontrol listpids`, or the local
    executor's job record (`aifb-<job_id>.json` in the job's workdir, or the link
    `<local state dir>/jobs/<job_id>`), checked against the recorded process start time."""

    def __init__(self, runner: Runner | None = None, *,
                 local_state_dirs: Sequence[Path] = ()) -> None:
        self.runner = runner or run_command
        self.local_state_dirs = tuple(local_state_dirs)

    def __call__(self, target: Target) -> list[int]:
        if target.pid:
            return [target.pid]
        if target.scheduler in ("slurm", "slurmrest") and target.job_id:
            return self._listpids(target.job_id)
        if target.job_id and "/" not in target.job_id:
            records = [d / "jobs" / target.job_id for d in self.local_state_dirs]
            records += [Path(p).parent / f"aifb-{target.job_id}.json"
                        for p in (target.stdout_path, target.stderr_path) if p]
            for record in records:
                found = _read_local_record(record)
                if found:
                    return [found]
        return []

    def _listpids(self, job_id: str) -> list[int]:
        try:
            text = self.runner(["scontrol", "listpids", job_id])
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("scontrol listpids %s failed: %s", job_id, exc)
            return []
        pids = []
        for line in text.splitlines()[1:]:
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if first.isdigit() and int(first) > 0:
                pids.append(int(first))
        return pids


def _read_local_record(path: Path) -> int | None:
    """The pid of a live local job from its JSON record (None if gone or the pid was reused)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    st = read_proc_stat(pid)
    if st is None or (record.get("start_ticks") is not None
                      and st.start != int(record["start_ticks"])):
        return None
    return pid


@dataclass
class _Tree:
    members: dict[int, int] = field(default_factory=dict)  # pid -> start time (pid reuse)
    fds: dict[int, int] = field(default_factory=dict)  # pid -> open fds at the last refresh
    last_cpu: dict[int, float] = field(default_factory=dict)
    dead_cpu: float = 0.0
    prev_total: float | None = None
    prev_time: float | None = None


@dataclass(frozen=True)
class JobUsage:
    """One service's processes right now, for the snapshot summary."""

    service: str
    job_id: str
    processes: int
    cpu_seconds: float
    cpu_ratio: float
    rss_bytes: int
    pids: frozenset[int]


class ProcessTreeCollector:
    """Keeps each target's process tree and reports it with `service` and `job_id` labels."""

    def __init__(self, resolver: Callable[[Target], list[int]] | None = None, *,
                 refresh_seconds: float = 10.0, count_fds: bool = True) -> None:
        self.resolver = resolver or RootResolver()
        self.refresh_seconds = refresh_seconds
        self.count_fds = count_fds
        self._trees: dict[str, _Tree] = {}
        self._roots: dict[str, tuple[int, ...]] = {}
        self._last_refresh = -1e9
        self.usage: list[JobUsage] = []
        self._stat = StatReader()

    def close(self) -> None:
        self._stat.close()

    def _refresh(self, targets: Mapping[str, Target]) -> None:
        roots = {name: tuple(self.resolver(t)) for name, t in targets.items()}
        parents = _all_parents()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        for name, pids in roots.items():
            tree = self._trees.setdefault(name, _Tree())
            found: set[int] = set()
            stack = [p for p in pids if p in parents]
            while stack:
                pid = stack.pop()
                if pid not in found:
                    found.add(pid)
                    stack.extend(children.get(pid, ()))
            for pid in found - tree.members.keys():
                st = read_proc_stat(pid)
                if st is not None:
                    tree.members[pid] = st.start
            if self.count_fds:  # listing fd/ costs as much as reading stat: once per refresh
                tree.fds = {pid: n for pid in tree.members if (n := _open_fds(pid)) is not None}
        self._roots = roots
        self._last_refresh = time.monotonic()

    def collect(self, targets: Mapping[str, Target], out: MetricSet) -> list[JobUsage]:
        for gone in set(self._trees) - set(targets):
            for pid in self._trees.pop(gone).members:
                self._stat.forget(pid)
        if (time.monotonic() - self._last_refresh >= self.refresh_seconds
                or set(targets) != set(self._roots)):
            self._refresh(targets)
        now = time.monotonic()
        usage: list[JobUsage] = []
        for name, target in targets.items():
            tree = self._trees.setdefault(name, _Tree())
            labels = {"service": name, "job_id": target.job_id}
            cpu = 0.0
            rss = threads = fds = 0
            live: set[int] = set()
            for pid, start in list(tree.members.items()):
                st = self._stat.read(pid)
                if st is None or st.start != start:
                    tree.dead_cpu += tree.last_cpu.pop(pid, 0.0)
                    del tree.members[pid]
                    tree.fds.pop(pid, None)
                    self._stat.forget(pid)
                    continue
                live.add(pid)
                tree.last_cpu[pid] = st.cpu_seconds
                cpu += st.cpu_seconds
                rss += st.rss_bytes
                threads += st.threads
                fds += tree.fds.get(pid, 0)
            total = cpu + tree.dead_cpu
            ratio = 0.0
            if tree.prev_total is not None and tree.prev_time is not None and now > tree.prev_time:
                ratio = max(0.0, (total - tree.prev_total) / (now - tree.prev_time))
            tree.prev_total, tree.prev_time = total, now
            out.add("aifb_service_processes", len(live), labels,
                    help="Processes of the service's job on this node.")
            if live:
                out.add("aifb_service_cpu_seconds_total", total, labels, type=COUNTER,
                        help="CPU seconds (user + system) of the job's processes, "
                             "including exited ones.")
                out.add("aifb_service_memory_rss_bytes", rss, labels,
                        help="Resident memory of the job's processes.")
                out.add("aifb_service_threads", threads, labels, help="Threads.")
                if self.count_fds:
                    out.add("aifb_service_open_fds", fds, labels, help="Open file descriptors.")
            usage.append(JobUsage(name, target.job_id, len(live), total, ratio, rss,
                                  frozenset(live)))
        self.usage = usage
        return usage

    def pid_owner(self) -> dict[int, tuple[str, str]]:
        """pid -> (service, job_id) for every known member (maps GPU processes to jobs)."""
        return {pid: (u.service, u.job_id) for u in self.usage for pid in u.pids}


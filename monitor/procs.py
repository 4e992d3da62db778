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
from itertools import chain, repeat
from operator import add, itemgetter, methodcaller, truediv
from pathlib import Path
from typing import NamedTuple

import psutil  # type: ignore[import-untyped]

from aifb.mesh.discovery import Target
from aifb.monitor.model import COUNTER, MetricSet

__all__ = ["JobUsage", "ProcStat", "ProcessTreeCollector", "RootResolver", "Runner",
           "StatReader", "parse_stats", "read_proc_stat", "run_command"]

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]
_HAVE_PROC = Path("/proc/self/stat").exists()
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FULL_SCAN_EVERY = 6  # refreshes: the process table is scanned at least this often


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


# After the command name: ppid, utime, stime, num_threads, starttime, rss (fields 4, 14, 15,
# 20, 22, 24 of proc(5), counted from 1 with the pid).
_PICK = itemgetter(1, 11, 12, 17, 19, 21)
_AFTER_COMM = methodcaller("rpartition", b") ")
_THIRD = itemgetter(2)
_SPLIT = methodcaller("split", None, 22)  # the fields up to rss, not the ~30 after it


def parse_stats(pids: Sequence[int], raws: Sequence[bytes]) -> list[ProcStat]:
    """`_parse_stat` of many processes at once: one `int` pass over all picked fields, the
    rest C-level maps (no Python bytecode per process)."""
    picked = map(_PICK, map(_SPLIT, map(_THIRD, map(_AFTER_COMM, raws))))
    flat = list(map(int, chain.from_iterable(picked)))
    cpu = map(truediv, map(add, flat[1::6], flat[2::6]), repeat(_TICK))
    return list(map(ProcStat, pids, flat[0::6], flat[4::6], cpu, flat[3::6],
                    map(_PAGE.__mul__, flat[5::6])))


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
    descriptor stays bound to its process, so a reused pid reads as gone (ESRCH).

    `read_many` skips the stat of a single-threaded process whose /proc/<pid>/schedstat (its
    run time in ns, a quarter of the cost to render) has not moved since the last read: a
    process that has not run has the same CPU times and threads. Its RSS (which reclaim may
    lower meanwhile) is read again at every `full=True` call. For a multi-threaded process
    schedstat covers the main thread only, so its stat is always read."""

    def __init__(self, max_open: int = 2048) -> None:
        self._fds: dict[int, int] = {}
        self._sched_fds: dict[int, int] = {}
        self._last: dict[int, tuple[bytes, ProcStat]] = {}  # single-threaded processes only
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

    def _open(self, pids: Sequence[int], fds: dict[int, int], name: str) -> list[int] | None:
        """Kept descriptors of /proc/<pid>/<name> for every pid; None if one cannot be."""
        found = list(map(fds.get, pids))
        if None in found:
            if len(self._fds) + len(self._sched_fds) + 2 * found.count(None) > self._max_open:
                return None
            for i, pid in enumerate(pids):
                if found[i] is None:
                    try:
                        found[i] = fds[pid] = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
                    except OSError:
                        return None  # gone: the one-by-one reads say which
        return found  # type: ignore[return-value]

    def read_many(self, pids: Sequence[int], *, full: bool = False) -> list[ProcStat | None]:
        """`read` of each pid; while every one is alive, a bulk pass of preads and parsing."""
        if not _HAVE_PROC:
            return [self.read(pid) for pid in pids]
        sched_fds = self._open(pids, self._sched_fds, "schedstat")
        stat_fds = self._open(pids, self._fds, "stat")
        if sched_fds is None or stat_fds is None:
            return [self.read(pid) for pid in pids]
        try:
            runs = list(map(os.pread, sched_fds, repeat(64), repeat(0)))
            last = self._last
            olds = list(map(last.get, pids))
            stale = [i for i, (run, old) in enumerate(zip(runs, olds, strict=True))
                     if full or old is None or old[0] != run]
            fresh = parse_stats([pids[i] for i in stale],
                                [os.pread(stat_fds[i], 4096, 0) for i in stale])
        except OSError:  # one of them exited
            return [self.read(pid) for pid in pids]
        out: list[ProcStat | None] = [old[1] if old is not None else None for old in olds]
        for i, st in zip(stale, fresh, strict=True):
            out[i] = st
            if st.threads == 1:
                last[st.pid] = (runs[i], st)
            else:
                last.pop(st.pid, None)
        return out

    def last_run(self, pid: int) -> bytes | None:
        """The schedstat read last for a single-threaded process (None for others)."""
        found = self._last.get(pid)
        return None if found is None else found[0]

    def forget(self, pid: int) -> None:
        self._last.pop(pid, None)
        for fds in (self._fds, self._sched_fds):
            fd = fds.pop(pid, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds) + list(self._sched_fds):
            self.forget(pid)


def _open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) if _HAVE_PROC else (
            psutil.Process(pid).num_fds())
    except (OSError, psutil.Error):
        return None


def _all_parents() -> dict[int, int]:
    if not _HAVE_PROC:
        return {pid: st.ppid for pid in psutil.pids() if (st := read_proc_stat(pid)) is not None}
    pids: list[int] = []
    raws: list[bytes] = []
    for pid in psutil.pids():
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
            try:
                raws.append(os.read(fd, 4096))
            finally:
                os.close(fd)
        except OSError:
            continue
        pids.append(pid)
    return {st.pid: st.ppid for st in parse_stats(pids, raws)}


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
        self._scanned_pids: frozenset[int] | None = None
        self._scans_skipped = 0
        self._fd_runs: dict[int, bytes] = {}  # schedstat at each pid's last fd count
        self._known_parents: dict[int, int] = {}
        self.usage: list[JobUsage] = []
        self._stat = StatReader()

    def close(self) -> None:
        self._stat.close()

    def _refresh(self, targets: Mapping[str, Target]) -> None:
        roots = {name: tuple(self.resolver(t)) for name, t in targets.items()}
        # With the same roots and the same process table as at the last scan, no process can
        # have joined a tree (a new one needs a new pid): no scan. Otherwise only new pids are
        # read; every `_FULL_SCAN_EVERY` refreshes, all (a pid reused meanwhile).
        pids = frozenset(psutil.pids()) if _HAVE_PROC else None
        self._scans_skipped += 1
        full = self._scans_skipped >= _FULL_SCAN_EVERY
        if pids is None or pids != self._scanned_pids or roots != self._roots or full:
            self._scan(roots, pids, full)
            self._scanned_pids = pids
            if full:
                self._scans_skipped = 0
        if self.count_fds:
            self._count_fds()
        self._roots = roots
        self._last_refresh = time.monotonic()

    def _parents(self, pids: frozenset[int] | None, full: bool) -> dict[int, int]:
        """pid -> ppid of every process. Between full scans only new processes and the
        children of exited ones (reparented) are read; the others keep their parent."""
        known = self._known_parents
        if full or pids is None or not known:
            known = _all_parents()
        else:
            gone = known.keys() - pids
            orphans = {pid for pid, ppid in known.items() if ppid in gone}
            for pid in gone:
                del known[pid]
            for pid in sorted((pids - known.keys()) | orphans):
                st = read_proc_stat(pid)
                if st is None:
                    known.pop(pid, None)
                else:
                    known[pid] = st.ppid
        self._known_parents = known
        return known

    def _scan(self, roots: Mapping[str, tuple[int, ...]], pids: frozenset[int] | None,
              full: bool) -> None:
        parents = self._parents(pids, full)
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        for name, root_pids in roots.items():
            tree = self._trees.setdefault(name, _Tree())
            found: set[int] = set()
            stack = [p for p in root_pids if p in parents]
            while stack:
                pid = stack.pop()
                if pid not in found:
                    found.add(pid)
                    stack.extend(children.get(pid, ()))
            for pid in found - tree.members.keys():
                st = read_proc_stat(pid)
                if st is not None:
                    tree.members[pid] = st.start

    def _count_fds(self) -> None:
        """Open fds of every member (listing fd/ costs as much as reading stat: once per
        refresh). A single-threaded process that has not run since its last count (its
        schedstat unchanged) has the same fds: its count is kept."""
        counted = self._fd_runs
        for tree in self._trees.values():
            fds: dict[int, int] = {}
            for pid in tree.members:
                run = self._stat.last_run(pid)
                old = tree.fds.get(pid)
                if run is not None and old is not None and counted.get(pid) == run:
                    fds[pid] = old
                elif (n := _open_fds(pid)) is not None:
                    fds[pid] = n
                    if run is not None:
                        counted[pid] = run
            tree.fds = fds
        live = {pid for tree in self._trees.values() for pid in tree.members}
        for pid in [p for p in counted if p not in live]:
            del counted[pid]

    def collect(self, targets: Mapping[str, Target], out: MetricSet) -> list[JobUsage]:
        for gone in set(self._trees) - set(targets):
            for pid in self._trees.pop(gone).members:
                self._stat.forget(pid)
        refreshed = (time.monotonic() - self._last_refresh >= self.refresh_seconds
                     or set(targets) != set(self._roots))
        if refreshed:
            self._refresh(targets)
        now = time.monotonic()
        usage: list[JobUsage] = []
        for name, target in targets.items():
            tree = self._trees.setdefault(name, _Tree())
            labels = {"service": name, "job_id": target.job_id}
            cpu = 0.0
            rss = threads = fds = 0
            live: set[int] = set()
            members = list(tree.members.items())
            stats = self._stat.read_many([pid for pid, _ in members], full=refreshed)
            for (pid, start), st in zip(members, stats, strict=True):
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


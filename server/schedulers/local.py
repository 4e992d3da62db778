"""The `local` scheduler: runs a job's batch script as a local process group, in SLURM's words.

How a job runs. `submit` writes the script to `<workdir>/job.sbatch` (workdir mode 0700) and
starts, as a new session (its own process group, pgid = pid):

    bash -c WRAPPER aifb-local <workdir>/job.sbatch <workdir>/aifb-<id>.exit

The wrapper runs `bash <script>`, writes `$?` to the `.exit` file (tmp + rename) and exits with
it. The two paths travel as argv, never inside the command text. The wrapper traps TERM, INT
and HUP with a no-op handler, so a cancel's SIGTERM to the group ends the job while the
wrapper lives on to record the status (a handler, unlike an ignored signal, is reset in the
job it starts). stdout/stderr go to `spec.stdout_path`/`spec.stderr_path` (`%j` and `%x`
expanded as SLURM does); the environment is os.environ + `spec.environment` +
`AIFB_LOCAL_JOB_ID`, then whatever the script exports.

How a restarted server finds its jobs. Ids ("local-N") come from a counter in `state_dir`
(under flock), so they stay unique across restarts. Each job has a record
`<workdir>/aifb-<id>.json` (pid = pgid, the process's start time in clock ticks since
boot from /proc/<pid>/stat, the boot id), and `<state_dir>/jobs/<id>` links to it. A job is
alive while a non-zombie process with that pid AND that start time exists (a reused pid has
another start time; a reboot has another boot id). Once it is gone, the `.exit` file gives
the exit status, and `aifb-<id>.cancelled` (the last signal a cancel sent, written before
sending it) says it was cancelled. So a LocalScheduler that did not start a job can report it.

States: RUNNING, then COMPLETED (exit 0), FAILED (reason NonZeroExitCode, exit_code set; a
status above 128 from bash is reported as signal = status - 128) or CANCELLED (signal set).
`cancel` sends SIGTERM to the group, then SIGKILL after `kill_wait_seconds` (SLURM's KillWait).
Children started here are reaped by one waiting thread each; `query` reads only files.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from aifb.mesh.errors import SchedulerRejected, SchedulerUnavailable
from aifb.mesh.private import private_dir
from aifb.mesh.procstat import processes
from aifb.server.jobs import JobSpec, JobStatus

__all__ = ["LocalScheduler", "count_gpus", "process_start_ticks"]

logger = logging.getLogger(__name__)

_WRAPPER = (
    'trap : TERM INT HUP; bash "$1"; rc=$?; '
    'printf "%s\\n" "$rc" > "$2.tmp" && mv -f "$2.tmp" "$2"; exit "$rc"'
)


def count_gpus() -> int:
    """NVIDIA GPUs visible through pynvml; 0 when pynvml or the driver is missing."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return 0
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError: no driver, no device
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live, non-zombie process (clock ticks since boot), else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # comm may hold spaces and parentheses
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT_ID = _read_boot_id()


def _physical_memory_mib() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return None


@dataclass
class _Job:
    job_id: str
    workdir: Path
    pid: int
    start_ticks: int | None
    boot_id: str
    proc: subprocess.Popen[bytes] | None = None
    name: str = ""
    final: JobStatus | None = None
    kill_timer: threading.Timer | None = field(default=None, repr=False)

    def file(self, suffix: str) -> Path:
        return self.workdir / f"aifb-{self.job_id}.{suffix}"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.returncode is None
        if self.boot_id and self.boot_id != _BOOT_ID:
            return False
        ticks = process_start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)


class LocalScheduler:
    """Run jobs as local process groups. `state_dir` keeps the id counter and the job index
    (default ~/.aifb/local-jobs); `kill_wait_seconds` is the SIGTERM-to-SIGKILL grace;
    `cpus`/`gpus`/`memory_mib` override what the machine is said to have."""

    name = "local"

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        kill_wait_seconds: float = 10.0,
        cpus: int | None = None,
        gpus: int | None = None,
        memory_mib: int | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir else Path.home() / ".aifb" / "local-jobs"
        private_dir(self.state_dir / "jobs")
        self.kill_wait_seconds = kill_wait_seconds
        self.cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        self.gpus = gpus if gpus is not None else count_gpus()
        self.memory_mib = memory_mib if memory_mib is not None else _physical_memory_mib()
        self._bash = shutil.which("bash") or "/bin/bash"
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    # -- submit -------------------------------------------------------------------------------

    def _check_resources(self, spec: JobSpec) -> None:
        res = spec.resources
        problems = []
        if res.nodes > 1:
            problems.append(f"{res.nodes} nodes (the local executor has 1)")
        if res.cpus > self.cpus:
            problems.append(f"{res.cpus} CPUs (this machine has {self.cpus})")
        if res.gpus > self.gpus:
            problems.append(f"{res.gpus} GPUs (this machine has {self.gpus})")
        if self.memory_mib is not None and res.memory_mib > self.memory_mib:
            problems.append(f"{res.memory_mib} MiB of memory (this machine has {self.memory_mib})")
        if problems:
            raise SchedulerRejected(
                f"job {spec.job_name!r} can never run here: it asks for " + ", ".join(problems),
                scheduler="local",
            )

    def _next_id(self) -> str:
        path = self.state_dir / "counter"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+", encoding="ascii") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            text = fh.read().strip()
            number = (int(text) if text.isdigit() else 0) + 1
            fh.seek(0)
            fh.truncate()
            fh.write(f"{number}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return f"local-{number}"

    async def submit(self, spec: JobSpec, script: str) -> str:
        self._check_resources(spec)
        try:
            job = self._start(spec, script, self._next_id())
        except OSError as exc:
            raise SchedulerUnavailable(f"the local executor could not start {spec.job_name!r}: "
                                       f"{exc}", scheduler="local") from exc
        logger.info("started %s as %s (pid %d)", spec.job_name, job.job_id, job.pid)
        return job.job_id

    def _start(self, spec: JobSpec, script: str, job_id: str) -> _Job:
        workdir = Path(spec.workdir)
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        script_path = workdir / "job.sbatch"
        _write_private(script_path, script)
        env = {**os.environ, **spec.environment, "AIFB_LOCAL_JOB_ID": job_id}
        exit_path = workdir / f"aifb-{job_id}.exit"
        stdout = _log_path(spec.stdout_path or "slurm-%j.out", job_id, spec.job_name, workdir)
        stderr = _log_path(spec.stderr_path, job_id, spec.job_name, workdir) \
            if spec.stderr_path else stdout
        with _open_logs(stdout, stderr) as (out, err):
            proc = subprocess.Popen(  # noqa: S603 - fixed argv, the paths are arguments
                [self._bash, "-c", _WRAPPER, "aifb-local", str(script_path), str(exit_path)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        job = _Job(job_id, workdir, proc.pid, process_start_ticks(proc.pid), _BOOT_ID, proc,
                   name=spec.job_name)
        self._save(job)
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=proc.wait, name=f"aifb-reap-{job_id}", daemon=True).start()
        return job

    def _save(self, job: _Job) -> None:
        record = {"job_id": job.job_id, "workdir": str(job.workdir), "pid": job.pid,
                  "pgid": job.pid, "start_ticks": job.start_ticks, "boot_id": job.boot_id,
                  "name": job.name}
        path = job.file("json")
        _write_private(path, json.dumps(record))
        link = self.state_dir / "jobs" / job.job_id
        link.unlink(missing_ok=True)
        link.symlink_to(path)

    def _load(self, job_id: str) -> _Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return job
        if "/" in job_id or job_id.startswith("."):
            return None
        try:
            record = json.loads((self.state_dir / "jobs" / job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        job = _Job(job_id, Path(record["workdir"]), int(record["pid"]), record.get("start_ticks"),
                   str(record.get("boot_id", "")), name=str(record.get("name", "")))
        with self._lock:
            return self._jobs.setdefault(job_id, job)

    # -- query --------------------------------------------------------------------------------

    def _status(self, job: _Job) -> JobStatus:
        if job.final is not None:
            return job.final
        if job.alive():
            return JobStatus(job.job_id, "RUNNING", nodes="localhost")
        job.final = self._ended(job)  # a pending kill timer still fires: it ends stragglers
        return job.final

    def _ended(self, job: _Job) -> JobStatus:
        try:
            text = job.file("exit").read_text().strip()
            rc: int | None = int(text)
        except (OSError, ValueError):
            rc = None
        code: int | None = None
        sig: int | None = None
        if rc is not None:
            code, sig = (None, rc - 128) if rc > 128 else (rc, None)
        elif job.proc is not None and job.proc.returncode is not None:
            wrapper_rc = job.proc.returncode  # the wrapper itself was killed (SIGKILL)
            code, sig = (None, -wrapper_rc) if wrapper_rc < 0 else (wrapper_rc, None)
        try:  # the last signal cancel sent, for when nobody saw how the job ended
            sent = int(job.file("cancelled").read_text().strip() or 0)
        except (OSError, ValueError):
            sent = None
        if sent is not None:
            if code is None and sig is None:
                sig = sent or None
            return JobStatus(job.job_id, "CANCELLED", exit_code=code, signal=sig,
                             nodes="localhost")
        if code == 0:
            return JobStatus(job.job_id, "COMPLETED", exit_code=0, nodes="localhost")
        if code is None and sig is None:
            return JobStatus(job.job_id, "FAILED", reason="ExitStatusLost", nodes="localhost")
        reason = "NonZeroExitCode" if code is not None else f"Signal{sig}"
        return JobStatus(job.job_id, "FAILED", reason=reason, exit_code=code, signal=sig,
                         nodes="localhost")

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        for job_id in dict.fromkeys(job_ids):
            job = self._load(job_id)
            if job is not None:
                out[job_id] = self._status(job)
        return out

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        wanted = set(job_names)
        out: dict[str, list[str]] = {}
        if not wanted:
            return out
        for link in sorted((self.state_dir / "jobs").iterdir()):
            job = self._load(link.name)
            if job is not None and job.name in wanted and not self._status(job).terminal:
                out.setdefault(job.name, []).append(job.job_id)
        return out

    # -- cancel -------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> None:
        job = self._load(job_id)
        if job is None or self._status(job).terminal:
            logger.info("cancel %s: no such running job", job_id)
            return
        self._signal_group(job, signal.SIGTERM)
        timer = threading.Timer(self.kill_wait_seconds, self._kill_if_alive, args=(job,))
        timer.daemon = True
        job.kill_timer = timer
        timer.start()
        logger.info("cancel %s: SIGTERM sent to process group %d", job_id, job.pid)

    def _signal_group(self, job: _Job, sig: signal.Signals) -> None:
        ticks = process_start_ticks(job.pid)
        if ticks is not None and job.start_ticks is not None and ticks != job.start_ticks:
            return  # the pid belongs to another process now: never signal it
        _write_private(job.file("cancelled"), f"{int(sig)}\n")  # before the signal: a marker
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, sig)
        # The job's session: the in-job entry point runs the program in a process group of
        # its own (see aifb.job.leftovers), which a signal to the job's group does not reach.
        for group in _session_groups(job.pid) - {job.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)

    def _kill_if_alive(self, job: _Job) -> None:
        """SIGKILL what is left of the group, even after the job's main process has ended: like
        SLURM, nothing of a cancelled job outlives KillWait. A process group id is not reused
        while any member lives, so this cannot hit a stranger's group."""
        self._signal_group(job, signal.SIGKILL)

    async def close(self) -> None:
        """Nothing to stop: jobs outlive the executor, as SLURM jobs outlive the server.

        A pending SIGKILL (daemon timer) is lost if this process exits before it fires.
        """


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)


def _log_path(template: str, job_id: str, job_name: str, workdir: Path) -> Path:
    """A job's output path as SLURM would make it: %j/%x expanded, relative to workdir."""
    name = template.replace("%%", "\0").replace("%j", job_id).replace("%x", job_name)
    return workdir / name.replace("\0", "%")


@contextlib.contextmanager
def _open_logs(stdout: Path, stderr: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Open (truncate, mode 0600) the output files; one file object when both are the same."""
    handles: list[BinaryIO] = []
    try:
        for path in dict.fromkeys((stdout, stderr)):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            handles.append(os.fdopen(fd, "wb"))
        yield handles[0], handles[-1]
    finally:
        for fh in handles:
            fh.close()


def _session_groups(sid: int) -> set[int]:
    """The process groups of session `sid` (the job's bash is its leader)."""
    return {p.pgrp for p in processes() if p.session == sid}

"""The `slurm` scheduler: sbatch, squeue, sacct -c and scancel, run as argv lists with timeouts.

One `query` is ONE `squeue -h -t all -O <fields>` call for every id asked about; ids that squeue
no longer lists (purged after MinJobAge) are looked up with ONE `sacct -c` call (the
jobcomp/filetxt record, which needs no slurmdbd). Measured on SLURM 22.05 (2 CPUs) with 200
held jobs queued: the bare call, 204 jobs listed, `-O` 11 ms median and 5.6 kB of output against
`--json` 56 ms and 630 kB; a whole `query` of 200 ids, 298 jobs listed, 17 ms with `-O` against
89 ms with `--json` + json.loads + filtering (slurmrestd's GET /jobs: 94 ms). `--json` also
ignores every filter. Hence the format. Its fields are separated by ASCII unit separators
(0x1f), which never appear in job ids, states, reasons or node lists. squeue's `exit_code` is
a raw wait status (exit 3 -> 768, SIGTERM -> 15): `decode_wait_status` splits it.

Every call to a SLURM tool is counted in `calls` (a Counter keyed by tool name).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from aifb.mesh.errors import InvalidArgument, SchedulerRejected, SchedulerUnavailable
from aifb.server.jobs import TERMINAL_RAW_STATES, JobSpec, JobStatus

__all__ = [
    "SACCT_FORMAT",
    "SQUEUE_FORMAT",
    "SlurmCliScheduler",
    "check_job_id",
    "classify_slurm_error",
    "decode_wait_status",
    "parse_sacct",
    "parse_squeue",
]

logger = logging.getLogger(__name__)

_SEP = "\x1f"
SQUEUE_FORMAT = ",".join(f"{name}:{_SEP}" for name in ("JobID", "State", "Reason", "exit_code",
                                                       "NodeList"))
SACCT_FORMAT = "JobID,State,ExitCode,NodeList"
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
_TERMINAL_CACHE_SIZE = 10_000

# Messages that mean "the batch system did not answer", not "this job can never run".
_UNAVAILABLE_MARKERS = (
    "unable to contact slurm controller",
    "socket timed out",
    "zero bytes were transmitted",
    "connection refused",
    "communication connection failure",
    "temporarily unable to accept job",
    "backup controller in standby mode",
    "slurm_persist_conn",
)


def decode_wait_status(raw: int | None) -> tuple[int | None, int | None]:
    """(exit_code, signal) from a raw wait status, as squeue and slurmrestd report it.

    exit 3 -> 768 -> (3, None); killed by SIGTERM -> 15 -> (None, 15).
    """
    if raw is None or raw < 0:
        return None, None
    signal = raw & 0x7F
    if signal:
        return None, signal
    return (raw >> 8) & 0xFF, None


def check_job_id(job_id: str) -> str:
    """The id unchanged when it is a SLURM job id ("123" or "123_4"), else InvalidArgument."""
    if not _JOB_ID.match(job_id):
        raise InvalidArgument(f"not a SLURM job id: {job_id!r}", field="job_id")
    return job_id


def _clean(text: str) -> str:
    """SLURM's error lines without the "sbatch: error: " prefixes, joined by "; "."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\w+: error: ", "", line.strip())
        line = re.sub(r"^Batch job submission failed: ", "", line)
        if line:
            lines.append(line)
    return "; ".join(lines)


def classify_slurm_error(
    message: str, *, tool: str
) -> SchedulerRejected | SchedulerUnavailable:
    """The domain error for a SLURM tool's error text: unavailable when SLURM did not answer,
    rejected otherwise (bad partition, too much memory, GPUs that no node has, ...)."""
    text = _clean(message) or f"{tool} failed without a message"
    if any(marker in text.lower() for marker in _UNAVAILABLE_MARKERS):
        return SchedulerUnavailable(f"{tool}: {text}", tool=tool)
    return SchedulerRejected(f"{tool} rejected the job: {text}", tool=tool)


def _status(job_id: str, state: str, reason: str, raw_exit: int | None, nodes: str,
            *, raw_is_wait_status: bool) -> JobStatus:
    exit_code: int | None = None
    signal: int | None = None
    word = state.split()[0] if state else ""
    if word in TERMINAL_RAW_STATES and raw_exit is not None:
        exit_code, signal = decode_wait_status(raw_exit) if raw_is_wait_status else (raw_exit, None)
    return JobStatus(
        job_id=job_id,
        raw_state=state,
        reason="" if reason in ("None", "(null)") else reason,
        exit_code=exit_code,
        signal=signal,
        nodes="" if nodes == "(null)" else nodes,
    )


def parse_squeue(text: str, wanted: Iterable[str] | None = None) -> dict[str, JobStatus]:
    """Jobs from `squeue -h -t all -O SQUEUE_FORMAT` output, keeping only `wanted` ids."""
    keep = None if wanted is None else set(wanted)
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        fields = line.split(_SEP)
        if len(fields) < 5:
            continue
        job_id, state, reason, raw_exit, nodes = (f.strip() for f in fields[:5])
        if keep is not None and job_id not in keep:
            continue
        raw = int(raw_exit) if raw_exit.lstrip("-").isdigit() else None
        out[job_id] = _status(job_id, state, reason, raw, nodes, raw_is_wait_status=True)
    return out


def parse_sacct(text: str, wanted: Iterable[str] | None = None) -> dict[str, JobStatus]:
    """Jobs from `sacct -c -n -P --format=SACCT_FORMAT` output ("5|FAILED|3:0|vm")."""
    keep = None if wanted is None else set(wanted)
    out: dict[str, JobStatus] = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        job_id, state, exit_pair, nodes = (f.strip() for f in fields[:4])
        if keep is not None and job_id not in keep:
            continue
        code, _, sig = exit_pair.partition(":")
        status = _status(job_id, state, "", int(code) if code.isdigit() else None, nodes,
                         raw_is_wait_status=False)
        if status.exit_code is not None and sig.isdigit() and int(sig):
            status = JobStatus(job_id, status.raw_state, status.reason, None, int(sig),
                               status.nodes)
        out[job_id] = status  # the last record of a job id wins (requeued jobs)
    return out


class SlurmCliScheduler:
    """Submit, query and cancel SLURM jobs with the command-line tools.

    `timeout`: seconds each tool may take before SchedulerUnavailable. `env`: variables added
    to the tools' environment (for example SLURM_CONF). `bin_dir`: where the tools live (PATH
    by default).
    """

    name = "slurm"

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        bin_dir: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.calls: collections.Counter[str] = collections.Counter()
        self._env = {**os.environ, **env} if env else None
        self._bin_dir = bin_dir
        self._terminal: dict[str, JobStatus] = {}

    def _argv0(self, tool: str) -> str:
        return os.path.join(self._bin_dir, tool) if self._bin_dir else tool

    async def _run(self, tool: str, *args: str, cwd: str | None = None) -> tuple[int, str, str]:
        """Run one SLURM tool (no shell); (returncode, stdout, stderr)."""
        self.calls[tool] += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                self._argv0(tool), *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=self._env,
            )
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot run {tool}: {exc}", tool=tool) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError as exc:
            raise SchedulerUnavailable(
                f"{tool} did not answer within {self.timeout:g} s", tool=tool
            ) from exc
        finally:
            if proc.returncode is None:  # timed out or cancelled: do not leave it behind
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def submit(self, spec: JobSpec, script: str) -> str:
        workdir = Path(spec.workdir)
        path = workdir / "job.sbatch"
        try:
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(script)
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot write {path}: {exc}", tool="sbatch") from exc
        rc, out, err = await self._run("sbatch", "--parsable", str(path), cwd=str(workdir))
        if rc != 0:
            raise classify_slurm_error(err or out, tool="sbatch")
        lines = out.strip().splitlines()
        job_id = lines[-1].split(";")[0].strip() if lines else ""
        if not _JOB_ID.match(job_id):
            raise SchedulerUnavailable(f"sbatch printed no job id: {out.strip()!r}", tool="sbatch")
        logger.info("submitted %s as SLURM job %s", spec.job_name, job_id)
        return job_id

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        ids = [i for i in dict.fromkeys(job_ids) if _JOB_ID.match(i)]
        if not ids:
            return {}
        rc, out, err = await self._run("squeue", "-h", "-t", "all", "-O", SQUEUE_FORMAT)
        if rc != 0:
            raise SchedulerUnavailable(f"squeue: {_clean(err) or 'failed'}", tool="squeue")
        found = parse_squeue(out, ids)
        missing = [i for i in ids if i not in found]
        for job_id in list(missing):
            if job_id in self._terminal:  # already seen ended: it will not change
                found[job_id] = self._terminal[job_id]
                missing.remove(job_id)
        if missing:
            rc, out, err = await self._run(
                "sacct", "-c", "-n", "-P", "-j", ",".join(missing), f"--format={SACCT_FORMAT}"
            )
            if rc == 0:
                found.update(parse_sacct(out, missing))
            else:
                logger.warning("sacct -c failed, %d jobs stay unknown: %s", len(missing),
                               _clean(err))
        for job_id, status in found.items():
            if status.terminal:
                self._remember(job_id, status)
        return found

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        names = sorted(set(job_names))
        if not names:
            return {}
        # squeue lists pending and running jobs: the live ones. Our own only (--me).
        rc, out, err = await self._run("squeue", "-h", "--me", "--name", ",".join(names),
                                       "-o", "%i|%j")
        if rc != 0:
            raise SchedulerUnavailable(f"squeue: {_clean(err) or 'failed'}", tool="squeue")
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            job_id, _, name = line.strip().partition("|")
            if name in names and _JOB_ID.match(job_id):
                found.setdefault(name, []).append(job_id)
        return found

    def _remember(self, job_id: str, status: JobStatus) -> None:
        if job_id not in self._terminal and len(self._terminal) >= _TERMINAL_CACHE_SIZE:
            self._terminal.pop(next(iter(self._terminal)))
        self._terminal[job_id] = status

    async def cancel(self, job_id: str) -> None:
        rc, out, err = await self._run("scancel", check_job_id(job_id))
        if rc != 0:  # scancel exits 0 for unknown and finished jobs
            raise classify_slurm_error(err or out, tool="scancel")
        logger.info("cancelled SLURM job %s", job_id)

    async def close(self) -> None:
        """Nothing to release: every call is its own process."""

"""SLURM job stats, from one `squeue` call per refresh: one job (a job's own sidecar), or the
jobs whose batch host is this node (a node monitor). Either way each job has one reporter: a
job spanning nodes is reported by its batch host only, not once per node."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time

from aifb.monitor.model import MetricSet
from aifb.monitor.procs import Runner, run_command

__all__ = ["SlurmJobCollector", "parse_duration", "parse_memory"]

log = logging.getLogger(__name__)

_FORMAT = "%i|%T|%P|%u|%C|%m|%M|%l|%B"
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_duration(text: str) -> float | None:
    """SLURM's "[days-]hours:minutes:seconds" (or "minutes:seconds") in seconds; None if unknown."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def parse_memory(text: str) -> float | None:
    """SLURM's memory request ("4000M", "4G") in bytes; None if unknown."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not match:
        return None
    return float(match.group(1)) * _UNITS.get(match.group(2) or "M", 1)


class SlurmJobCollector:
    """Jobs running on `node` as squeue reports them (or job `job_id` alone); absent (with a
    status) without SLURM."""

    def __init__(self, node: str, *, runner: Runner | None = None, ttl_seconds: float = 15.0,
                 enabled: bool | None = None, job_id: str = "") -> None:
        self.node = node
        self.job_id = job_id
        self.runner = runner or run_command
        self.ttl_seconds = ttl_seconds
        self.enabled = shutil.which("squeue") is not None if enabled is None else enabled
        self.status = "" if self.enabled else "no SLURM: squeue not found"
        self._cache: list[list[str]] = []
        self._fetched = -1e9

    def _rows(self) -> list[list[str]]:
        if time.monotonic() - self._fetched < self.ttl_seconds:
            return self._cache
        self._fetched = time.monotonic()
        try:
            where = f"--jobs={self.job_id}" if self.job_id else f"--nodelist={self.node}"
            text = self.runner(["squeue", "--noheader", where,
                                "--states=RUNNING,COMPLETING,SUSPENDED", f"--format={_FORMAT}"])
            self.status = ""
        except (OSError, subprocess.SubprocessError) as exc:
            self.status = f"squeue failed: {exc}"
            log.debug("%s", self.status)
            self._cache = []
            return self._cache
        rows = [line.split("|") for line in text.splitlines() if line.count("|") == 8]
        # A node monitor reports the jobs whose batch script runs here; a job spanning nodes
        # is listed by every node's squeue --nodelist, and would be counted once per node.
        self._cache = [row[:8] for row in rows
                       if self.job_id or row[8].split(".", 1)[0] == self.node]
        return self._cache

    def collect(self, out: MetricSet) -> None:
        if not self.enabled:
            return
        for job_id, state, partition, user, cpus, memory, elapsed, limit in self._rows():
            info = {"job_id": job_id, "state": state, "partition": partition, "user": user}
            out.add("aifb_slurm_job_info", 1.0, info, help="A job running on this node.")
            out.gauge("aifb_slurm_job_cpus", "CPUs allocated to the job.",
                      float(cpus) if cpus.isdigit() else None, job_id=job_id)
            out.gauge("aifb_slurm_job_memory_request_bytes", "Memory the job requested "
                      "(per node or per CPU, as submitted).", parse_memory(memory), job_id=job_id)
            out.gauge("aifb_slurm_job_elapsed_seconds", "Time the job has run.",
                      parse_duration(elapsed), job_id=job_id)
            out.gauge("aifb_slurm_job_time_limit_seconds", "The job's time limit.",
                      parse_duration(limit), job_id=job_id)

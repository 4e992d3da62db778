"""When a service's ended job is replaced by a new one, and what a SLURM requeue means: pure.

The in-job entry point restarts the program inside its job; these rules cover the job itself
ending (`scancel` from outside, the time limit, a node failure, preemption, the job lost) under
a restart policy. The budget is shared: every restart, inside the job or by a new job, counts
toward `max_restarts`, and a new job's entry point gets only the restarts that are left.
"""

from __future__ import annotations

from aifb.server.jobs import JobStatus, RestartSpec
from aifb.server.model import ServiceRecord
from aifb.server.states import ServiceState

__all__ = ["REQUEUED_WORDS", "remaining_restarts", "replacement_reason", "requeue_reason",
           "restart_for_new_job"]

# SLURM's words for a job that was requeued and waits to run again under the same id.
REQUEUED_WORDS = frozenset({"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PENDING"})
# What the poller may have last seen of a job that ran.
_RAN_WORDS = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED"})


def remaining_restarts(record: ServiceRecord) -> int:
    return max(0, record.restart.max_restarts - record.restarts)


def replacement_reason(record: ServiceRecord, ended_as: ServiceState, why: str) -> str:
    """Why the job that just ended (the service would become `ended_as` for `why`) is replaced
    by a new job; "" when it is not: no policy, deleted, the budget spent, or (on-failure) a
    clean end."""
    policy = record.restart.policy
    if record.delete_requested or policy == "never" or record.terminal:
        return ""
    if remaining_restarts(record) <= 0:
        return ""
    if ended_as == ServiceState.FAILED or (ended_as == ServiceState.STOPPED
                                           and policy == "always"):
        return why or "the job ended"
    return ""


def requeue_reason(record: ServiceRecord, status: JobStatus) -> str:
    """Non-empty when the job the service was running in is back in the queue under the same
    id (SLURM requeued it after a node failure or preemption, or `scontrol requeue`). For a
    STARTING service a plain PENDING counts only after the poller saw the job run: a poll that
    read PENDING just before the job started must not count a requeue when the job's STARTING
    report came first. A READY service's job has run (it reported READY)."""
    word = status.raw_state.split()[0] if status.raw_state else ""
    if word not in REQUEUED_WORDS or record.delete_requested:
        return ""
    if record.state not in (ServiceState.STARTING, ServiceState.READY):
        return ""
    ran = (record.raw_state.split() or [""])[0] in _RAN_WORDS
    if word == "PENDING" and record.state == ServiceState.STARTING and not ran:
        return ""
    detail = status.reason if status.reason not in ("", "None") else word.lower()
    return f"job {status.job_id} was requeued by the scheduler ({detail})"


def restart_for_new_job(record: ServiceRecord) -> RestartSpec:
    """The policy a replacement job's entry point runs with: the restarts that are left."""
    spec = record.restart
    return RestartSpec(policy=spec.policy, max_restarts=remaining_restarts(record),
                       backoff_seconds=spec.backoff_seconds,
                       max_backoff_seconds=spec.max_backoff_seconds)

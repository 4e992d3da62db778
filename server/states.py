"""Service states, and the one function that maps a scheduler's job state to a service state."""

from __future__ import annotations

import enum

from aifb.server.jobs import JobStatus

__all__ = ["TERMINAL_STATES", "ServiceState", "check_transition", "service_state_for_job"]


class ServiceState(enum.IntEnum):
    """Mirrors aifb.v1.ServiceState (the numbers are the wire values)."""

    PENDING = 1
    STARTING = 2
    READY = 3
    STOPPING = 4
    STOPPED = 5
    FAILED = 6
    # A replicated service with some, but fewer than min_ready, replicas READY.
    DEGRADED = 7

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({ServiceState.STOPPED, ServiceState.FAILED})

_ALLOWED: dict[ServiceState, frozenset[ServiceState]] = {
    ServiceState.PENDING: frozenset(
        {ServiceState.STARTING, ServiceState.READY, ServiceState.STOPPING, ServiceState.STOPPED,
         ServiceState.FAILED}
    ),
    ServiceState.STARTING: frozenset(
        {ServiceState.PENDING, ServiceState.READY, ServiceState.STOPPING, ServiceState.STOPPED,
         ServiceState.FAILED}
    ),
    # READY -> STARTING: the program is being started again by its restart policy;
    # READY/STARTING -> PENDING: its job ended and a new one replaces it, or SLURM requeued it.
    ServiceState.READY: frozenset(
        {ServiceState.PENDING, ServiceState.STARTING, ServiceState.STOPPING,
         ServiceState.STOPPED, ServiceState.FAILED}
    ),
    ServiceState.STOPPING: frozenset({ServiceState.STOPPED, ServiceState.FAILED}),
    # Only a replicated service is DEGRADED; its state is a summary (see replica_sets).
    ServiceState.DEGRADED: frozenset(
        {ServiceState.PENDING, ServiceState.STARTING, ServiceState.READY, ServiceState.STOPPING,
         ServiceState.STOPPED, ServiceState.FAILED}
    ),
    ServiceState.STOPPED: frozenset(),
    ServiceState.FAILED: frozenset(),
}


def check_transition(old: ServiceState, new: ServiceState) -> bool:
    """True when old -> new is a legal lifecycle step (staying put is legal)."""
    return old == new or new in _ALLOWED[old]


def service_state_for_job(
    job: JobStatus,
    *,
    current: ServiceState,
    delete_requested: bool,
) -> tuple[ServiceState, str]:
    """Map the scheduler's view of a job to the service's state, with a human-readable reason.

    The in-job entry point moves STARTING -> READY itself (ReportServiceEvent); this function
    only needs to know where the service stands now (`current`) to avoid moving backwards.
    """
    word = job.raw_state.split()[0] if job.raw_state else "UNKNOWN"
    if word in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                "RESV_DEL_HOLD", "SUSPENDED", "RESIZING"):
        if delete_requested:
            return ServiceState.STOPPING, "deletion requested"
        state = ServiceState.PENDING if current == ServiceState.PENDING else current
        return state, job.reason if job.reason not in ("", "None") else ""
    if word in ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"):
        if delete_requested:
            return ServiceState.STOPPING, "deletion requested"
        if current in (ServiceState.PENDING,):
            return ServiceState.STARTING, "job is running; waiting for readiness"
        return current, ""
    if word == "COMPLETED":
        if delete_requested:
            return ServiceState.STOPPED, "stopped on request"
        return ServiceState.STOPPED, "the service exited with code 0"
    if word == "CANCELLED":
        if delete_requested:
            return ServiceState.STOPPED, "stopped on request"
        return ServiceState.FAILED, "the job was cancelled outside aifb"
    if word in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "SPECIAL_EXIT", "REVOKED"):
        detail = word.lower().replace("_", " ")
        if job.exit_code is not None:
            detail += f" (exit code {job.exit_code})"
        if job.reason and job.reason != "None":
            detail += f": {job.reason}"
        return ServiceState.FAILED, f"job {detail}"
    return current, f"unknown scheduler state {job.raw_state!r}"

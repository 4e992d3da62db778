"""Replicated services: one record for the service (the set) and one record per replica.

Decision: each replica is its own batch job, not a task of a SLURM job array. A replica must
be replaced, requeued, restarted and cancelled on its own (scale 3 -> 2 cancels one job; a
replica whose job hit its time limit gets a new job while the others serve), which an array
only allows through per-task ids and never lets grow; separate jobs also run unchanged on the
local executor, which has no arrays. The cost, N sbatch calls and N squeue lines, is small.

A replica's record is a service record like any other (job, endpoint, restarts, replacement
of an ended job, report token), with `parent` set to the set's id and the id
`<set id>-<index>`; so everything a single service does, a replica does. The set's record has
no job: `replicas` (the wanted count), `min_ready`, and a summary of its active replicas that
`summary()` computes after every replica change. Replicas scaled away are `retired`: deleted,
kept in the history, no longer counted. With `renew_before`, a replica whose job nears its time
limit gets a successor (a new replica) first and is drained and retired once the successor is
READY, so the service serves across SLURM time limits. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

from aifb.server.model import ServiceRecord
from aifb.server.states import ServiceState

__all__ = ["MAX_REPLICAS", "renewal_due", "replica_id", "summary", "wanted_changes"]

MAX_REPLICAS = 1000

S = ServiceState


def replica_id(set_id: str, index: int) -> str:
    return f"{set_id}-{index}"


def summary(group: ServiceRecord, replicas: Sequence[ServiceRecord]) -> dict[str, object]:
    """The set's state, message, endpoint and restart figures from its replicas' records."""
    active = sorted((r for r in replicas if not r.retired), key=lambda r: r.replica)
    ready = [r for r in active if r.state == S.READY]
    need = group.min_ready or group.replicas
    if group.delete_requested:
        done = all(r.terminal for r in replicas)
        state = S.STOPPED if done else S.STOPPING
        message = "stopped on request" if done else "deletion requested; stopping the replicas"
    elif active and all(r.terminal for r in active):
        failed = [r for r in active if r.state == S.FAILED]
        state = S.FAILED if failed else S.STOPPED
        message = (f"every replica ended; replica {failed[0].replica} "
                   f"{(failed[0].state_message.splitlines() or ['failed'])[0]}"
                   if failed else "every replica ended cleanly")
    elif len(ready) >= need > 0:
        state = S.READY
        message = f"{min(len(ready), group.replicas)} of {group.replicas} replicas READY"
        if len(ready) > group.replicas:
            message += " (a renewal overlaps)"
    elif ready:
        state = S.DEGRADED
        message = f"{len(ready)} of {group.replicas} replicas READY (min_ready {need})"
    elif any(r.state in (S.STARTING, S.READY) for r in active):
        state, message = S.STARTING, f"0 of {group.replicas} replicas READY; starting"
    else:
        state, message = S.PENDING, f"0 of {group.replicas} replicas READY; waiting for jobs"
    first = ready[0] if ready else None
    restarted = [r for r in replicas if r.restarts]
    latest = max(restarted, key=lambda r: r.update_time) if restarted else None
    return {
        "state": state, "state_message": message,
        "endpoint_host": first.endpoint_host if first else "",
        "endpoint_port": first.endpoint_port if first else 0,
        "endpoint_url": first.endpoint_url if first else "",
        "restarts": sum(r.restarts for r in replicas),
        "last_restart_reason": (f"replica {latest.replica}: {latest.last_restart_reason}"
                                if latest else ""),
    }


def wanted_changes(group: ServiceRecord, replicas: Sequence[ServiceRecord]
                   ) -> tuple[list[int], list[ServiceRecord]]:
    """(indexes of replicas to add, replicas to retire) for the set to have `group.replicas`
    active ones: new ones get indexes after every one used so far, the newest retire first."""
    if group.delete_requested or group.terminal:
        return [], []
    # A replica being renewed does not count: its successor does.
    active = sorted((r for r in replicas if not r.retired and not r.renewing),
                    key=lambda r: r.replica)
    if len(active) > group.replicas:
        return [], active[group.replicas:]
    start = max((r.replica for r in replicas), default=-1) + 1
    return list(range(start, start + group.replicas - len(active))), []


def renewal_due(group: ServiceRecord, replica: ServiceRecord, now: float) -> bool:
    """Whether `replica`'s job is within the set's `renew_before` of its time limit and has no
    successor yet (renewal: a new replica first, the old one drained once it is READY)."""
    limit = group.resources.time_limit_minutes
    if not (group.renew_before > 0 and limit and replica.job_started):
        return False
    if replica.retired or replica.renewing or replica.terminal or replica.delete_requested:
        return False
    return now >= replica.job_started + limit * 60 - group.renew_before

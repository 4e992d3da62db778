"""The server's domain record of a deployed service (what the registry stores)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from aifb.server.jobs import ResourceSpec, RestartSpec
from aifb.server.states import ServiceState

__all__ = ["ServiceRecord", "StateChange"]


@dataclass(frozen=True)
class ServiceRecord:
    """One deployed service. Immutable: changes make a new record with `revision + 1`."""

    id: str
    owner: str
    recipe: str
    state: ServiceState
    parameters: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    state_message: str = ""
    scheduler: str = ""
    job_id: str = ""
    raw_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    workdir: str = ""
    endpoint_host: str = ""
    endpoint_port: int = 0
    endpoint_url: str = ""
    # The recipe's `metrics:` endpoint: its path ("" = none), and its port, which is the
    # endpoint's when `metrics_on_endpoint_port`, else fixed (0 = an auto port not known here).
    metrics_path: str = ""
    metrics_port: int = 0
    metrics_on_endpoint_port: bool = False
    create_time: float = 0.0
    update_time: float = 0.0
    trace_id: str = ""
    revision: int = 1
    delete_requested: bool = False
    request_id: str = ""
    report_token_hash: str = ""
    # What the in-job entry point said when the program exited (message + log tail).
    exit_report: str = ""
    restart: RestartSpec = field(default_factory=RestartSpec)
    # Restarts in all (`restarts`), and those the current job has reported (a repeated report
    # with a count already seen changes nothing).
    restarts: int = 0
    job_restarts: int = 0
    last_restart_reason: str = ""
    # A job is due (job_id is empty until it is submitted): its ended job is being replaced,
    # or it is a new replica; how many jobs replaced an ended one so far (the N-th is named
    # ...-rN and writes job.N.out).
    job_due: bool = False
    job_attempt: int = 0
    # A multi-node service's worker hosts, as the job reported them when READY.
    workers: tuple[str, ...] = ()
    # Replicas (see aifb.server.replica_sets): a set has `replicas` > 0 and no job; a replica
    # has `parent` (the set's id), its `replica` index, and `retired` once scaled away.
    replicas: int = 0
    min_ready: int = 0
    parent: str = ""
    replica: int = 0
    retired: bool = False
    # Renewal before the time limit (a set's `renew_before`, seconds; 0 = off): when a
    # replica's job started (wall clock; 0 = not yet), the successor renewing it, and for a
    # successor the replica it renews.
    renew_before: float = 0.0
    job_started: float = 0.0
    renewing: str = ""
    successor_of: str = ""

    @property
    def name(self) -> str:
        return f"services/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def is_set(self) -> bool:
        """A replicated service: its replicas have the jobs."""
        return self.replicas > 0

    def evolve(self, now: float, **changes: object) -> ServiceRecord:
        """A copy with `changes` applied, revision bumped and update_time set."""
        return dataclasses.replace(self, **changes, revision=self.revision + 1,  # type: ignore[arg-type]
                                   update_time=now)


@dataclass(frozen=True)
class StateChange:
    service_id: str
    revision: int
    state: ServiceState
    message: str
    time: float

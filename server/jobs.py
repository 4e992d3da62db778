"""The typed job spec a batch script is rendered from, and the Scheduler seam (submit/query/cancel).

Domain code only: no gRPC here. `render_batch_script(spec)` (aifb.server.batch) is a pure
function of a `JobSpec`; every scheduler (local, slurm, slurmrest) takes the same spec, so the
local executor runs the very script SLURM would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "TERMINAL_RAW_STATES",
    "ContainerSpec",
    "JobSpec",
    "JobStatus",
    "LivenessSpec",
    "ReadinessSpec",
    "ResourceSpec",
    "RestartSpec",
    "Scheduler",
    "WorkersSpec",
]

# SLURM job states after which a job never changes again (squeue/scontrol/REST spellings).
TERMINAL_RAW_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)


@dataclass(frozen=True)
class ResourceSpec:
    """What the job asks the scheduler for. `time_limit_minutes=None` means no limit."""

    nodes: int = 1
    cpus: int = 1
    memory_mib: int = 512
    gpus: int = 0
    time_limit_minutes: int | None = None
    partition: str = ""
    account: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    """An Apptainer container: `apptainer exec [--nv] [--bind ...] [--env ...] IMAGE argv...`."""

    image: str
    binds: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    nv: bool = False


@dataclass(frozen=True)
class ReadinessSpec:
    """How the in-job entry point decides the service is ready.

    kind "tcp": a TCP connect to `port` succeeds; kind "http": GET `path` on `port` answers
    `status` (0: any 2xx); kind "exec": `command` exits 0 (`port` is then the endpoint's).
    `port_param` names the parameter holding the port when it is chosen inside the job (port 0).
    Probes start fast and slow down to one per `interval_seconds`, each limited to
    `probe_timeout_seconds`; not ready within `timeout_seconds` fails the start.
    """

    kind: Literal["tcp", "http", "exec"] = "tcp"
    port: int = 0
    path: str = "/"
    timeout_seconds: float = 300.0
    port_param: str = ""
    status: int = 0
    command: tuple[str, ...] = ()
    interval_seconds: float = 1.0
    probe_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class LivenessSpec:
    """The check run while the program is READY: `failure_threshold` failures in a row (one
    probe per `interval_seconds`, the first `initial_delay_seconds` after READY) fail it."""

    kind: Literal["tcp", "http", "exec"] = "tcp"
    port: int = 0
    path: str = "/"
    port_param: str = ""
    status: int = 0
    command: tuple[str, ...] = ()
    interval_seconds: float = 10.0
    probe_timeout_seconds: float = 2.0
    failure_threshold: int = 3
    initial_delay_seconds: float = 0.0


RestartPolicyName = Literal["never", "on-failure", "always"]


@dataclass(frozen=True)
class RestartSpec:
    """When the in-job entry point starts the program again: `on-failure` after a non-zero
    exit, a signal, a failed liveness check or a start that was not ready in time; `always`
    after a clean exit too. At most `max_restarts` times, waiting `backoff_seconds` before
    the first and twice as long before each next one, up to `max_backoff_seconds`."""

    policy: RestartPolicyName = "never"
    max_restarts: int = 3
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0


@dataclass(frozen=True)
class WorkersSpec:
    """A multi-node service's processes beside its program: `command` runs `per_node` times on
    each node but the head's and `on_head` times on the head's node (`{{ head_host }}` still
    a token: the job fills it in)."""

    command: tuple[str, ...]
    per_node: int = 1
    on_head: int = 0

    def count(self, nodes: int) -> int:
        return (nodes - 1) * self.per_node + self.on_head


@dataclass(frozen=True)
class JobSpec:
    """Everything a service's batch script depends on."""

    service_id: str
    job_name: str
    recipe: str
    command: tuple[str, ...]
    resources: ResourceSpec
    workdir: str
    stdout_path: str
    stderr_path: str
    readiness: ReadinessSpec
    python: str
    runtime: Literal["native", "apptainer"] = "native"
    container: ContainerSpec | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    auto_ports: tuple[str, ...] = ()
    log_files: tuple[str, ...] = ()
    # Files the in-job entry point writes into `workdir` before starting the program
    # (relative path -> text; auto-port tokens in the text are filled in first).
    files: Mapping[str, str] = field(default_factory=dict)
    liveness: LivenessSpec | None = None
    restart: RestartSpec = field(default_factory=RestartSpec)
    workers: WorkersSpec | None = None


@dataclass(frozen=True)
class JobStatus:
    """One job as the scheduler reports it. `raw_state` is SLURM's spelling (the local executor
    uses the same words). `exit_code`/`signal` are set once the job has ended."""

    job_id: str
    raw_state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    nodes: str = ""

    @property
    def terminal(self) -> bool:
        return self.raw_state.split()[0] in TERMINAL_RAW_STATES if self.raw_state else False


@runtime_checkable
class Scheduler(Protocol):
    """The seam between the server and a batch system.

    `query` takes many ids and makes ONE call to the batch system whatever their number; ids it
    no longer knows are absent from the result. Errors: `SchedulerRejected` when the job can
    never run (bad resources), `SchedulerUnavailable` when the batch system did not answer.
    """

    name: str

    async def submit(self, spec: JobSpec, script: str) -> str: ...

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]: ...

    async def cancel(self, job_id: str) -> None: ...

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        """The ids of the live (not ended) jobs with these names, by name; ONE call to the
        batch system. A server killed while submitting finds its job again with this."""
        ...

    async def close(self) -> None: ...

"""A recipe's health checks and restart policy: `readiness`, `liveness` and `restart`.

    readiness:                 # gates READY after every (re)start of the program
      http: {port: "{{ port }}", path: /health, status: 200}   # or tcp: {port}, or
      # exec: {command: [pg_isready, -p, "{{ port }}"], port: "{{ port }}"}
      timeout: 60              # not ready within this many seconds: the start failed
      interval: 1              # the most seconds between two probes (they start faster)
      probe_timeout: 2         # one probe's limit
    liveness:                  # checked while the program is READY; failing restarts it
      http: {port: "{{ port }}", path: /health}
      interval: 10
      probe_timeout: 2
      failure_threshold: 3     # this many failures in a row fail the check
      initial_delay: 0         # seconds after READY before the first probe
    restart:
      policy: on-failure       # never | on-failure | always
      max_restarts: 3          # past this the service is FAILED with the last reason
      backoff: 1               # seconds before the first restart, doubling each time
      max_backoff: 60

An exec probe runs its argv without a shell, in the job's workdir with the job's environment,
on the node (not inside an Apptainer container); exit status 0 passes. `port` of an exec
readiness check is the endpoint the job reports once the check passes. `workers:` (a
multi-node service's processes beside the program) lives here too: the entry point supervises
them with the program.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, model_validator

from aifb.server.recipes.parts import Strict, problem

__all__ = ["ExecCheck", "HttpCheck", "Liveness", "PortRef", "Readiness", "Restart", "TcpCheck",
           "UrlPath", "Workers"]

PortRef = Annotated[StrictInt, Field(ge=1, le=65535)] | Annotated[
    str, Field(pattern=r"^\{\{\s*[a-z][a-z0-9_]*\s*\}\}$")]
UrlPath = Annotated[str, Field(pattern=r"^/[!-~]{0,1023}$")]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class TcpCheck(Strict):
    port: PortRef


class HttpCheck(Strict):
    """GET `path` on `port`; passes on `status` when given, else on any 2xx."""

    port: PortRef
    path: UrlPath = "/"
    status: Annotated[StrictInt, Field(ge=100, le=599)] | None = None


class ExecCheck(Strict):
    command: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]],
                       Field(min_length=1, max_length=64)]
    port: PortRef | None = None


class _Probe(Strict):
    tcp: TcpCheck | None = None
    http: HttpCheck | None = None
    exec: ExecCheck | None = None
    probe_timeout: Seconds = 2.0

    @property
    def check(self) -> TcpCheck | HttpCheck | ExecCheck:
        found = self.tcp or self.http or self.exec
        assert found is not None  # exactly one, checked below
        return found

    @property
    def kind(self) -> Literal["tcp", "http", "exec"]:
        return "tcp" if self.tcp else "http" if self.http else "exec"

    @model_validator(mode="after")
    def _exactly_one(self) -> _Probe:
        if sum(c is not None for c in (self.tcp, self.http, self.exec)) != 1:
            raise problem("needs exactly one check",
                          "one of tcp: {port: ...}, http: {port: ..., path: ...} or "
                          "exec: {command: [...]}")
        return self


class Readiness(_Probe):
    """Exactly one of `tcp`, `http` or `exec` (with `port`); `timeout` in seconds."""

    timeout: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    interval: Annotated[float, Field(ge=0.05, le=3600)] = 1.0

    @model_validator(mode="after")
    def _endpoint_port(self) -> Readiness:
        if self.exec is not None and self.exec.port is None:
            raise problem("an exec readiness check needs port",
                          "exec: {command: [...], port: <the endpoint's port>}")
        return self

    @property
    def port(self) -> int | str:
        port = self.check.port
        assert port is not None  # checked above
        return port


class Liveness(_Probe):
    interval: Annotated[float, Field(ge=0.1, le=86400)] = 10.0
    failure_threshold: Annotated[StrictInt, Field(ge=1, le=100)] = 3
    initial_delay: Annotated[float, Field(ge=0, le=86400)] = 0.0


class Restart(Strict):
    policy: Literal["never", "on-failure", "always"] = "never"
    max_restarts: Annotated[StrictInt, Field(ge=0, le=10000)] = 3
    backoff: Annotated[float, Field(ge=0, le=3600)] = 1.0
    max_backoff: Annotated[float, Field(ge=0, le=86400)] = 60.0

    @model_validator(mode="after")
    def _ordered(self) -> Restart:
        if self.max_backoff < self.backoff:
            raise problem("max_backoff is below backoff", "max_backoff >= backoff")
        return self


class Workers(Strict):
    """The processes of a multi-node service beside its program (the head): `command` runs
    `per_node` times on each node of the job but the head's, and `on_head` times on the head's
    node, started with `srun` inside the job (as processes on the local executor). They may
    use `{{ head_host }}`, the head's host name, which the job fills in. The head's readiness
    check decides READY (vLLM's /health answers once its Ray workers have joined)."""

    command: Annotated[list[Annotated[str, Field(max_length=65536)]],
                       Field(min_length=1, max_length=1024)]
    per_node: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    on_head: Annotated[StrictInt, Field(ge=0, le=1024)] = 0

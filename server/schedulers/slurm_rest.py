"""The `slurmrest` scheduler: submit, query and cancel SLURM jobs through slurmrestd (httpx).

`url` is `unix:/path/to/slurmrestd.sock` (rest_auth/local: jobs run as slurmrestd's user, so
their workdir and output files must be writable by that user) or `http(s)://host:port` with a
JWT (rest_auth/jwt: jobs run as the token's user), sent as the X-SLURM-USER-NAME /
X-SLURM-USER-TOKEN headers; the token comes from `token` or `SLURM_JWT`.

The API version is the newest entry of `API_VERSIONS` whose `ping` the daemon answers (a 404
means "not served"). A newer version is one more table entry with its own job builder and job
parser (v0.0.39 and later report `exit_code` and `job_state` in other shapes). v0.0.38 (SLURM
22.05) is tested live; v0.0.37 has the same shapes.

slurmrestd ignores `#SBATCH` lines: the job's properties are built from `spec.resources`.
Its `exit_code` is a raw wait status, decoded like squeue's. `query` is ONE `GET .../jobs`
filtered here; every request is counted in `calls` (keyed "ping", "submit", "jobs", "cancel").
"""

from __future__ import annotations

import collections
import getpass
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aifb.mesh.errors import InvalidArgument, SchedulerRejected, SchedulerUnavailable
from aifb.server.jobs import TERMINAL_RAW_STATES, JobSpec, JobStatus
from aifb.server.schedulers.slurm_cli import check_job_id, decode_wait_status

__all__ = [
    "API_VERSIONS",
    "ApiVersion",
    "SlurmRestScheduler",
    "classify_rest_error",
    "job_properties_v0038",
    "parse_job_v0038",
    "rest_error_message",
]

logger = logging.getLogger(__name__)

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# SLURM error numbers that mean the request itself is wrong (slurm_errno.h): 2000-2999 are
# ESLURM_* (bad partition 2000, too many CPUs 2005, no such node configuration 2014, ...),
# 9000-9999 are the REST data parser's. Others (socket 5000s, auth 6000s, -1) mean unavailable.
_REJECT_RANGES = (range(2000, 3000), range(9000, 10000))
_RESOURCE_KEYS = ("partition", "account", "nodes", "cpus_per_task", "memory_per_node",
                  "time_limit", "gres")
_GONE = ("Invalid job id specified", "already completing or completed")


def job_properties_v0038(spec: JobSpec) -> dict[str, Any]:
    """The `job` object of a v0.0.38 submission (memory in MB, time limit in minutes)."""
    res = spec.resources
    job: dict[str, Any] = {
        "name": spec.job_name,
        "current_working_directory": spec.workdir,
        "standard_output": spec.stdout_path,
        "standard_error": spec.stderr_path,
        # required; slurmrestd does not pass the caller's environment on
        "environment": {"PATH": os.environ.get("PATH", _DEFAULT_PATH), **spec.environment},
        "nodes": [res.nodes, res.nodes],
        "cpus_per_task": res.cpus,
        "memory_per_node": res.memory_mib,
    }
    if res.partition:
        job["partition"] = res.partition
    if res.account:
        job["account"] = res.account
    if res.time_limit_minutes is not None:
        job["time_limit"] = res.time_limit_minutes
    if res.gpus:
        job["gres"] = f"gpu:{res.gpus}"
    return job


def parse_job_v0038(job: Mapping[str, Any]) -> JobStatus:
    """A JobStatus from one entry of a v0.0.38 `jobs` list."""
    state = str(job.get("job_state") or "")
    exit_code: int | None = None
    signal: int | None = None
    raw = job.get("exit_code")
    if state.split()[:1] and state.split()[0] in TERMINAL_RAW_STATES and isinstance(raw, int):
        exit_code, signal = decode_wait_status(raw)
    reason = str(job.get("state_reason") or "")
    return JobStatus(
        job_id=str(job.get("job_id")),
        raw_state=state,
        reason="" if reason == "None" else reason,
        exit_code=exit_code,
        signal=signal,
        nodes=str(job.get("nodes") or ""),
    )


@dataclass(frozen=True)
class ApiVersion:
    """One slurmrestd API version: its path segment and how to build/read job objects."""

    name: str
    build_job: Callable[[JobSpec], dict[str, Any]]
    parse_job: Callable[[Mapping[str, Any]], JobStatus]


# Newest first; the first one the daemon serves wins.
API_VERSIONS: tuple[ApiVersion, ...] = (
    ApiVersion("v0.0.38", job_properties_v0038, parse_job_v0038),
    ApiVersion("v0.0.37", job_properties_v0038, parse_job_v0038),
)


def rest_error_message(body: Any) -> tuple[str, list[int]]:
    """The daemon's own error text and error numbers from a response body.

    Submit errors carry `error_code`, job lookups `error_number` (and a `description`).
    """
    errors = body.get("errors") if isinstance(body, dict) else body
    if not isinstance(errors, list):
        return "", []
    texts: list[str] = []
    codes: list[int] = []
    for item in errors:
        if not isinstance(item, dict):
            continue
        text = str(item.get("description") or item.get("error") or "").strip()
        if text and text not in texts:
            texts.append(text)
        code = item.get("error_code", item.get("error_number"))
        if isinstance(code, int):
            codes.append(code)
    return "; ".join(texts), codes


def classify_rest_error(
    status: int, body: Any, text: str, *, action: str
) -> SchedulerRejected | SchedulerUnavailable:
    """The domain error for a failed slurmrestd request."""
    message, codes = rest_error_message(body)
    message = message or text.strip() or f"HTTP {status}"
    if status in (401, 403):
        return SchedulerUnavailable(f"slurmrestd refused the credentials ({action}): {message}",
                                    http_status=status)
    rejected = status == 400 or (
        status >= 500 and bool(codes) and all(any(c in r for r in _REJECT_RANGES) for c in codes)
    )
    if rejected:
        return SchedulerRejected(f"slurmrestd rejected the job: {message}", http_status=status)
    return SchedulerUnavailable(f"slurmrestd could not {action}: {message}", http_status=status)


class SlurmRestScheduler:
    """slurmrestd client. Options: `token`/`user` (JWT over TCP), `api_version` (pin one
    entry of API_VERSIONS), `timeout` (seconds per request), `transport` (an httpx transport,
    for tests)."""

    name = "slurmrest"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        user: str | None = None,
        api_version: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers: dict[str, str] = {}
        if url.startswith("unix:"):
            transport = transport or httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
            base_url = "http://localhost"
        elif url.startswith(("http://", "https://")):
            base_url = url.rstrip("/")
            jwt = token or os.environ.get("SLURM_JWT", "")
            if jwt:
                headers["X-SLURM-USER-NAME"] = user or getpass.getuser()
                headers["X-SLURM-USER-TOKEN"] = jwt
        else:
            raise InvalidArgument(
                f"slurmrestd url must be unix:/path or http(s)://host:port, not {url!r}",
                field="url",
            )
        versions = [v for v in API_VERSIONS if api_version in (None, v.name)]
        if not versions:
            known = ", ".join(v.name for v in API_VERSIONS)
            raise InvalidArgument(f"unknown slurmrestd API version {api_version!r}; "
                                  f"supported: {known}", field="api_version")
        self.url = url
        self.calls: collections.Counter[str] = collections.Counter()
        self._candidates = versions
        self._api: ApiVersion | None = None
        self._client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout,
                                         transport=transport)

    async def _request(
        self, label: str, method: str, path: str, *, json: Any = None
    ) -> tuple[int, Any, str]:
        """One HTTP request; (status, parsed JSON body or None, raw text)."""
        self.calls[label] += 1
        try:
            resp = await self._client.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise SchedulerUnavailable(f"slurmrestd at {self.url} did not answer in time "
                                       f"({method} {path})") from exc
        except httpx.HTTPError as exc:
            raise SchedulerUnavailable(f"slurmrestd at {self.url} is unreachable: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        return resp.status_code, body, resp.text

    async def api(self) -> ApiVersion:
        """The API version in use, chosen at the first call (newest served)."""
        if self._api is not None:
            return self._api
        for version in self._candidates:
            status, body, text = await self._request("ping", "GET", f"/slurm/{version.name}/ping")
            if status == 404:
                continue
            if status != 200:
                raise classify_rest_error(status, body, text, action="answer ping")
            logger.info("slurmrestd at %s: using API %s", self.url, version.name)
            self._api = version
            return version
        names = ", ".join(v.name for v in self._candidates)
        raise SchedulerUnavailable(f"slurmrestd at {self.url} serves none of {names}")

    async def ping(self) -> str:
        """Check that slurmrestd answers; returns the API version it will be spoken to with."""
        if self._api is None:
            return (await self.api()).name  # choosing the version pings already
        status, body, text = await self._request("ping", "GET", f"/slurm/{self._api.name}/ping")
        if status != 200:
            raise classify_rest_error(status, body, text, action="answer ping")
        return self._api.name

    async def submit(self, spec: JobSpec, script: str) -> str:
        version = await self.api()
        workdir = Path(spec.workdir)
        try:  # the daemon ignores the file: it is kept for the record
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (workdir / "job.sbatch").write_text(script, encoding="utf-8")
        except OSError as exc:
            raise SchedulerUnavailable(f"cannot write the job script in {workdir}: {exc}") from exc
        job = version.build_job(spec)
        path = f"/slurm/{version.name}/job/submit"
        status, body, text = await self._request(
            "submit", "POST", path, json={"script": script, "job": job}
        )
        if status != 200:
            error = classify_rest_error(status, body, text, action="submit the job")
            if isinstance(error, SchedulerRejected):  # say what was asked: 400s are terse
                asked = ", ".join(f"{k}={job[k]}" for k in _RESOURCE_KEYS if k in job)
                error = SchedulerRejected(f"{error.message} (asked for {asked})",
                                          **error.metadata)
            raise error
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if not isinstance(job_id, int):
            raise SchedulerUnavailable(f"slurmrestd returned no job id: {text[:200]!r}")
        logger.info("submitted %s as SLURM job %s (REST)", spec.job_name, job_id)
        return str(job_id)

    async def _jobs(self) -> tuple[ApiVersion, list[Any]]:
        """ONE `GET .../jobs`: the API version and every job slurmrestd lists."""
        version = await self.api()
        status, body, text = await self._request("jobs", "GET", f"/slurm/{version.name}/jobs")
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if status != 200 or not isinstance(jobs, list):
            message = rest_error_message(body)[0] or text.strip()[:200] or f"HTTP {status}"
            raise SchedulerUnavailable(f"slurmrestd could not list jobs: {message}",
                                       http_status=status)
        return version, jobs

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = set(job_ids)
        if not wanted:
            return {}
        version, jobs = await self._jobs()
        out: dict[str, JobStatus] = {}
        for job in jobs:
            if isinstance(job, dict) and str(job.get("job_id")) in wanted:
                parsed = version.parse_job(job)
                out[parsed.job_id] = parsed
        return out

    async def find(self, job_names: Sequence[str]) -> dict[str, list[str]]:
        wanted = set(job_names)
        if not wanted:
            return {}
        version, jobs = await self._jobs()
        found: dict[str, list[str]] = {}
        for job in jobs:
            if isinstance(job, dict) and job.get("name") in wanted:
                parsed = version.parse_job(job)
                if not parsed.terminal:
                    found.setdefault(str(job["name"]), []).append(parsed.job_id)
        return found

    async def cancel(self, job_id: str) -> None:
        version = await self.api()
        path = f"/slurm/{version.name}/job/{check_job_id(job_id)}"
        status, body, text = await self._request("cancel", "DELETE", path)
        if status == 200:
            logger.info("cancelled SLURM job %s (REST)", job_id)
            return
        message = rest_error_message(body)[0]
        if any(marker in message for marker in _GONE):  # unknown or ended: nothing to cancel
            logger.info("cancel of SLURM job %s: %s", job_id, message)
            return
        raise classify_rest_error(status, body, text, action=f"cancel job {job_id}")

    async def close(self) -> None:
        await self._client.aclose()

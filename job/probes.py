"""Health probes of the in-job entry point: tcp, http and exec, each one call with a time limit.

`Probe.check()` returns None when the probe passed and a short reason when it did not
("http GET /health on port 8080: status 503, expected 2xx"); it never raises for what the
program does. `LivenessSpec` is a liveness check as the batch script passes it (`--liveness
JSON`, auto-port tokens already filled in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx  # imported when an HTTP probe runs: every job pays the import otherwise

__all__ = ["LivenessOptions", "Probe", "RestartOptions", "parse_liveness", "parse_restart"]

_KINDS = ("tcp", "http", "exec")
_POLICIES = ("never", "on-failure", "always")


@dataclass(frozen=True)
class Probe:
    """One check: a TCP connect to `port`, a GET of `path` on `port` that must answer `status`
    (0: any 2xx), or `command` (no shell, in `cwd`) that must exit 0; within `timeout`."""

    kind: str
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/"
    status: int = 0
    command: tuple[str, ...] = ()
    timeout: float = 2.0
    cwd: Path | None = None
    env: Mapping[str, str] | None = None

    def describe(self) -> str:
        if self.kind == "http":
            return f"http GET {self.path} on port {self.port}"
        if self.kind == "tcp":
            return f"tcp connect to port {self.port}"
        return f"exec {self.command[0] if self.command else '?'}"

    async def check(self, client: httpx.AsyncClient | None = None) -> str | None:
        try:
            if self.kind == "http":
                return await self._http(client)
            if self.kind == "tcp":
                return await self._tcp()
            return await self._exec()
        except (OSError, TimeoutError) as exc:
            return f"{self.describe()}: {_why(exc, self.timeout)}"

    async def _tcp(self) -> str | None:
        _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                           self.timeout)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    async def _http(self, client: httpx.AsyncClient | None) -> str | None:
        import httpx

        url = f"http://{self.host}:{self.port}{self.path}"
        try:
            if client is None:
                async with httpx.AsyncClient(trust_env=False) as own:
                    resp = await own.get(url, timeout=self.timeout)
            else:
                resp = await client.get(url, timeout=self.timeout)
        except httpx.HTTPError as exc:
            return f"{self.describe()}: {_why(exc, self.timeout)}"
        ok = resp.status_code == self.status if self.status else 200 <= resp.status_code < 300
        if ok:
            return None
        return (f"{self.describe()}: status {resp.status_code}, expected "
                f"{self.status or '2xx'}")

    async def _exec(self) -> str | None:
        proc = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=self.cwd,
            env=dict(self.env) if self.env is not None else None, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the probe and anything it started
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return f"{self.describe()}: no answer within {self.timeout:g}s"
        if proc.returncode == 0:
            return None
        last = (out or b"").decode("utf-8", errors="replace").strip().splitlines()[-1:]
        detail = f" ({last[0][:200]})" if last else ""
        return f"{self.describe()}: exit status {proc.returncode}{detail}"


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError) or type(exc).__name__.endswith("Timeout"):
        return f"no answer within {timeout:g}s"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__


@dataclass(frozen=True)
class LivenessOptions:
    kind: str
    port: str = ""
    path: str = "/"
    status: int = 0
    command: tuple[str, ...] = ()
    interval: float = 10.0
    timeout: float = 2.0
    failure_threshold: int = 3
    initial_delay: float = 0.0


@dataclass(frozen=True)
class RestartOptions:
    """`never`: the job ends with the program. `on-failure`: the program is started again
    after a non-zero exit, a signal, a failed liveness check or a start not ready in time;
    `always`: after a clean exit too. At most `max_restarts` times; the n-th restart waits
    `backoff * 2**(n-1)` seconds, at most `max_backoff`."""

    policy: str = "never"
    max_restarts: int = 0
    backoff: float = 1.0
    max_backoff: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds before restart number `attempt` (1-based)."""
        return min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 60))

    def restarts_after(self, failed: bool) -> bool:
        """Whether the policy restarts a program that ended this way."""
        return self.policy == "always" or (self.policy == "on-failure" and failed)


def _json_object(option: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{option}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{option}: expected a JSON object")
    return data


def _number(option: str, data: Mapping[str, Any], key: str, default: float, low: float,
            high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{option}: {key} must be a number in {low:g}..{high:g}")
    return float(value)


def _argv(option: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise ValueError(f"{option}: command must be a list of non-empty strings")
    return tuple(value)


def parse_liveness(text: str) -> LivenessOptions:
    """`--liveness JSON` -> options (ValueError naming what is wrong)."""
    opt = "--liveness"
    data = _json_object(opt, text)
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"{opt}: kind must be one of {', '.join(_KINDS)}")
    command = _argv(opt, data.get("command", []))
    if kind == "exec" and not command:
        raise ValueError(f"{opt}: an exec check needs a command")
    port = data.get("port", "")
    if not isinstance(port, str) or (kind != "exec" and not port):
        raise ValueError(f"{opt}: port must be text (a number or an auto-port token)")
    path = data.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{opt}: path must start with '/'")
    return LivenessOptions(
        kind=kind, port=port, path=path, command=command,
        status=int(_number(opt, data, "status", 0, 0, 599)),
        interval=_number(opt, data, "interval", 10.0, 0.05, 86400),
        timeout=_number(opt, data, "timeout", 2.0, 0.01, 86400),
        failure_threshold=int(_number(opt, data, "failure_threshold", 3, 1, 100)),
        initial_delay=_number(opt, data, "initial_delay", 0.0, 0, 86400))


def parse_restart(text: str) -> RestartOptions:
    """`--restart JSON` -> options (ValueError naming what is wrong)."""
    opt = "--restart"
    data = _json_object(opt, text)
    policy = data.get("policy")
    if policy not in _POLICIES:
        raise ValueError(f"{opt}: policy must be never, on-failure or always")
    backoff = _number(opt, data, "backoff", 1.0, 0, 3600)
    return RestartOptions(
        policy=policy, max_restarts=int(_number(opt, data, "max_restarts", 3, 0, 10000)),
        backoff=backoff, max_backoff=max(backoff, _number(opt, data, "max_backoff", 60.0, 0,
                                                          86400)))

"""Render a JobSpec into the bash batch script that SLURM (or the local executor) runs: pure.

The script is `#!/bin/bash`, the `#SBATCH` lines sorted by option, `set -euo pipefail`, `cd`
into the workdir, the environment exported, then::

    exec PYTHON -m aifb.job.run --service ID --workdir DIR --readiness tcp|http|exec \\
        --ready-port N|'{{ name }}' --ready-path P --timeout S [--ready-status N] \\
        [--ready-exec JSON] [--ready-interval S] [--ready-probe-timeout S] \\
        [--liveness JSON] [--restart JSON] [--auto-port NAME]... \\
        [--log-file PATH]... [--file REL=TEXT]... -- [apptainer exec ... IMAGE] ARGV...

The health and restart options appear only when the recipe or request sets them (a script for a
recipe without them is what it was before they existed).

Every value is `shlex.quote`d. A value that cannot be represented (NUL anywhere; a newline or
carriage return in an `#SBATCH` line, an option value or a variable name) is rejected with
`InvalidArgument` naming the field; nothing is ever altered silently. Newlines inside argv
elements, exported values and `--file` texts are fine: single quotes keep them verbatim.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable

from aifb.mesh.errors import InvalidArgument
from aifb.server.jobs import ContainerSpec, JobSpec, LivenessSpec, ReadinessSpec, RestartSpec
from aifb.server.recipes.values import token

__all__ = ["apptainer_argv", "format_time", "jobrun_argv", "render_batch_script"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REL_PATH = re.compile(r"(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
_LINE_BREAKS = ("\n", "\r", "\u2028", "\u2029", "\x0b", "\x0c", "\x85")


def _text(field: str, value: object, *, newlines: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected text, got {type(value).__name__}", field=field)
    if "\0" in value:
        raise InvalidArgument(f"{field}: contains a NUL byte", field=field)
    if not newlines and any(ch in value for ch in _LINE_BREAKS):
        raise InvalidArgument(f"{field}: contains a line break, which cannot be represented here",
                              field=field)
    return value


def format_time(minutes: int) -> str:
    """SLURM time: `HH:MM:SS` below a day, `D-HH:MM:SS` from a day on."""
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    hms = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{hms}" if days else hms


def _positive(field: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{field}: expected an integer >= {minimum}, got {value!r}",
                              field=field)
    return value


def _sbatch_options(spec: JobSpec) -> dict[str, str]:
    res = spec.resources
    opts = {
        "job-name": _text("job_name", spec.job_name),
        "output": _text("stdout_path", spec.stdout_path),
        "error": _text("stderr_path", spec.stderr_path),
        "nodes": str(_positive("resources.nodes", res.nodes)),
        "cpus-per-task": str(_positive("resources.cpus", res.cpus)),
        "mem": f"{_positive('resources.memory_mib', res.memory_mib)}M",
    }
    if res.time_limit_minutes is not None:
        opts["time"] = format_time(_positive("resources.time_limit_minutes",
                                             res.time_limit_minutes))
    if spec.restart.policy != "never":
        # SLURM itself requeues the job (same id) after a node failure or preemption.
        opts["requeue"] = ""
    if spec.workers is not None and (count := spec.workers.count(res.nodes)) > 0:
        # The program plus one task per worker, which the entry point starts with srun.
        opts["ntasks"] = str(1 + count)
    if res.partition:
        opts["partition"] = _text("resources.partition", res.partition)
    if res.account:
        opts["account"] = _text("resources.account", res.account)
    if _positive("resources.gpus", res.gpus, 0) > 0:
        opts["gres"] = f"gpu:{res.gpus}"
    if not spec.job_name:
        raise InvalidArgument("job_name: must not be empty", field="job_name")
    return opts


def apptainer_argv(container: ContainerSpec) -> list[str]:
    """`apptainer exec [--nv] [--bind SRC:DST]... [--env K=V]... IMAGE` (the program follows).

    Apptainer splits `--bind` on commas and parses a `--env` value holding more than one `=`
    as CSV, so such values are rejected rather than misread."""
    argv = ["apptainer", "exec"]
    if container.nv:
        argv.append("--nv")
    for i, bind in enumerate(container.binds):
        _text(f"container.binds[{i}]", bind)
        if "," in bind or not bind:
            raise InvalidArgument(f"container.binds[{i}]: a bind may not be empty or contain ','",
                                  field=f"container.binds[{i}]")
        argv += ["--bind", bind]
    for name, value in sorted(container.env.items()):
        field = f"container.env.{name}"
        if not _ENV_NAME.fullmatch(_text(field, name)):
            raise InvalidArgument(f"{field}: not a valid variable name", field=field)
        _text(field, value, newlines=True)
        if '"' in value or ("," in value and "=" in value):
            raise InvalidArgument(f'{field}: apptainer cannot pass a value with \'"\', or with '
                                  "both ',' and '=', through --env", field=field)
        argv += ["--env", f"{name}={value}"]
    image = _text("container.image", container.image)
    if not image or image.startswith("-"):
        raise InvalidArgument("container.image: expected an image reference",
                              field="container.image")
    argv.append(image)
    return argv


def _port_text(field: str, port: int, param: str, auto_ports: tuple[str, ...]) -> str:
    if param and param in auto_ports:
        return token(param)
    if 1 <= port <= 65535:
        return str(port)
    raise InvalidArgument(f"{field}: expected 1..65535 or an auto port, got {port}", field=field)


def _command(field: str, command: tuple[str, ...]) -> list[str]:
    if not command:
        raise InvalidArgument(f"{field}: an exec check needs a command", field=field)
    return [_text(f"{field}[{i}]", a, newlines=True) for i, a in enumerate(command)]


def _readiness_argv(rd: ReadinessSpec, auto_ports: tuple[str, ...]) -> list[str]:
    if rd.kind not in ("tcp", "http", "exec"):
        raise InvalidArgument(f"readiness.kind: got {rd.kind!r}", field="readiness.kind")
    if not rd.timeout_seconds > 0:
        raise InvalidArgument("readiness.timeout_seconds: must be positive",
                              field="readiness.timeout_seconds")
    argv = ["--readiness", rd.kind,
            "--ready-port", _port_text("readiness.port", rd.port, rd.port_param, auto_ports),
            "--ready-path", _text("readiness.path", rd.path),
            "--timeout", format(rd.timeout_seconds, "g")]
    if rd.status:
        argv += ["--ready-status", str(rd.status)]
    if rd.kind == "exec":
        argv += ["--ready-exec", json.dumps(_command("readiness.command", rd.command))]
    if rd.interval_seconds != ReadinessSpec.interval_seconds:
        argv += ["--ready-interval", format(rd.interval_seconds, "g")]
    if rd.probe_timeout_seconds != ReadinessSpec.probe_timeout_seconds:
        argv += ["--ready-probe-timeout", format(rd.probe_timeout_seconds, "g")]
    return argv


def _liveness_json(lv: LivenessSpec, auto_ports: tuple[str, ...]) -> str:
    if lv.kind not in ("tcp", "http", "exec"):
        raise InvalidArgument(f"liveness.kind: got {lv.kind!r}", field="liveness.kind")
    port = ("" if lv.kind == "exec" and not lv.port and not lv.port_param
            else _port_text("liveness.port", lv.port, lv.port_param, auto_ports))
    return json.dumps({
        "kind": lv.kind, "port": port, "path": _text("liveness.path", lv.path),
        "status": lv.status,
        "command": _command("liveness.command", lv.command) if lv.kind == "exec" else [],
        "interval": lv.interval_seconds, "timeout": lv.probe_timeout_seconds,
        "failure_threshold": lv.failure_threshold, "initial_delay": lv.initial_delay_seconds,
    }, sort_keys=True)


def _restart_json(rs: RestartSpec) -> str:
    return json.dumps({"policy": rs.policy, "max_restarts": rs.max_restarts,
                       "backoff": rs.backoff_seconds, "max_backoff": rs.max_backoff_seconds},
                      sort_keys=True)


def jobrun_argv(spec: JobSpec) -> list[str]:
    """The options of `python -m aifb.job.run` for `spec` (before the `--`)."""
    argv = ["--service", _text("service_id", spec.service_id),
            "--workdir", _text("workdir", spec.workdir),
            *_readiness_argv(spec.readiness, spec.auto_ports)]
    if spec.liveness is not None:
        argv += ["--liveness", _liveness_json(spec.liveness, spec.auto_ports)]
    if spec.restart.policy != "never":
        argv += ["--restart", _restart_json(spec.restart)]
    if spec.workers is not None and spec.workers.count(spec.resources.nodes) > 0:
        argv += ["--workers", json.dumps({
            "argv": _worker_argv(spec), "per_node": spec.workers.per_node,
            "on_head": spec.workers.on_head, "nodes": spec.resources.nodes})]
    for name in spec.auto_ports:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise InvalidArgument(f"auto_ports: bad name {name!r}", field="auto_ports")
        argv += ["--auto-port", name]
    for i, path in enumerate(spec.log_files):
        argv += ["--log-file", _text(f"log_files[{i}]", path)]
    for rel, content in sorted(spec.files.items()):
        if not _REL_PATH.fullmatch(_text("files", rel)):
            raise InvalidArgument(f"files: {rel!r} is not a plain relative path", field="files")
        argv += ["--file", f"{rel}={_text(f'files.{rel}', content, newlines=True)}"]
    if any(a.startswith("-") for a in (spec.service_id, spec.workdir)) or not spec.service_id:
        raise InvalidArgument("service_id/workdir: must be non-empty and not start with '-'",
                              field="service_id")
    return argv


def _program_argv(spec: JobSpec) -> list[str]:
    if not spec.command:
        raise InvalidArgument("command: must not be empty", field="command")
    argv = [_text(f"command[{i}]", a, newlines=True) for i, a in enumerate(spec.command)]
    if spec.runtime == "apptainer":
        if spec.container is None:
            raise InvalidArgument("container: required for the apptainer runtime",
                                  field="container")
        return apptainer_argv(spec.container) + argv
    return argv


def _worker_argv(spec: JobSpec) -> list[str]:
    """A worker's argv: in the same container as the program when it has one."""
    assert spec.workers is not None
    argv = [_text(f"workers.command[{i}]", a, newlines=True)
            for i, a in enumerate(spec.workers.command)]
    if not argv:
        raise InvalidArgument("workers.command: must not be empty", field="workers.command")
    if spec.runtime == "apptainer" and spec.container is not None:
        return apptainer_argv(spec.container) + argv
    return argv


def _lines(groups: Iterable[list[str]]) -> str:
    return " \\\n    ".join(" ".join(shlex.quote(a) for a in g) for g in groups)


def render_batch_script(spec: JobSpec) -> str:
    """The batch script of `spec` (see the module docstring); raises InvalidArgument."""
    out = ["#!/bin/bash"]
    out += [f"#SBATCH --{k}={shlex.quote(v)}" if v else f"#SBATCH --{k}"
            for k, v in sorted(_sbatch_options(spec).items())]
    out += ["set -euo pipefail", f"cd -- {shlex.quote(_text('workdir', spec.workdir))}"]
    for name, value in sorted(spec.environment.items()):
        field = f"environment.{name}"
        if not _ENV_NAME.fullmatch(_text(field, name)):
            raise InvalidArgument(f"{field}: not a valid variable name", field=field)
        out.append(f"export {name}={shlex.quote(_text(field, value, newlines=True))}")
    opts = jobrun_argv(spec)
    groups = [[_text("python", spec.python), "-m", "aifb.job.run"]]
    groups += [opts[i:i + 2] for i in range(0, len(opts), 2)]
    groups.append(["--", *_program_argv(spec)])
    out.append("exec " + _lines(groups))
    return "\n".join(out) + "\n"

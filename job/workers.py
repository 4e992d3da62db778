"""A multi-node service's worker processes, started beside the program (the head).

`--workers JSON` ({"argv", "per_node", "on_head", "nodes"}) says what to start: inside a SLURM
job with `srun`, `per_node` tasks on each node but the head's (`--exclude` the head) and
`on_head` tasks on the head's node; under the local executor, the same number of plain
processes on this host. `{{ head_host }}` in the argv becomes the head's host name (the one the
job reports as its endpoint). The supervisor starts them after the program, in the program's
process group, so a stop or a restart ends them with it; one that exits ends the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["HEAD_HOST_TOKEN", "Launch", "WorkerOptions", "launch_plan", "parse_workers"]

HEAD_HOST_TOKEN = "{{ head_host }}"


@dataclass(frozen=True)
class WorkerOptions:
    argv: tuple[str, ...]
    per_node: int = 1
    on_head: int = 0
    nodes: int = 1

    @property
    def count(self) -> int:
        return (self.nodes - 1) * self.per_node + self.on_head


@dataclass(frozen=True)
class Launch:
    """One command that starts workers, and the host of each worker it starts."""

    argv: list[str]
    hosts: list[str]


def parse_workers(text: str) -> WorkerOptions:
    """`--workers JSON` -> options (ValueError naming what is wrong)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--workers: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("--workers: expected a JSON object")
    argv = data.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv)):
        raise ValueError("--workers: argv must be a non-empty list of non-empty strings")
    numbers = {}
    for key, low, default in (("per_node", 1, 1), ("on_head", 0, 0), ("nodes", 1, 1)):
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 100000:
            raise ValueError(f"--workers: {key} must be an integer >= {low}")
        numbers[key] = value
    return WorkerOptions(argv=tuple(argv), **numbers)


def _nodes(nodelist: str) -> list[str]:
    from aifb.mesh.discovery import expand_hostlist  # only a multi-node SLURM job needs it

    return expand_hostlist(nodelist)


def launch_plan(opts: WorkerOptions, argv: list[str], env: Mapping[str, str],
                head_host: str) -> list[Launch]:
    """The commands that start the workers (`argv` with the head's host and ports filled in)."""
    if env.get("SLURM_JOB_ID"):
        head = env.get("SLURMD_NODENAME") or os.uname().nodename
        launches = []
        if opts.nodes > 1:
            others = [n for n in _nodes(env.get("SLURM_JOB_NODELIST", "")) if n != head]
            launches.append(Launch(
                ["srun", f"--nodes={opts.nodes - 1}",
                 f"--ntasks={(opts.nodes - 1) * opts.per_node}",
                 f"--ntasks-per-node={opts.per_node}", f"--exclude={head}",
                 "--kill-on-bad-exit=1", *argv],
                [n for n in others for _ in range(opts.per_node)]))
        if opts.on_head:
            launches.append(Launch(
                ["srun", "--nodes=1", f"--ntasks={opts.on_head}", f"--nodelist={head}",
                 "--kill-on-bad-exit=1", *argv], [head_host] * opts.on_head))
        return launches
    return [Launch(list(argv), [head_host]) for _ in range(opts.count)]

"""Shared set-up for the server benchmarks: a real server on SLURM, on a scratch home."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from aifb.server.embedded import ThreadedServer, embedded_config
from aifb.v1 import common_pb2
from aifb.v1 import server_pb2 as S

ROOT = Path(__file__).resolve().parent.parent
TEST_RECIPES = ROOT / "tests" / "recipes"


def ensure_slurm() -> None:
    subprocess.run([str(ROOT / "scripts" / "start-slurm.sh"), "start"], check=True,
                   stdout=subprocess.DEVNULL)


def slurm_server(poll: float = 0.5, poll_max: float = 5.0) -> ThreadedServer:
    home = Path(tempfile.mkdtemp(prefix="aifb-bench-"))
    config = embedded_config(home, scheduler="slurm", recipe_dirs=[str(TEST_RECIPES)],
                             poll_interval_seconds=poll, poll_max_interval_seconds=poll_max)
    return ThreadedServer(config).start()


def sleeper_request(seconds: int = 600) -> S.CreateServiceRequest:
    return S.CreateServiceRequest(recipe="sleeper", parameters={"seconds": str(seconds)},
                                  resources=common_pb2.Resources(cpus=1, memory_mib=32))

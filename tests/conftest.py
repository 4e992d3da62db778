"""Shared fixtures: an isolated aifb home per test, and the fixture modules of each tier."""

from __future__ import annotations

import os
from pathlib import Path

# As `aifb` itself does (cli/main.py), before gRPC loads: the Spark tests start a JVM (fork +
# exec with a Python preexec_fn) in a process whose gRPC threads are busy, and gRPC's fork
# handlers can crash that child. Nothing here forks without exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import pytest

pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.slurm",
    "tests.fixtures.nginx",
    "tests.fixtures.prometheus",
    "tests.fixtures.loki",
    "tests.fixtures.openai_server",
    "tests.fixtures.chroma",
    "tests.fixtures.pgvector",
    "tests.fixtures.qdrant_fake",
    "tests.fixtures.spark",
]


@pytest.fixture
def aifb_home(tmp_path: Path) -> Path:
    home = tmp_path / "aifb-home"
    home.mkdir(mode=0o700)
    return home

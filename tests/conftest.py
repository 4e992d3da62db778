"""Shared fixtures: an isolated aifb home per test, and the fixture modules of each tier."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.slurm",
    "tests.fixtures.nginx",
    "tests.fixtures.prometheus",
    "tests.fixtures.loki",
]


@pytest.fixture
def aifb_home(tmp_path: Path) -> Path:
    home = tmp_path / "aifb-home"
    home.mkdir(mode=0o700)
    return home

"""Fixtures shared by the unit tests of the in-job entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_jobrun import Job


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Job]:
    """An entry point run as a real process with a reporter that writes events to a file;
    stopped (SIGTERM, then SIGKILL) at the end."""
    j = Job(tmp_path)
    yield j
    j.stop()

"""A program the recipe list calls runnable is one a job can start (issue 16, found on the way):
`aifb up` started from a venv that is not activated, with a relative PATH entry, said a recipe's
program was runnable (the server found it from its own folder) while the job, in its workdir,
failed "No such file or directory". Jobs now get the PATH the check uses: the interpreter's
folder first, relative entries made absolute."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cli_procs import AIFB, Daemon, free_port
from tests.integration.test_cli_telemetry import cli_env

pytestmark = pytest.mark.integration

RECIPE = """name: relserve
description: An HTTP server whose program is found through a relative PATH entry.
parameters:
  port: {type: port, default: 0, description: HTTP port; 0 picks a free one}
resources:
  cpus: 1
  memory: 64M
  time: "5"
command: [relserve, "{{ port }}"]
readiness:
  tcp: {port: "{{ port }}"}
  timeout: 60
metrics: false
"""


def test_a_program_found_through_a_relative_path_entry_starts_in_the_job(
        tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "relserve.yaml").write_text(RECIPE)
    program = tmp_path / "rel-bin" / "relserve"
    program.parent.mkdir()
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m http.server "$1" '
                       "--bind 127.0.0.1\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    env = {**cli_env(tmp_path), "PATH": os.pathsep.join(["rel-bin", "/usr/bin", "/bin"]),
           "AIFB_SERVER__RECIPE_DIRS": json.dumps([str(tmp_path / "recipes")])}
    address = f"127.0.0.1:{free_port()}"
    daemon = Daemon.start(["up", "--listen", address, "--scheduler", "local", "--no-telemetry"],
                          env=env, cwd=tmp_path, ready_text="aifb is up on")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(AIFB), "--server", address, "--output", "json", *args],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)

    try:
        recipes = {r["name"]: r for r in json.loads(cli("recipes", "list").stdout)}
        assert recipes["relserve"].get("runnable_here") is True, recipes["relserve"]
        created = cli("services", "create", "relserve", "--wait", "--wait-timeout", "60")
        assert created.returncode == 0, created.stdout + created.stderr
        service = json.loads(created.stdout)
        assert service["state"] == "SERVICE_STATE_READY", service
        assert cli("services", "delete", service["name"].removeprefix("services/")
                   ).returncode == 0
    finally:
        daemon.stop()

"""Which part imports which, checked by import-linter against the contracts in pyproject.toml
([tool.importlinter]): components never import one another, the mesh imports none, the in-job
program imports the mesh and the agents, only the CLI and its composition layer import the
CLI and the in-job program, the client's parts are layered and the recipes' programs stand alone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.contract.helpers import REPO, run

pytestmark = pytest.mark.contract

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str | Path) -> tuple[int, str]:
    proc = run([LINT_IMPORTS, "--no-cache", *args], cwd=REPO, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_every_import_contract_is_kept() -> None:
    rc, out = _lint()
    assert rc == 0, out
    assert "6 kept, 0 broken" in out, out


def test_the_checker_sees_imports_through_the_package_layout(tmp_path: Path) -> None:
    """The control: a contract the code breaks (the CLI imports the server) is reported broken,
    so the kept contracts above are not kept because no import was seen."""
    config = tmp_path / "importlinter.toml"
    config.write_text('''[tool.importlinter]
root_packages = ["aifb.cli", "aifb.server"]
include_external_packages = false

[[tool.importlinter.contracts]]
name = "the CLI may not import the server"
type = "forbidden"
source_modules = ["aifb.cli"]
forbidden_modules = ["aifb.server"]
''')
    rc, out = _lint(config)
    assert rc == 1, out
    assert "aifb.cli.up -> aifb.server.app" in out and "BROKEN" in out, out

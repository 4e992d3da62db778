"""What runs is what is locked: uv.lock matches pyproject.toml, this environment holds exactly the
locked versions, and the checks that guard both name what is wrong when it is."""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import distributions, version
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.contract.helpers import REPO, copy_tree, run

pytestmark = pytest.mark.contract

UV = REPO / ".tools" / "uv" / "bin" / "uv"


def _require_uv() -> Path:
    if not os.access(UV, os.X_OK):
        pytest.skip(f"{UV} is missing: run scripts/setup.sh")
    return UV


def _locked() -> dict[str, set[str]]:
    """Package name -> the versions uv.lock holds for it (one, or one per Python fork)."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    out: dict[str, set[str]] = {}
    for pkg in lock["package"]:
        if "version" in pkg:
            out.setdefault(canonicalize_name(pkg["name"]), set()).add(pkg["version"])
    return out


def _copy_with_tools(tmp_path: Path) -> Path:
    """A copy of the repository that runs the checkout's uv and .venv (not copied: 1 GB)."""
    copy = copy_tree(REPO, tmp_path / "repo")
    (copy / ".tools").symlink_to(REPO / ".tools")
    (copy / ".venv").symlink_to(REPO / ".venv")
    return copy


def test_every_installed_package_is_the_locked_version() -> None:
    """The `pip freeze` against uv.lock: nothing in this environment floats past the lock."""
    locked = _locked()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    off = {name: (have, sorted(locked[name])) for name, have in installed.items()
           if name in locked and have not in locked[name]}
    assert not off, f"installed versions differ from uv.lock: {off}"
    unlocked = sorted(set(installed) - set(locked))
    assert not unlocked, f"installed but not in uv.lock: {unlocked}"
    # The ones whose drift broke CI before the lock: the generator and the runtime it checks.
    for name in ("grpcio-tools", "grpcio", "protobuf", "betterproto2-compiler", "ruff", "mypy"):
        assert version(name) in locked[name], name


def test_the_library_keeps_ranges_and_the_lock_pins_every_one_of_them() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    locked = _locked()
    for req in requirements:
        name = canonicalize_name(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])
        assert "==" not in req, f"pyproject.toml pins {req}: pins belong in uv.lock"
        assert name in locked, f"{req} is not in uv.lock"


def test_the_bootstrap_uv_is_the_one_pyproject_requires() -> None:
    pinned = re.search(r"^uv==(\S+)", (REPO / "scripts" / "uv-requirements.txt").read_text(),
                       re.MULTILINE)
    hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}",
                        (REPO / "scripts" / "uv-requirements.txt").read_text())
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"][
        "required-version"]
    assert pinned and required == f"=={pinned.group(1)}"
    assert hashes, "uv-requirements.txt must carry hashes (pip --require-hashes)"
    proc = run([_require_uv(), "--version"])
    assert proc.stdout.split()[1] == pinned.group(1)


def test_check_lock_passes_here() -> None:
    _require_uv()
    proc = run([REPO / "scripts" / "check-lock.sh"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "uv.lock matches pyproject.toml; .venv matches uv.lock" in proc.stdout


def test_check_lock_fails_naming_the_lock_when_pyproject_moves(tmp_path: Path) -> None:
    """The control: a dependency added to pyproject.toml without re-locking is caught."""
    _require_uv()
    copy = _copy_with_tools(tmp_path)
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        '"pyyaml>=6",', '"pyyaml>=6",\n  "six>=1.16",', 1))
    proc = run([copy / "scripts" / "check-lock.sh"], cwd=copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "uv.lock does not match pyproject.toml" in proc.stderr


def test_check_lock_fails_when_the_uv_pins_disagree(tmp_path: Path) -> None:
    _require_uv()
    copy = _copy_with_tools(tmp_path)
    req = copy / "scripts" / "uv-requirements.txt"
    req.write_text(re.sub(r"^uv==\S+", "uv==0.0.1", req.read_text(), flags=re.MULTILINE))
    proc = run([copy / "scripts" / "check-lock.sh"], cwd=copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pins uv 0.0.1 but pyproject.toml requires uv" in proc.stderr


def _gen_check(copy: Path) -> tuple[int, str]:
    proc = run([copy / "scripts" / "gen-protos.sh", "--check"], cwd=copy,
               env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")})
    return proc.returncode, proc.stdout + proc.stderr


def test_gen_check_names_both_generator_versions_in_one_line(tmp_path: Path) -> None:
    """gen/ made by another grpcio-tools than the one installed: one line says which and what."""
    copy = copy_tree(REPO, tmp_path / "repo")
    generators = copy / "gen" / "GENERATORS"
    generators.write_text(re.sub(r"grpcio-tools==\S+", "grpcio-tools==1.0.0",
                                 generators.read_text()))
    rc, out = _gen_check(copy)
    assert rc == 1, out
    (line,) = out.strip().splitlines()
    assert "gen/ is stale for this environment" in line
    assert "grpcio-tools==1.0.0" in line
    assert f"grpcio-tools=={version('grpcio-tools')}" in line
    assert "scripts/setup.sh" in line


def test_gen_check_fails_when_the_library_allows_an_older_runtime_than_gen_needs(
        tmp_path: Path) -> None:
    """Stubs from grpcio-tools X refuse to import under grpcio < X: the floors must follow."""
    copy = copy_tree(REPO, tmp_path / "repo")
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '"grpcio>=' in text
    pyproject.write_text(re.sub(r'"grpcio>=[^"]+"', '"grpcio>=1.0"', text, count=1))
    rc, out = _gen_check(copy)
    assert rc == 1, out
    assert "pyproject.toml allows grpcio>=1.0 but gen/ needs grpcio>=" in out
    assert "gen/python/pyproject.toml" not in out  # only the file that is wrong is named


def test_gen_generators_file_names_the_locked_generators() -> None:
    recorded = dict(line.split("==") for line in
                    (REPO / "gen" / "GENERATORS").read_text().splitlines()
                    if line and not line.startswith("#"))
    locked = _locked()
    assert set(recorded) == {"grpcio-tools", "betterproto2-compiler"}
    for name, ver in recorded.items():
        assert locked[name] == {ver}, f"gen/ was made by {name} {ver}, uv.lock has {locked[name]}"


@pytest.mark.parametrize("script", ["setup.sh", "upgrade-deps.sh"])
def test_the_dependency_scripts_refuse_an_unknown_option(script: str) -> None:
    proc = run([REPO / "scripts" / script, "--frobnicate"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown option '--frobnicate'" in proc.stderr


def test_upgrade_deps_explains_itself() -> None:
    proc = run([REPO / "scripts" / "upgrade-deps.sh", "--help"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("upgrade-deps.sh - move the locked versions forward")
    assert "--uv VERSION" in proc.stdout and "set -e" not in proc.stdout


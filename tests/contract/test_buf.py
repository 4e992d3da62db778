"""The contracts obey buf: STANDARD lint (both modules: `protos/` and the third-party wire formats
in `protos-wire/`), a clean build, and no WIRE_JSON break against main."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.contract.helpers import REPO, copy_tree, require_buf, run

pytestmark = pytest.mark.contract

PROTOS = REPO / "protos"
WIRE = REPO / "protos-wire"
SERVER_PROTO = Path("protos/aifb/v1/server.proto")


def _buf(*args: str | Path, cwd: Path = REPO) -> tuple[int, str]:
    proc = run([require_buf(), *args], cwd=cwd, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _annotations(output: str) -> list[dict[str, object]]:
    """buf's --error-format json: one JSON object per line."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_buf_yaml_enforces_standard_lint_and_wire_json_breaking() -> None:
    config = yaml.safe_load((REPO / "buf.yaml").read_text())
    assert config["version"] == "v2"
    own, wire = config["modules"]
    assert own == {"path": "protos"}
    assert config["lint"]["use"] == ["STANDARD"]
    assert config["breaking"]["use"] == ["WIRE_JSON"]
    # The wire module waives only what upstream's names need (package names, one field name).
    assert wire["path"] == "protos-wire"
    assert wire["lint"] == {"use": ["STANDARD"], "except": [
        "PACKAGE_DIRECTORY_MATCH", "DIRECTORY_SAME_PACKAGE", "PACKAGE_VERSION_SUFFIX",
        "FIELD_LOWER_SNAKE_CASE"]}
    assert wire["breaking"] == {"use": ["WIRE"]}


def test_protos_carry_no_inline_lint_ignores() -> None:
    offenders = [str(p.relative_to(REPO)) for root in (PROTOS, WIRE)
                 for p in root.rglob("*.proto") if re.search(r"buf:lint:ignore", p.read_text())]
    assert offenders == []


def test_buf_lint_passes() -> None:
    rc, out = _buf("lint", "--error-format", "json")
    assert rc == 0, out
    assert _annotations(out) == []


def test_buf_build_produces_an_image_with_every_proto(tmp_path: Path) -> None:
    image = tmp_path / "image.json"
    rc, out = _buf("build", "-o", image)
    assert rc == 0, out
    files = {f["name"] for f in json.loads(image.read_text())["file"]}
    expected = {str(p.relative_to(root)) for root in (PROTOS, WIRE)
                for p in root.rglob("*.proto")}
    assert expected, "no .proto files found"
    assert expected <= files
    assert "google/protobuf/timestamp.proto" in files  # well-known imports resolve offline


def test_buf_breaking_against_main_passes() -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    if run([git, "rev-parse", "--verify", "--quiet", "refs/heads/main"]).returncode != 0:
        pytest.skip("this checkout has no local branch 'main' to compare with")
    # Module by module: the workspace's module list may have changed since main.
    main_buf = run([git, "show", "main:buf.yaml"]).stdout
    for module in ("protos", "protos-wire"):
        if f"path: {module}\n" not in main_buf:
            continue  # a module main does not have yet: all of it is new
        rc, out = _buf("breaking", module, "--against", f".git#branch=main,subdir={module}",
                       "--error-format", "json")
        assert rc == 0, (module, out)
        assert _annotations(out) == []


@pytest.fixture
def base_and_change(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of the workspace (buf.yaml, protos/, protos-wire/): an untouched base and one
    to edit."""
    copies = []
    for name in ("base", "change"):
        root = tmp_path / name
        root.mkdir()
        shutil.copy2(REPO / "buf.yaml", root / "buf.yaml")
        copy_tree(PROTOS, root / "protos")
        copy_tree(WIRE, root / "protos-wire")
        copies.append(root)
    return copies[0], copies[1]


def _edit(root: Path, old: str, new: str) -> None:
    path = root / SERVER_PROTO
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found exactly once in {SERVER_PROTO}"
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        # a different wire type for an existing number: old readers mis-decode it
        ("  ServiceState state = 5;", "  string state = 5;", "FIELD_WIRE_JSON_COMPATIBLE_TYPE"),
        # a field number reused by another field
        ("  string owner = 6;", "  string owner = 99;", "FIELD_NO_DELETE"),
        # a rename changes the JSON name: breaks buf curl, grpc-gateway, proto3 JSON users
        ("  string state_message = 9;", "  string status_message = 9;", "FIELD_SAME_JSON_NAME"),
        # an enum value renumbered: old peers read READY as an unknown number
        ("  SERVICE_STATE_READY = 3;", "  SERVICE_STATE_READY = 9;", "ENUM_VALUE_NO_DELETE"),
    ],
    ids=["field-type", "field-number", "field-json-name", "enum-value-number"],
)
def test_buf_breaking_fails_for_a_wire_or_json_incompatible_change(
        base_and_change: tuple[Path, Path], old: str, new: str, rule: str) -> None:
    base, change = base_and_change
    _edit(change, old, new)
    rc, out = _buf("breaking", change, "--against", base, "--error-format", "json")
    assert rc == 100, out  # buf's exit code for "breaking changes found"
    rules = {str(a["type"]) for a in _annotations(out)}
    assert any(r.startswith(rule) for r in rules), rules
    assert all(str(a["path"]).endswith(str(SERVER_PROTO)) for a in _annotations(out))


def test_buf_lint_checks_the_wire_module_too(base_and_change: tuple[Path, Path]) -> None:
    _, change = base_and_change
    view = change / "protos-wire" / "aifb" / "wire" / "telemetry_view.proto"
    view.write_text(view.read_text() + "\nenum Shade {\n  DARK = 0;\n}\n")
    rc, out = _buf("lint", change, "--error-format", "json")
    assert rc == 100, out
    rules = {str(a["type"]) for a in _annotations(out)}
    assert {"ENUM_VALUE_PREFIX", "ENUM_ZERO_VALUE_SUFFIX"} <= rules, rules


def test_buf_breaking_accepts_an_added_field(base_and_change: tuple[Path, Path]) -> None:
    """The control for the negative test: the copies themselves compare clean."""
    base, change = base_and_change
    _edit(change, "  int64 revision = 14;\n", "  int64 revision = 14;\n  string note = 99;\n")
    rc, out = _buf("breaking", change, "--against", base, "--error-format", "json")
    assert rc == 0, out

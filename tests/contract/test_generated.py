"""gen/ is what the protos produce, and both distributions install and import on their own."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from tests.contract.helpers import REPO, copy_tree, isolated_import_check, run

pytestmark = pytest.mark.contract

# The folders setuptools maps onto the `aifb` import root (package-dir in pyproject.toml).
PACKAGE_FOLDERS = ("mesh", "job", "server", "client", "monitor", "logger", "collector",
                   "experiment", "cli", "recipes")
# Top-level names a wrong package-dir mapping would install straight into site-packages.
COMPONENT_FOLDERS = (*PACKAGE_FOLDERS, "gen", "protos", "tests", "bench", "dashboards",
                     "scripts")


def _gen_env() -> dict[str, str]:
    # gen-protos.sh runs protoc through this interpreter (grpcio-tools, betterproto2-compiler).
    return {**os.environ, "PYTHON": sys.executable}


def test_gen_protos_check_passes() -> None:
    proc = run([REPO / "scripts" / "gen-protos.sh", "--check"], env=_gen_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gen/ is up to date" in proc.stdout


@pytest.mark.parametrize("stale_file", ["gen/python/aifb/v1/server_pb2.pyi",
                                        "gen/betterproto/aifb/dataclasses/aifb/v1/__init__.py"])
def test_gen_protos_check_fails_when_gen_differs_from_the_protos(
        tmp_path: Path, stale_file: str) -> None:
    """The control: --check really compares (here on a copy whose gen/ was edited by hand)."""
    copy = copy_tree(REPO, tmp_path / "repo")
    with (copy / stale_file).open("a") as fh:
        fh.write("# edited by hand\n")
    proc = run([copy / "scripts" / "gen-protos.sh", "--check"], cwd=copy, env=_gen_env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gen/ is stale" in proc.stderr


def _build_wheel(source: Path, out: Path) -> tuple[Path, str]:
    """Build from a scratch copy: an in-tree build would leave build/ and *.egg-info behind, and a
    stale build/lib from an earlier run could smuggle deleted modules into the wheel."""
    copy = copy_tree(source, out / "src")
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-cache-dir", "-w", out / "wheels", copy], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (out / "wheels").glob("*.whl")
    return wheel, proc.stdout + proc.stderr


def _install(wheel: Path, target: Path) -> Path:
    proc = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir",
                "--no-compile", "--target", target, wheel], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name.split("/", 1)[0] for name in zf.namelist()}


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


# Run in the isolated child: import each module, then report where every aifb module came from
# and whether any of the repository's folder names is importable at top level.
_PROBE = """
import importlib, importlib.util, json
mods = {mods!r}
for m in mods:
    importlib.import_module(m)
absent = {absent!r}
print(json.dumps({{
    "files": {{n: getattr(m, "__file__", None) for n, m in sys.modules.items()
               if n == "aifb" or n.startswith("aifb.")}},
    "aifb_path": list(sys.modules["aifb"].__path__),
    "found": [n for n in absent if importlib.util.find_spec(n) is not None],
    "path": sys.path,
}}))
"""


def _probe(target: Path, mods: list[str], absent: list[str], cwd: Path) -> dict[str, object]:
    proc = isolated_import_check(target, _PROBE.format(mods=mods, absent=absent), cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _assert_all_from(result: dict[str, object], target: Path) -> None:
    assert result["aifb_path"] == [str(target / "aifb")]  # a namespace with one portion
    files = result["files"]
    assert isinstance(files, dict)
    outside = {n: f for n, f in files.items()
               if f is not None and not Path(f).is_relative_to(target)}
    assert outside == {}, "aifb modules imported from outside the install target"
    path = result["path"]
    assert isinstance(path, list) and str(REPO) not in path


@pytest.fixture(scope="module")
def aifb_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project wheel, and a folder it was installed into with --target."""
    out = tmp_path_factory.mktemp("aifb-wheel")
    wheel, _ = _build_wheel(REPO, out)
    return wheel, _install(wheel, out / "target")


def test_project_wheel_ships_everything_under_the_aifb_root_only(
        aifb_wheel: tuple[Path, Path]) -> None:
    wheel, target = aifb_wheel
    assert _top_level(wheel) == {"aifb", "aifb-0.1.0.dist-info"}
    names = _names(wheel)
    assert "aifb/__init__.py" not in names  # aifb is a namespace package
    for expected in ("aifb/v1/server_pb2.py", "aifb/v1/server_pb2.pyi", "aifb/v1/py.typed",
                     "aifb/dataclasses/aifb/v1/__init__.py", "aifb/server/app.py",
                     "aifb/cli/main.py", "aifb/mesh/defaults.yaml"):
        assert expected in names
    # pyproject.toml lists the packages one by one: a subpackage left out of that list would be
    # missing from the wheel while every test (run from the repository) still passes.
    in_repo = {f"aifb/{path.relative_to(REPO).as_posix()}"
               for folder in PACKAGE_FOLDERS for path in (REPO / folder).rglob("*.py")
               if "__pycache__" not in path.parts}
    assert in_repo and in_repo - set(names) == set()
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read("aifb-0.1.0.dist-info/entry_points.txt").decode()
    assert "aifb = aifb.cli.main:main" in entry_points
    assert "aifb-fake-llm = aifb.recipes.fake_llm:main" in entry_points
    installed = {p.name for p in target.iterdir()}
    assert not installed & set(COMPONENT_FOLDERS), installed
    assert installed <= {"aifb", "aifb-0.1.0.dist-info", "bin"}


def test_project_wheel_imports_standalone_without_the_repository(
        aifb_wheel: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = aifb_wheel
    result = _probe(target,
                    ["aifb.v1.server_pb2", "aifb.v1.server_pb2_grpc", "aifb.server.app",
                     "aifb.cli.main", "aifb.dataclasses.aifb.v1"],
                    list(COMPONENT_FOLDERS), cwd=tmp_path)
    _assert_all_from(result, target)
    assert result["found"] == []  # no top-level server/client/mesh/... module is importable
    files = result["files"]
    assert isinstance(files, dict)
    assert {"aifb.server.app", "aifb.cli.main", "aifb.dataclasses.aifb.v1"} <= files.keys()


@pytest.fixture(scope="module")
def proto_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The stubs-only aifb-proto wheel (built from gen/python), its install target, build log."""
    out = tmp_path_factory.mktemp("aifb-proto-wheel")
    wheel, log = _build_wheel(REPO / "gen" / "python", out)
    return wheel, _install(wheel, out / "target"), log


def test_stub_wheel_ships_only_aifb_v1_with_type_stubs(proto_wheel: tuple[Path, Path, str]
                                                       ) -> None:
    wheel, target, log = proto_wheel
    assert wheel.name == "aifb_proto-0.1.0-py3-none-any.whl"
    assert "Warning" not in log, log
    names = _names(wheel)
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("aifb/v1/") for n in code), code
    generated = {p.name for p in (REPO / "gen" / "python" / "aifb" / "v1").iterdir()
                 if p.is_file()}
    assert {n.removeprefix("aifb/v1/") for n in code} == generated
    assert {"aifb/v1/server_pb2.pyi", "aifb/v1/py.typed"} <= set(names)
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
    assert "Name: aifb-proto" in metadata
    assert "Requires-Dist: grpcio>=1.85.1" in metadata
    assert "Requires-Dist: protobuf>=7.35.1" in metadata
    assert {p.name for p in target.iterdir()} == {"aifb", "aifb_proto-0.1.0.dist-info"}
    assert not (target / "aifb" / "__init__.py").exists()


_STUB_ROUNDTRIP = """
from aifb.v1 import server_pb2
svc = server_pb2.Service(name="services/x", state=server_pb2.SERVICE_STATE_READY, revision=3)
back = server_pb2.Service.FromString(svc.SerializeToString())
assert back == svc and back.state == server_pb2.SERVICE_STATE_READY
assert server_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name == "aifb.v1.ServerService"
"""


def test_stub_wheel_imports_standalone_and_nothing_else_of_aifb(
        proto_wheel: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, target, _ = proto_wheel
    result = _probe(target,
                    ["aifb.v1.server_pb2", "aifb.v1.server_pb2_grpc", "aifb.v1.common_pb2"],
                    ["aifb.server", "aifb.mesh", "aifb.cli", "aifb.dataclasses", "aifb.wire",
                     *COMPONENT_FOLDERS],
                    cwd=tmp_path)
    _assert_all_from(result, target)
    assert result["found"] == []  # only aifb.v1 is there
    proc = isolated_import_check(target, _STUB_ROUNDTRIP, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


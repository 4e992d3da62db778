"""Hostile parameter values are either rejected (naming the parameter) or reach the program as
exactly one argument, byte for byte: proven by running the rendered script with bash against a
stub interpreter that records the argv and environment it was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aifb.mesh.errors import InvalidArgument, RecipeError
from aifb.server.batch import render_batch_script
from aifb.server.jobs import JobSpec
from aifb.server.recipes.catalog import load_recipe_text
from aifb.server.recipes.resolve import build_job_spec, resolve

pytestmark = pytest.mark.unit

RECIPE = load_recipe_text("""\
name: echo
parameters:
  value: {type: string, default: x}
  text: {type: string, default: x, multiline: true}
command: [printf, "%s\\n", "{{ value }}", "pre-{{ value }}-post", "{{ text }}"]
env: {VALUE: "{{ value }}"}
files: {note.txt: "value={{ value }}"}
readiness: {tcp: {port: 9}}
""", file="echo.yaml")

STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_OUT"], "w") as fh:
    json.dump({{"argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
               "value": os.fsencode(os.environ.get("VALUE", "")).hex()}}, fh)
"""

# Each of these must survive as data; MARKER is replaced by a path the test watches.
SURVIVES = [
    "$(touch MARKER)", "`touch MARKER`", "; touch MARKER", "&& touch MARKER", "| touch MARKER",
    "' ; touch MARKER ; '", '" ; touch MARKER ; "', "'\"'\"'", "$HOME ${IFS} $0 $$", "--",
    "-n", "#SBATCH --mem=1T", "unicode é 世界 🚀 \u202e", "\\", "%s %n %%", "* ? [a]", "~",
    "a b  c", "", "{{ workdir }}", "!!",
]
# And these must be rejected with an error naming the parameter.
REJECTED = ["a\nb", "x\n#SBATCH --mem=1T", "a\0b", "x" * 1_000_000, "a\rb", "\x1b[31mred",
            "a\u2028b", "\x7f", "\t"]


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub-python"
    path.write_text(STUB.format(python=sys.executable))
    path.chmod(0o755)
    return path


def spec_for(params: dict[str, str], stub: Path, workdir: Path) -> JobSpec:
    resolved = resolve(RECIPE, params, None)
    return build_job_spec(resolved, service_id="s1", job_name="aifb-echo-s1", workdir=workdir,
                          python=str(stub), environment={"AIFB_SERVICE": "services/s1"})


def run_script(script: str, tmp_path: Path) -> tuple[list[bytes], bytes]:
    path = tmp_path / "job.sh"
    path.write_text(script, encoding="utf-8")
    out = tmp_path / "stub.json"
    subprocess.run(["bash", str(path)], check=True, timeout=30,
                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STUB_OUT": str(out)})
    data = json.loads(out.read_text())
    return [bytes.fromhex(a) for a in data["argv"]], bytes.fromhex(data["value"])


@pytest.mark.parametrize("raw", SURVIVES)
def test_hostile_value_reaches_program_as_one_exact_argument(raw: str, stub: Path,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = raw.replace("MARKER", str(marker))
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = render_batch_script(spec_for({"value": value}, stub, workdir))
    argv, env_value = run_script(script, tmp_path)
    program = argv[argv.index(b"--") + 1:]
    enc = value.encode()
    assert program == [b"printf", b"%s\n", enc, b"pre-" + enc + b"-post", b"x"]
    assert env_value == enc
    assert argv[argv.index(b"--file") + 1] == b"note.txt=value=" + enc
    assert not marker.exists()
    assert [ln for ln in script.splitlines() if ln.startswith("#SBATCH --mem")] == [
        "#SBATCH --mem=512M"]


def test_multiline_parameter_keeps_newlines_and_adds_no_sbatch_line(stub: Path,
                                                                    tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"line1\n#SBATCH --mem=1T\n$(touch {marker})\n'\n"
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = render_batch_script(spec_for({"text": text}, stub, workdir))
    argv, _ = run_script(script, tmp_path)
    assert argv[-1] == text.encode()
    assert not marker.exists()
    header = script.split("set -euo pipefail")[0]
    assert "--mem=1T" not in header


@pytest.mark.parametrize("value", REJECTED, ids=lambda v: repr(v)[:20])
def test_unrepresentable_or_oversized_value_is_rejected_naming_the_parameter(value: str) -> None:
    with pytest.raises(RecipeError) as err:
        resolve(RECIPE, {"value": value}, None)
    assert err.value.key == "parameters.value"
    assert len(str(err.value)) < 300  # a 1 MB value is never echoed back


def test_nul_is_rejected_even_in_a_multiline_parameter() -> None:
    with pytest.raises(RecipeError) as err:
        resolve(RECIPE, {"text": "a\n\0"}, None)
    assert err.value.key == "parameters.text"


@pytest.mark.parametrize(("change", "field"), [
    ({"job_name": "x\n#SBATCH --mem=1T"}, "job_name"),
    ({"stdout_path": "/tmp/a\nb"}, "stdout_path"),
    ({"environment": {"BAD-NAME": "x"}}, "environment.BAD-NAME"),
    ({"environment": {"OK": "a\0b"}}, "environment.OK"),
    ({"command": ("printf", "a\0b")}, "command[1]"),
    ({"workdir": "/tmp/w\nrm -rf /"}, "workdir"),
])
def test_renderer_rejects_unrepresentable_spec_values(change: dict[str, object], field: str,
                                                      stub: Path, tmp_path: Path) -> None:
    spec = replace(spec_for({}, stub, tmp_path), **change)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        render_batch_script(spec)
    assert err.value.field == field

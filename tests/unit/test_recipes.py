"""Recipes: shipped ones load and resolve; bad files and bad parameters fail with exact errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aifb.mesh.errors import InvalidArgument, NotFound, RecipeError
from aifb.server.batch import render_batch_script
from aifb.server.deploy import ResourceRequest
from aifb.server.recipes.catalog import (
    RecipeCatalog,
    load_recipe,
    load_recipe_text,
    runnable_here,
)
from aifb.server.recipes.resolve import build_job_spec, resolve
from aifb.server.recipes.schema import json_schema_text
from aifb.server.recipes.values import parse_memory_mib, parse_time_minutes

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["chroma", "fake-llm", "llamacpp", "nginx", "ollama", "pgvector", "qdrant", "redis",
           "vllm", "vllm-multinode"]

MINIMAL = """\
name: mini
parameters:
  port: {type: port, default: 9000, minimum: 1024}
  size: {type: int, default: 4, minimum: 1, maximum: 16}
  mode: {type: string, default: fast, choices: [fast, slow]}
  tag: {type: string, default: v1, pattern: "v[0-9]+"}
  ratio: {type: float, default: 0.5, minimum: 0, maximum: 1}
  debug: {type: bool, default: false}
  token: {type: string, required: true}
resources:
  cpus: 2
  memory: 1G
  time: "01:00:00"
  max: {cpus: 8, memory: 4G, time: "02:00:00", gpus: 0}
command: [prog, --port, "{{ port }}", "--size={{ size }}", "{{ mode }}", "{{ token }}"]
readiness:
  tcp: {port: "{{ port }}"}
"""


def mini():
    return load_recipe_text(MINIMAL, file="mini.yaml")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- shipped recipes ---------------------------------------------------------------------------

def test_catalog_lists_every_shipped_recipe() -> None:
    assert RecipeCatalog().names() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_resolves_and_renders_with_defaults(name: str) -> None:
    recipe = RecipeCatalog().get(name)
    assert recipe.source_yaml.startswith("#") or recipe.source_yaml.startswith("name:")
    resolved = resolve(recipe, {}, None)
    spec = build_job_spec(resolved, service_id="s1", job_name=f"aifb-{name}-s1",
                          workdir="/w/s1", python="/py", environment={"AIFB_SERVICE": "x"})
    assert spec.readiness.port > 0 and spec.auto_ports == ()
    assert "{{" not in " ".join(spec.command)
    script = render_batch_script(spec)
    assert script.startswith("#!/bin/bash\n") and "-m aifb.job.run" in script
    assert (spec.container is not None) == (recipe.runtime_kind == "apptainer")


def test_vllm_asks_for_a_gpu_and_declares_metrics() -> None:
    resolved = resolve(RecipeCatalog().get("vllm"), {}, None)
    assert resolved.resources.gpus == 1
    assert resolved.metrics_port == 8000 and resolved.metrics_path == "/metrics"
    assert resolved.container() is not None and resolved.container().nv  # type: ignore[union-attr]


def test_committed_json_schema_is_current() -> None:
    # Regenerate: .venv/bin/python -m aifb.server.recipes.schema recipes/schema.json
    assert (REPO / "recipes" / "schema.json").read_text() == json_schema_text()


# --- bad recipe files --------------------------------------------------------------------------

def test_unknown_key_names_file_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "typo.yaml", MINIMAL.replace("  size: {type: int,",
                                                         "  size: {type: int, defualt: 3,"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    e = err.value
    assert e.file == str(path) and e.key == "parameters.size.defualt"
    assert "unknown key 'defualt'" in str(e) and "default" in e.expected
    assert "minimum" in e.expected


def test_unknown_top_level_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "top.yaml", MINIMAL + "comand: [x]\n"))
    assert err.value.key == "comand" and "command" in err.value.expected


def test_wrong_type_names_key_and_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "wrong.yaml", MINIMAL.replace("cpus: 2", "cpus: two"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.file == str(path) and err.value.key == "resources.cpus"
    assert err.value.expected == "an integer" and "'two'" in str(err.value)


def test_bad_default_names_the_default_key() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL.replace("default: 4,", "default: 40,"), file="d.yaml")
    assert err.value.key == "parameters.size.default" and "1..16" in err.value.expected


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "name: x\ncommand: [a, b\nreadiness: {}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.file == str(path) and "line 3" in str(err.value)
    assert err.value.expected == "valid YAML"


def test_duplicate_yaml_key_is_an_error() -> None:
    with pytest.raises(RecipeError, match="duplicate key 'name'"):
        load_recipe_text("name: a\nname: b\n", file="dup.yaml")


def test_unknown_placeholder_is_rejected_with_known_names() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL.replace('"{{ mode }}"', '"{{ mdoe }}"'), file="p.yaml")
    assert err.value.key == "command[4]" and "mode" in err.value.expected


def test_program_may_not_come_from_a_parameter() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL.replace("command: [prog,", 'command: ["{{ mode }}",'),
                         file="p.yaml")
    assert err.value.key == "command[0]"


def test_readiness_needs_exactly_one_check() -> None:
    text = MINIMAL.replace('  tcp: {port: "{{ port }}"}', "  timeout: 5")
    with pytest.raises(RecipeError) as err:
        load_recipe_text(text, file="r.yaml")
    assert err.value.key == "readiness"


def test_file_paths_may_not_leave_the_workdir() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL + "files:\n  a/../../x: hi\n", file="f.yaml")
    assert err.value.key == "files.a/../../x"


# --- parameters --------------------------------------------------------------------------------

def test_parameters_are_typed_and_substituted_into_single_argv_elements() -> None:
    resolved = resolve(mini(), {"token": "a b", "debug": "yes", "ratio": "0.25"}, None)
    assert resolved.values["debug"] is True and resolved.values["ratio"] == 0.25
    assert resolved.argv == ("prog", "--port", "9000", "--size=4", "fast", "a b")
    assert resolved.parameter_text()["debug"] == "true"


def test_unknown_parameter_lists_valid_names() -> None:
    with pytest.raises(RecipeError) as err:
        resolve(mini(), {"token": "t", "sise": "3"}, None)
    assert "'sise'" in str(err.value) and "size" in err.value.expected
    assert "token" in err.value.expected


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("port", "abc", "an integer 1024..65535"),
    ("port", "80", "an integer 1024..65535"),
    ("port", "70000", "an integer 1024..65535"),
    ("size", "17", "an integer 1..16"),
    ("size", "1.5", "an integer 1..16"),
    ("ratio", "2", "a number 0..1"),
    ("ratio", "nan", "a number 0..1"),
    ("debug", "maybe", "true or false"),
    ("tag", "1", "a string matching 'v[0-9]+'"),
    ("tag", "v1x", "a string matching 'v[0-9]+'"),
    ("mode", "medium", "one of: fast, slow"),
])
def test_bad_parameter_value_names_parameter_and_expected(name: str, value: str,
                                                          expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        resolve(mini(), {"token": "t", name: value}, None)
    assert err.value.key == f"parameters.{name}"
    assert err.value.expected.startswith(expected)
    assert str(err.value).startswith(f"parameters.{name}: got ")


def test_missing_required_parameter_is_named() -> None:
    with pytest.raises(RecipeError) as err:
        resolve(mini(), {}, None)
    assert err.value.key == "parameters.token" and "required" in str(err.value)


def test_port_zero_is_an_auto_port_left_as_a_token() -> None:
    resolved = resolve(mini(), {"token": "t", "port": "0"}, None)
    assert resolved.auto_ports == ("port",)
    assert resolved.readiness.port == 0 and resolved.readiness.port_param == "port"
    assert resolved.argv[2] == "{{ port }}"


# --- resources ---------------------------------------------------------------------------------

def test_resource_defaults_come_from_the_recipe() -> None:
    spec = resolve(mini(), {"token": "t"}, ResourceRequest()).resources
    assert (spec.cpus, spec.memory_mib, spec.time_limit_minutes, spec.gpus) == (2, 1024, 60, 0)


def test_resource_overrides_within_caps_apply() -> None:
    req = ResourceRequest(cpus=8, memory_mib=4096, time_limit_minutes=120, partition="gpu")
    spec = resolve(mini(), {"token": "t"}, req).resources
    assert (spec.cpus, spec.memory_mib, spec.time_limit_minutes, spec.partition) == (
        8, 4096, 120, "gpu")


@pytest.mark.parametrize(("req", "field"), [
    (ResourceRequest(cpus=9), "resources.cpus"),
    (ResourceRequest(memory_mib=4097), "resources.memory_mib"),
    (ResourceRequest(time_limit_minutes=121), "resources.time_limit_minutes"),
    (ResourceRequest(gpus=1), "resources.gpus"),
    (ResourceRequest(nodes=-1), "resources.nodes"),
    (ResourceRequest(partition="gpu\n#SBATCH --mem=1T"), "resources.partition"),
])
def test_resource_override_beyond_caps_is_rejected(req: ResourceRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve(mini(), {"token": "t"}, req)
    assert err.value.field == field


def test_default_above_cap_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL.replace("cpus: 2", "cpus: 9"), file="c.yaml")
    assert err.value.key == "resources"


@pytest.mark.parametrize(("text", "mib"), [("512M", 512), ("4G", 4096), ("1T", 1048576),
                                           (300, 300), ("2048K", 2), ("1gb", 1024)])
def test_memory_sizes_convert_to_mib(text: str | int, mib: int) -> None:
    assert parse_memory_mib(text) == mib


@pytest.mark.parametrize(("text", "minutes"), [("30", 30), ("01:00:00", 60), ("1-00:00:00", 1440),
                                               ("1-2", 1560), ("0:30", 1), (45, 45),
                                               ("UNLIMITED", None)])
def test_time_limits_convert_to_minutes(text: str | int, minutes: int | None) -> None:
    assert parse_time_minutes(text) == minutes


# --- catalog -----------------------------------------------------------------------------------

def test_extra_directory_overrides_packaged_recipe_by_name(tmp_path: Path) -> None:
    write(tmp_path, "redis.yaml", MINIMAL.replace("name: mini", "name: redis"))
    catalog = RecipeCatalog([tmp_path])
    assert "token" in catalog.get("redis").parameters
    assert catalog.names() == SHIPPED


def test_get_unknown_recipe_lists_known_names() -> None:
    with pytest.raises(NotFound) as err:
        RecipeCatalog().get("postgres")
    assert "redis" in str(err.value) and "vllm" in str(err.value)


def test_broken_recipe_is_skipped_in_list_and_reported_by_get(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "name: broken\ncommand: 3\n")
    catalog = RecipeCatalog([tmp_path], packaged=False)
    assert catalog.names() == []
    with pytest.raises(RecipeError) as err:
        catalog.get("broken")
    assert err.value.file == str(tmp_path / "broken.yaml")


def test_runnable_here_names_the_missing_program() -> None:
    recipes = RecipeCatalog()
    assert runnable_here(recipes.get("redis"), lambda p: None) == (
        False, "not found on PATH: redis-server")
    assert runnable_here(recipes.get("vllm"), lambda p: f"/usr/bin/{p}") == (True, "")
    ok, why = runnable_here(recipes.get("vllm"), lambda p: None)
    assert not ok and "apptainer" in why


# --- metrics: ----------------------------------------------------------------------------------

WITH_METRICS = MINIMAL.replace("name: mini", "name: metered")


def test_shipped_recipes_declare_metrics_exactly_where_the_software_serves_them() -> None:
    declared = {r.name: r.metrics_endpoint for r in RecipeCatalog().list()}
    assert sorted(n for n, m in declared.items() if m is not None) == [
        "fake-llm", "llamacpp", "qdrant", "vllm", "vllm-multinode"]
    assert all(m.path == "/metrics" for m in declared.values() if m is not None)


@pytest.mark.parametrize("text", ["", "metrics: null\n", "metrics: false\n"])
def test_absent_null_or_false_metrics_means_none_and_the_sidecar_is_told_off(text: str) -> None:
    recipe = load_recipe_text(WITH_METRICS + text, file="m.yaml")
    resolved = resolve(recipe, {"token": "t"}, None)
    assert recipe.metrics_endpoint is None and resolved.metrics is None
    assert resolved.metrics_environment() == {"AIFB_METRICS_PATH": "off"}


def test_metrics_port_defaults_to_the_readiness_port() -> None:
    recipe = load_recipe_text(WITH_METRICS + "metrics: {path: /stats/prom}\n", file="m.yaml")
    resolved = resolve(recipe, {"token": "t", "port": "9100"}, None)
    assert resolved.metrics is not None
    assert (resolved.metrics.path, resolved.metrics.port,
            resolved.metrics.on_endpoint_port) == ("/stats/prom", 9100, True)
    spec = build_job_spec(resolved, service_id="s1", job_name="j", workdir="/w", python="/py",
                          environment={})
    assert spec.environment["AIFB_METRICS_PATH"] == "/stats/prom"
    assert spec.environment["AIFB_METRICS_PORT"] == "9100"


def test_metrics_on_another_auto_port_is_left_for_the_job_to_fill_in() -> None:
    text = WITH_METRICS.replace(
        "  size:", "  admin: {type: port, default: 0}\n  size:") + (
        'metrics: {port: "{{ admin }}", path: /metrics}\n')
    resolved = resolve(load_recipe_text(text, file="m.yaml"), {"token": "t"}, None)
    assert resolved.metrics is not None
    assert (resolved.metrics.port, resolved.metrics.on_endpoint_port) == (0, False)
    assert resolved.metrics_environment()["AIFB_METRICS_PORT"] == "{{ admin }}"
    assert resolved.auto_ports == ("admin",)


def test_metrics_on_the_auto_readiness_port_follows_the_endpoint() -> None:
    recipe = load_recipe_text(WITH_METRICS + 'metrics: {port: "{{port}}"}\n', file="m.yaml")
    resolved = resolve(recipe, {"token": "t", "port": "0"}, None)
    assert resolved.metrics is not None
    assert (resolved.metrics.port, resolved.metrics.on_endpoint_port) == (0, True)
    assert resolved.metrics_environment()["AIFB_METRICS_PORT"] == "{{ port }}"


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("metrics: true\n", "metrics", "a mapping or false"),
    ("metrics: /metrics\n", "metrics", "a mapping"),
    ("metrics: {url: http://x/metrics}\n", "metrics.url", "one of: port, path"),
    ("metrics: {path: metrics}\n", "metrics.path", "text matching ^/"),
    ("metrics: {port: 70000}\n", "metrics.port", "<= 65535"),
    ('metrics: {port: "{{ mode }}"}\n', "metrics.port", "an int/port parameter"),
])
def test_bad_metrics_key_names_the_key_and_what_was_expected(text: str, key: str,
                                                             expected: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe_text(WITH_METRICS + text, file="m.yaml")
    assert err.value.key == key and err.value.file == "m.yaml"
    assert expected in err.value.expected


def test_jobs_search_the_interpreters_folder_first_and_no_relative_entries() -> None:
    from aifb.server.deploy import job_search_path

    path = job_search_path("/opt/venv/bin/python",
                           {"PATH": os.pathsep.join([".venv/bin", "/usr/bin", "", "/usr/bin"])})
    entries = path.split(os.pathsep)
    assert entries[0] == "/opt/venv/bin"
    assert entries[1] == os.path.abspath(".venv/bin")
    assert entries[2:] == ["/usr/bin"]  # empty and repeated entries dropped

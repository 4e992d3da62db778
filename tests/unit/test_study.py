"""Study files: the example loads and expands in a stable order; every mistake names the file,
line, column and field; the strict YAML loader refuses what YAML would silently accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifb.experiment.expand import (
    Configuration,
    Level,
    configurations,
    levels,
    trial_count,
    trial_timeout,
)
from aifb.experiment.schema import json_schema_text, study_json_schema
from aifb.experiment.study import Study, load_study, load_study_file
from aifb.mesh.errors import InvalidArgument
from aifb.mesh.yamlfile import MAX_YAML_BYTES, load_yaml, load_yaml_file

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = """\
name: nginx-workers
description: nginx with 1 or 2 worker processes, at two rates
services:
  - name: nginx
    recipe: nginx
    parameters:
      worker_processes: [1, 2]
      port: 0
    resources:
      cpus: [1, 2]
    exclude:
      - {worker_processes: 2, cpus: 1}
workloads:
  - name: http
    workload: http
    parameters: {path: /}
    load:
      duration: 10s
      warmup: 1s
    rates: [100, 200]
repeats: 2
seed: 7
objective: {maximize: achieved_rate}
limits:
  parallel_deployments: 1
  deploy_timeout: 10m
  trial_timeout: 10m
  budget: 2h
on_failure: continue
labels: {team: ml}
"""

ZIPPED = """\
name: vllm-tp
services:
  - recipe: vllm
    parameters: {model: m, dtype: [half, float]}
    zip:
      - {tensor_parallel: [1, 2, 4], gpus: [1, 2, 4]}
    exclude:
      - {dtype: float, gpus: 4}
  - name: small
    recipe: vllm
workloads:
  - workload: openai-chat
    search: {slo: {p99: 50ms, errors: 1%}, start: 100}
  - name: saturation
    workload: openai-chat
    sweep: {max_concurrency: 32}
    load: {duration: 20s}
  - name: closed
    workload: openai-chat
    concurrencies: [1, 8]
objective: {maximize: best_rate}
"""


def study(text: str = EXAMPLE) -> Study:
    return load_study(text, file="nginx.yaml")


def error(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        study(text)
    return info.value


# --- the example ------------------------------------------------------------------------------

def test_example_loads_with_durations_in_seconds_and_values_as_text() -> None:
    s = study()
    assert s.name == "nginx-workers" and s.repeats == 2 and s.seed == 7
    assert s.services[0].parameters == {"worker_processes": ["1", "2"], "port": ["0"]}
    assert s.services[0].resources == {"cpus": ["1", "2"]}
    load = s.workloads[0].load
    assert (load.duration, load.warmup, load.cooldown) == (10.0, 1.0, 0.0)
    assert s.workloads[0].parameters == {"path": "/"}
    assert (s.limits.deploy_timeout, s.limits.trial_timeout, s.limits.budget) == (600, 600, 7200)
    assert s.objective.metric == "achieved_rate" and s.objective.direction == "maximize"
    assert s.labels == {"team": "ml"}


def test_example_expands_to_two_workers_times_two_cpus_minus_the_excluded_one() -> None:
    configs = configurations(study())
    assert [c.key() for c in configs] == [
        "nginx worker_processes=1 cpus=1",
        "nginx worker_processes=1 cpus=2",
        "nginx worker_processes=2 cpus=2",
    ]
    assert [c.index for c in configs] == [0, 1, 2]
    assert configs[2] == Configuration(
        2, "nginx", "nginx", {"worker_processes": "2", "port": "0"}, {"cpus": "2"},
        {"worker_processes": "2", "cpus": "2"})
    assert configs[1].resource_request() == {"cpus": 2}


def test_example_levels_and_trial_count() -> None:
    s = study()
    assert levels(s.workloads[0]) == [Level("rate", 100.0), Level("rate", 200.0)]
    assert trial_count(s) == 3 * 2 * 2 == 12
    assert trial_timeout(s, s.workloads[0]) == 600.0


def test_zip_groups_move_together_after_the_product_axes_and_exclude_applies() -> None:
    s = study(ZIPPED)
    keys = [c.key() for c in configurations(s)]
    assert keys == [
        "vllm dtype=half tensor_parallel=1 gpus=1",
        "vllm dtype=half tensor_parallel=2 gpus=2",
        "vllm dtype=half tensor_parallel=4 gpus=4",
        "vllm dtype=float tensor_parallel=1 gpus=1",
        "vllm dtype=float tensor_parallel=2 gpus=2",
        "small",
    ]
    first = configurations(s)[0]
    assert first.parameters == {"model": "m", "dtype": "half", "tensor_parallel": "1"}
    assert first.resources == {"gpus": "1"}


def test_sweep_search_and_concurrency_levels_and_their_trial_counts() -> None:
    s = study(ZIPPED)
    assert [levels(w) for w in s.workloads] == [
        [Level("search")], [Level("sweep")],
        [Level("concurrency", 1.0), Level("concurrency", 8.0)]]
    search = s.workloads[0].search
    assert search is not None and search.slo == {"p99": "50ms", "errors": "1%"}
    assert (search.min_rate, search.max_rate) == (100 / 1024, 100 * 1024)
    assert trial_count(s) == 6 * (12 + 1 + 2)  # a search counts its max_trials
    assert trial_timeout(s, s.workloads[1]) == 3 * 20 * 8 + 60  # a sweep's eight steps
    assert trial_timeout(s, s.workloads[2]) == 3 * 10 + 60


def test_names_default_to_the_recipe_and_the_workload() -> None:
    s = study(ZIPPED)
    assert [g.name for g in s.services] == ["vllm", "small"]
    assert [w.name for w in s.workloads] == ["openai-chat", "saturation", "closed"]


def test_grid_values_become_the_text_the_server_takes() -> None:
    s = study(EXAMPLE.replace("port: 0", "ratio: [1, 1.0, 0.25, 1.5e+3, true, off, x]"))
    assert s.services[0].parameters["ratio"] == ["1", "1.0", "0.25", "1500.0", "true",
                                                 "false", "x"]


def test_resources_are_checked_and_normalised_as_slurm_reads_them() -> None:
    s = study(EXAMPLE.replace("cpus: [1, 2]",
                              "cpus: [1, 2]\n      memory: [512, 2G]\n      time: 1:30:00\n"
                              "      partition: gpu"))
    assert s.services[0].resources == {"cpus": ["1", "2"], "memory": ["512M", "2G"],
                                       "time": ["1:30:00"], "partition": ["gpu"]}
    config = configurations(s)[1]
    assert config.key() == "nginx worker_processes=1 cpus=1 memory=2G"
    assert config.resource_request() == {"cpus": 1, "memory_mib": 2048,
                                         "time_limit_minutes": 90, "partition": "gpu"}


# --- round trip and schema --------------------------------------------------------------------

@pytest.mark.parametrize("text", [EXAMPLE, ZIPPED])
def test_a_study_round_trips_through_to_dict_and_keeps_its_configurations(text: str) -> None:
    s = study(text)
    data = s.to_dict()
    again = Study.from_dict(data)
    assert again == s and again.to_dict() == data
    assert configurations(again) == configurations(s)


def test_from_dict_errors_name_the_field_without_a_file() -> None:
    data = study().to_dict()
    data["workloads"][0]["rates"] = [100.0, -1.0]
    with pytest.raises(InvalidArgument) as info:
        Study.from_dict(data)
    assert info.value.message == "workloads[0].rates[1]: must be > 0, got -1.0"
    assert info.value.field == "workloads[0].rates[1]"


def test_committed_json_schema_matches_the_model() -> None:
    # Regenerate: .venv/bin/python -m aifb.experiment.schema recipes/study-schema.json
    assert (REPO / "recipes" / "study-schema.json").read_text() == json_schema_text()
    schema = study_json_schema()
    assert schema["required"] == ["name", "services", "workloads"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("text", [EXAMPLE, ZIPPED])
def test_the_published_schema_accepts_the_examples(text: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")  # comes with the vectordb extra
    validator = jsonschema.Draft202012Validator(study_json_schema())
    validator.check_schema(study_json_schema())
    assert [e.message for e in validator.iter_errors(load_yaml(text, file="x").data)] == []
    typo = load_yaml(text.replace("recipe:", "recipes:", 1), file="x").data
    assert [e.message for e in validator.iter_errors(typo)] != []


# --- errors name file:line:col and the field --------------------------------------------------

@pytest.mark.parametrize(("old", "new", "message"), [
    ("rates: [100, 200]", "rates: [100, -5]",
     "nginx.yaml:20:18: workloads[0].rates[1]: must be > 0, got -5"),
    ("rates: [100, 200]", "rates: [100, 100]",
     "nginx.yaml:20:18: workloads[0].rates[1]: duplicate level 100 (also at [0])"),
    ("rates: [100, 200]", "rates: [2000000]",
     "nginx.yaml:20:13: workloads[0].rates[0]: must be <= 1000000, got 2000000"),
    ("rates: [100, 200]", "rates: [.nan]",
     "nginx.yaml:20:13: workloads[0].rates[0]: must be a finite number, got nan"),
    ("rates: [100, 200]", "rates: []",
     "nginx.yaml:20:5: workloads[0].rates: must have at least 1 item, got 0"),
    ("rates: [100, 200]", "concurrencies: [1, 0]",
     "nginx.yaml:20:24: workloads[0].concurrencies[1]: must be > 0, got 0"),
    ("rates: [100, 200]", "concurrencies: [1.5]",
     "nginx.yaml:20:21: workloads[0].concurrencies[0]: expected an integer, got 1.5"),
    ("    rates: [100, 200]\n", "",
     "nginx.yaml:14:5: workloads[0]: missing its load levels: give exactly one of rates, "
     "concurrencies, sweep or search"),
    ("rates: [100, 200]", "rates: [1]\n    sweep: {}",
     "nginx.yaml:21:5: workloads[0].sweep: rates and sweep both given; a workload runs "
     "exactly one of rates, concurrencies, sweep or search"),
    ("worker_processes: [1, 2]", "worker_processes: []",
     "nginx.yaml:7:7: services[0].parameters.worker_processes: an empty grid axis has no "
     "configurations; give at least one value"),
    ("worker_processes: [1, 2]", "worker_processes: [1, 1]",
     "nginx.yaml:7:29: services[0].parameters.worker_processes[1]: duplicate value '1' "
     "(also at [0])"),
    ("cpus: [1, 2]", "cpus: [1, 0]",
     "nginx.yaml:10:17: services[0].resources.cpus[1]: expected an integer 1..100000, got 0"),
    ("cpus: [1, 2]", "cpu: [1, 2]",
     "nginx.yaml:10:7: services[0].resources.cpu: unknown resource 'cpu'; expected one of: "
     "nodes, cpus, memory, gpus, time, partition, account"),
    ("cpus: [1, 2]", "cpus: [1, 2]\n      memory: lots",
     "nginx.yaml:11:7: services[0].resources.memory: expected a size such as 512M or 4G, "
     "got 'lots'"),
    ("cpus: [1, 2]", "cpus: [1, 2]\n      time: [60, UNLIMITED]",
     "nginx.yaml:11:18: services[0].resources.time[1]: expected a time limit up to 365 days, "
     "got 'UNLIMITED'"),
    ("{worker_processes: 2, cpus: 1}", "{worker_processes: 3}",
     "nginx.yaml:12:10: services[0].exclude[0].worker_processes: '3' is not one of the "
     "values of worker_processes: 1, 2"),
    ("{worker_processes: 2, cpus: 1}", "{threads: 2}",
     "nginx.yaml:12:10: services[0].exclude[0].threads: not an axis of this grid; expected "
     "one of: worker_processes, port, cpus"),
    ("      - {worker_processes: 2, cpus: 1}", "      - {cpus: 1}\n      - {cpus: 2}",
     "nginx.yaml:11:5: services[0].exclude: exclude removes every configuration of this grid"),
    ("    recipe: nginx\n", "",
     "nginx.yaml:4:5: services[0].recipe: missing (a required key)"),
    ("    parameters:\n      worker", "    params: {}\n    parameters:\n      worker",
     "nginx.yaml:6:5: services[0].params: unknown key; expected one of: name, recipe, "
     "parameters, resources, zip, exclude"),
    ("name: nginx-workers\n", "name: Nginx\n",
     "nginx.yaml:1:1: name: must match ^[a-z][a-z0-9-]{0,62}$, got 'Nginx'"),
    ("repeats: 2", "repeats: 0", "nginx.yaml:21:1: repeats: must be >= 1, got 0"),
    ("repeats: 2", "repeats: twice", "nginx.yaml:21:1: repeats: expected an integer, got 'twice'"),
    ("duration: 10s", "duration: soon",
     "nginx.yaml:18:7: workloads[0].load.duration: expected a duration such as 500ms, 10s, "
     "2m, 1h or a number of seconds, got 'soon'"),
    ("warmup: 1s", "error_budget: 150%",
     "nginx.yaml:19:7: workloads[0].load.error_budget: expected a ratio within 0..1 or a "
     "percentage such as 5%, got '150%'"),
    ("warmup: 1s", "slo: {p100: 5ms}",
     "nginx.yaml:19:13: workloads[0].load.slo.p100: unknown objective 'p100'; expected pNN, "
     "ttft_pNN, itl_pNN, tpot_pNN, service_pNN (0 < NN < 100) or errors"),
    ("warmup: 1s", "arrival: bursty",
     "nginx.yaml:19:7: workloads[0].load.arrival: expected 'constant' or 'poisson', "
     "got 'bursty'"),
    ("{maximize: achieved_rate}", "{maximize: speed}",
     "nginx.yaml:23:13: objective.maximize: expected 'achieved_rate', 'ok_rate', "
     "'latency_p50', 'latency_p99', 'ttft_p99', 'tpot_p99', 'output_tokens_per_second', "
     "'error_ratio' or 'best_rate', got 'speed'"),
    ("{maximize: achieved_rate}", "{maximize: ok_rate, minimize: latency_p99}",
     "nginx.yaml:23:1: objective: give exactly one of maximize or minimize, such as "
     "{maximize: achieved_rate}"),
    ("{maximize: achieved_rate}", "{maximize: best_rate}",
     "nginx.yaml:23:13: objective.maximize: best_rate is the result of a rate search, and no "
     "workload has search"),
    ("parallel_deployments: 1", "parallel_deployments: 65",
     "nginx.yaml:25:3: limits.parallel_deployments: must be <= 64, got 65"),
    ("on_failure: continue", "on_failure: retry",
     "nginx.yaml:29:1: on_failure: expected 'continue' or 'abort', got 'retry'"),
    ("{team: ml}", "{Team: ml}",
     "nginx.yaml:30:10: labels.Team: expected a key matching ^[a-z][a-z0-9_-]{0,62}$, "
     "got 'Team'"),
    ("labels: {team: ml}\n", "labels: {team: ml}\nretries: 3\n",
     "nginx.yaml:31:1: retries: unknown key; expected one of: name, description, services, "
     "workloads, repeats, seed, objective, limits, on_failure, labels"),
])
def test_each_mistake_names_file_line_column_and_field(old: str, new: str,
                                                       message: str) -> None:
    assert old in EXAMPLE
    exc = error(EXAMPLE.replace(old, new, 1))
    assert exc.message == message
    assert exc.field == message.split(": ")[1]


def test_a_missing_top_level_key_is_reported_at_the_document() -> None:
    exc = error(EXAMPLE.replace("workloads:", "tasks:", 1))
    assert exc.message.startswith("nginx.yaml:13:1: tasks: unknown key")
    exc = error("name: s\nservices: [{recipe: nginx}]\n")
    assert exc.message == "nginx.yaml:1:1: workloads: missing (a required key)"
    assert exc.field == "workloads"


def test_duplicate_names_are_refused_at_the_second() -> None:
    exc = error(EXAMPLE.replace("  - name: http\n", "  - {workload: http, rates: [1]}\n"
                                                    "  - name: http\n"))
    assert exc.message == ("nginx.yaml:15:5: workloads[1].name: duplicate name 'http' (also "
                           "workloads[0]); give each one its own name")
    exc = error(ZIPPED.replace("name: small", "name: vllm"))
    assert exc.field == "services[1].name" and exc.message.startswith("nginx.yaml:9:5: ")


def test_zip_groups_need_equal_lengths_and_keys_outside_the_product() -> None:
    exc = error(ZIPPED.replace("gpus: [1, 2, 4]", "gpus: [1, 2]"))
    assert exc.message == ("nginx.yaml:6:9: services[0].zip[0]: the lists of a zip group move "
                           "together and need equal lengths, got tensor_parallel: 3, gpus: 2")
    exc = error(ZIPPED.replace("tensor_parallel: [1, 2, 4]", "dtype: [a, b, c]"))
    assert exc.message == ("nginx.yaml:6:10: services[0].zip[0].dtype: dtype is also a grid "
                           "axis (parameters.dtype); an axis is either in the product or in a "
                           "zip group")


def test_search_needs_an_slo_and_sane_bounds() -> None:
    no_slo = ZIPPED.replace("slo: {p99: 50ms, errors: 1%}", "slo: {}")
    assert error(no_slo).message == (
        "nginx.yaml:13:14: workloads[0].search.slo: a search needs an SLO to meet, such as "
        "{p99: 50ms, errors: 1%}")
    low = ZIPPED.replace("start: 100}", "start: 100, min: 200}")
    assert error(low).message == ("nginx.yaml:13:56: workloads[0].search.min: must be <= "
                                  "start (100), got 200")
    missing = ZIPPED.replace(", start: 100}", "}")
    assert error(missing).message == ("nginx.yaml:13:5: workloads[0].search.start: missing "
                                      "(a required key)")
    tolerance = ZIPPED.replace("start: 100}", "start: 100, tolerance: 1}")
    assert error(tolerance).field == "workloads[0].search.tolerance"


def test_a_grid_over_1024_configurations_is_refused() -> None:
    many = ", ".join(str(i) for i in range(1, 600))
    exc = error(EXAMPLE.replace("worker_processes: [1, 2]", f"worker_processes: [{many}]"))
    assert exc.message == ("nginx.yaml:4:5: services[0]: 1198 configurations (599 x 1 x 2); a "
                           "grid holds at most 1024: drop values, or zip axes that move "
                           "together")
    assert exc.field == "services[0]"


def test_a_study_over_10000_trials_is_refused() -> None:
    rates = ", ".join(str(i) for i in range(1, 65))
    exc = error(EXAMPLE.replace("[100, 200]", f"[{rates}]").replace("repeats: 2", "repeats: 53"))
    assert exc.message == ("nginx.yaml:13:1: workloads: 10176 trials (3 configurations x 64 "
                           "levels x 53 repeats); a study runs at most 10000: drop values, "
                           "levels or repeats")
    assert exc.field == "workloads"


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert error("").message == ("nginx.yaml:1:1: expected a mapping with name, services and "
                                 "workloads, got an empty file")
    assert error("- a\n").message.endswith("got list")


# --- the strict YAML loader -------------------------------------------------------------------

def test_duplicate_yaml_keys_are_refused_with_their_line() -> None:
    exc = error(EXAMPLE.replace("    recipe: nginx\n", "    recipe: nginx\n    recipe: redis\n"))
    assert exc.message == ("nginx.yaml:6:5: invalid YAML: duplicate key 'recipe' (first at "
                           "line 5)")
    assert exc.field == "services[0].recipe"


def test_yaml_syntax_errors_name_line_and_column() -> None:
    exc = error("name: s\nservices: [\n")
    assert exc.message.startswith("nginx.yaml:3:1: invalid YAML: ")
    assert error("a: 1\n---\nb: 2\n").message == (
        "nginx.yaml:2:1: invalid YAML: expected a single document in the stream, but found "
        "another document")


def test_yaml_over_one_mib_is_refused(tmp_path: Path) -> None:
    text = "name: s\ndescription: " + "x" * MAX_YAML_BYTES + "\n"
    with pytest.raises(InvalidArgument, match=r"^big\.yaml: 1048598 bytes; a YAML file holds "
                                              r"at most 1048576 bytes \(1 MiB\)$"):
        load_study(text, file="big.yaml")
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match="more than 1048576 bytes"):
        load_study_file(path)


def test_load_study_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(EXAMPLE)
    assert load_study_file(path) == study()
    path.write_text(EXAMPLE.replace("repeats: 2", "repeats: 0"))
    with pytest.raises(InvalidArgument, match=rf"^{path}:21:1: repeats: must be >= 1"):
        load_study_file(path)
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_study_file(tmp_path / "absent.yaml")
    path.write_bytes(b"name: s\ndescription: \xff\n")
    with pytest.raises(InvalidArgument, match=r":2:14: invalid YAML: not UTF-8 at byte 21$"):
        load_yaml_file(path)


def test_where_gives_the_key_of_a_mapping_entry_and_the_start_of_a_list_item() -> None:
    doc = load_yaml("a:\n  b: [1, 22]\n  c:\n    - x: 1\n      y: 2\n", file="t.yaml")
    assert doc.data == {"a": {"b": [1, 22], "c": [{"x": 1, "y": 2}]}}
    assert doc.where(()) == (1, 1)
    assert doc.where(("a", "b")) == (2, 3)
    assert doc.where(("a", "b", 1)) == (2, 10)
    assert doc.where(("a", "c", 0)) == (4, 7)
    assert doc.where(("a", "c", 0, "y")) == (5, 7)


def test_where_falls_back_to_the_deepest_node_that_exists() -> None:
    doc = load_yaml("a:\n  b: [1, 22]\n", file="t.yaml")
    assert doc.where(("a", "missing", "deeper")) == (1, 1)
    assert doc.where(("a", "b", 5)) == (2, 3)
    assert doc.where(("a", "b", 0, "x")) == (2, 7)
    assert load_yaml("", file="t.yaml").where(("a",)) is None


def test_yaml_stays_plain_data_sexagesimal_and_dates_stay_text() -> None:
    doc = load_yaml("t: 1:30\nd: 2024-01-01\nf: 1.5\nb: yes\nn: ~\ns: !!str 5\n", file="t.yaml")
    assert doc.data == {"t": "1:30", "d": "2024-01-01", "f": 1.5, "b": True, "n": None,
                        "s": "5"}


@pytest.mark.parametrize(("text", "message"), [
    ("a: !!binary aGk=\n", "t.yaml:1:4: invalid YAML: unsupported tag !!binary (plain values "
                           "only)"),
    ("a: !!set {x}\n", "t.yaml:1:4: invalid YAML: unsupported tag !!set (plain mappings only)"),
    ("a: &x {k: 1}\nb: {<<: *x}\n", "t.yaml:2:5: invalid YAML: merge keys (<<) are not "
                                    "supported: write the keys out"),
    ("a: &x [*x]\n", "t.yaml:1:4: invalid YAML: a recursive alias (an anchor used inside "
                     "itself)"),
    ("a: \x00\n", "t.yaml:1:4: invalid YAML: character '\\x00' is not allowed in YAML text"),
    ("a: " + "1" * 5000 + "\n", "t.yaml:1:4: invalid YAML: a number of 5000 characters is too "
                                "large"),
    ("? [a]\n: 1\n", "t.yaml:1:3: invalid YAML: a mapping key must be a plain value, not a "
                     "list or a mapping"),
])
def test_yaml_that_is_not_plain_data_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_yaml(text, file="t.yaml")
    assert info.value.message == message


def test_aliases_expand_but_an_alias_bomb_is_refused() -> None:
    doc = load_yaml("base: &b {duration: 10s}\nx: *b\n", file="t.yaml")
    assert doc.data["x"] == {"duration": "10s"}
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcde", "bcdef", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(InvalidArgument, match=r"more than 200000 values \(once aliases are "
                                              r"expanded\)"):
        load_yaml("\n".join(lines) + "\n", file="t.yaml")


def test_an_error_budget_of_zero_is_refused_rather_than_read_as_the_default() -> None:
    text = ("name: z\nservices:\n  - recipe: nginx\nworkloads:\n  - workload: http\n"
            "    load: {error_budget: 0}\n    rates: [10]\n")
    with pytest.raises(InvalidArgument) as exc:
        load_study(text, file="z.yaml")
    assert exc.value.field == "workloads[0].load.error_budget"
    assert "z.yaml:6:" in exc.value.message and "0.0001" in exc.value.message


def test_a_field_path_and_its_location_convert_both_ways() -> None:
    from aifb.mesh.yamlfile import path_loc, path_text

    for loc in [("workloads", 0, "rates", 1), ("services", 2, "parameters", "workers"), ()]:
        assert path_loc(path_text(loc)) == loc
    assert path_loc("services[0].zip[1][0]") == ("services", 0, "zip", 1, 0)

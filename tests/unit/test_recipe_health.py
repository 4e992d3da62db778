"""A recipe's readiness/liveness checks and restart policy: the schema, the request's override,
and what the batch script passes to the in-job entry point."""

from __future__ import annotations

import json
import shlex

import pytest

from aifb.mesh.errors import InvalidArgument, RecipeError
from aifb.server.batch import jobrun_argv
from aifb.server.deploy import ResourceRequest
from aifb.server.recipes.catalog import load_recipe_text
from aifb.server.recipes.params import RestartOverride
from aifb.server.recipes.resolve import build_job_spec, resolve
from tests.unit.test_recipes import MINIMAL

pytestmark = pytest.mark.unit

HEALTHY = MINIMAL.replace('readiness:\n  tcp: {port: "{{ port }}"}\n', """\
readiness:
  exec: {command: [pg_isready, -p, "{{ port }}", -d, "{{ workdir }}"], port: "{{ port }}"}
  interval: 0.5
liveness:
  http: {port: "{{ port }}", path: /live, status: 204}
  interval: 5
  failure_threshold: 4
  initial_delay: 10
restart:
  policy: on-failure
  max_restarts: 5
  backoff: 2
""")


def options(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(0, len(argv) - 1, 2)
            if argv[i].startswith("--")}


def test_health_checks_and_restart_policy_reach_the_entry_point() -> None:
    recipe = load_recipe_text(HEALTHY, file="h.yaml")
    spec = build_job_spec(resolve(recipe, {"token": "t", "port": "0"}, ResourceRequest()),
                          service_id="abc", job_name="j", workdir="/w", python="py",
                          environment={})
    opts = options(jobrun_argv(spec))
    assert opts["--readiness"] == "exec" and opts["--ready-port"] == "{{ port }}"
    # Builtins are filled in by the server; the auto port is left for the job.
    assert json.loads(opts["--ready-exec"]) == ["pg_isready", "-p", "{{ port }}", "-d", "/w"]
    assert opts["--ready-interval"] == "0.5"
    assert json.loads(opts["--liveness"]) == {
        "kind": "http", "port": "{{ port }}", "path": "/live", "status": 204, "command": [],
        "interval": 5.0, "timeout": 2.0, "failure_threshold": 4, "initial_delay": 10.0}
    assert json.loads(opts["--restart"]) == {"policy": "on-failure", "max_restarts": 5,
                                             "backoff": 2.0, "max_backoff": 60.0}


def test_a_recipe_without_them_renders_no_health_options() -> None:
    recipe = load_recipe_text(MINIMAL, file="m.yaml")
    spec = build_job_spec(resolve(recipe, {"token": "t"}, ResourceRequest()), service_id="abc",
                          job_name="j", workdir="/w", python="py", environment={})
    argv = jobrun_argv(spec)
    assert not {"--liveness", "--restart", "--ready-exec", "--ready-interval"} & set(argv)
    assert spec.restart.policy == "never"


def test_the_request_overrides_the_recipes_restart_fields_it_sets() -> None:
    recipe = load_recipe_text(HEALTHY, file="h.yaml")
    resolved = resolve(recipe, {"token": "t"}, ResourceRequest(),
                       RestartOverride(policy="always", max_restarts=0))
    assert (resolved.restart.policy, resolved.restart.max_restarts,
            resolved.restart.backoff_seconds) == ("always", 0, 2.0)


@pytest.mark.parametrize(("override", "field"), [
    (RestartOverride(policy="sometimes"), "restart_policy.policy"),
    (RestartOverride(max_restarts=-1), "restart_policy.max_restarts"),
    (RestartOverride(max_restarts=10001), "restart_policy.max_restarts"),
    (RestartOverride(backoff_seconds=float("nan")), "restart_policy.backoff"),
    (RestartOverride(backoff_seconds=3601), "restart_policy.backoff"),
    (RestartOverride(backoff_seconds=30, max_backoff_seconds=10), "restart_policy.max_backoff"),
])
def test_a_bad_restart_override_is_refused_naming_the_field(override: RestartOverride,
                                                            field: str) -> None:
    recipe = load_recipe_text(HEALTHY, file="h.yaml")
    with pytest.raises(InvalidArgument) as err:
        resolve(recipe, {"token": "t"}, ResourceRequest(), override)
    assert err.value.field == field


@pytest.mark.parametrize(("old", "new", "key"), [
    ('port: "{{ port }}"}\n  interval: 0.5', "}\n  interval: 0.5", "readiness"),
    ("command: [pg_isready,", 'command: ["{{ mode }}",', "readiness.exec.command[0]"),
    ("path: /live, status: 204", "path: /live, status: 99", "liveness.http.status"),
    ("failure_threshold: 4", "failure_threshold: 0", "liveness.failure_threshold"),
    ("failure_threshold: 4", "failures: 4", "liveness"),
    ("policy: on-failure", "policy: sometimes", "restart.policy"),
    ("backoff: 2", "backoff: 2\n  max_backoff: 1", "restart"),
    ('"{{ workdir }}"]', '"{{ wrokdir }}"]', "readiness.exec.command[4]"),
])
def test_a_bad_health_section_names_the_key(old: str, new: str, key: str) -> None:
    assert old in HEALTHY
    with pytest.raises(RecipeError) as err:
        load_recipe_text(HEALTHY.replace(old, new), file="h.yaml")
    assert err.value.key.startswith(key), (err.value.key, str(err.value))


def test_exec_arguments_stay_single_words_in_the_script() -> None:
    recipe = load_recipe_text(HEALTHY, file="h.yaml")
    spec = build_job_spec(resolve(recipe, {"token": "t", "mode": "slow"}, ResourceRequest()),
                          service_id="abc", job_name="j", workdir="/w w'; rm -rf /",
                          python="py", environment={})
    argv = jobrun_argv(spec)
    text = " ".join(shlex.quote(a) for a in argv)
    assert shlex.split(text) == argv  # quoted once, read back exactly
    assert json.loads(options(argv)["--ready-exec"])[4] == "/w w'; rm -rf /"


def test_only_workers_may_use_the_head_host_and_their_program_is_fixed() -> None:
    workers = '\nworkers:\n  command: [agent, --join, "{{ head_host }}:{{ port }}"]\n  on_head: 2\n'
    recipe = load_recipe_text(MINIMAL + workers, file="w.yaml")
    spec = build_job_spec(resolve(recipe, {"token": "t"}, ResourceRequest()), service_id="a",
                          job_name="j", workdir="/w", python="py", environment={})
    opts = options(jobrun_argv(spec))
    assert json.loads(opts["--workers"]) == {"argv": ["agent", "--join", "{{ head_host }}:9000"],
                                             "per_node": 1, "on_head": 2, "nodes": 1}
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL.replace('"{{ token }}"]', '"{{ head_host }}"]'), file="h.yaml")
    assert err.value.key == "command[5]"
    with pytest.raises(RecipeError) as err:
        load_recipe_text(MINIMAL + workers.replace("[agent,", '["{{ mode }}",'), file="w.yaml")
    assert err.value.key == "workers.command[0]"

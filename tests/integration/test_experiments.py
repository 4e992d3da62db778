"""`aifb experiment` against a real `aifb up` (local executor and real SLURM), as the issue asks:
a 2 configurations x 2 rates x 2 repeats study ends with 8 trials whose figures are exactly the
benchmark runs'; SIGKILL of the server mid-experiment resumes it with no trial run twice and no
job left behind; cancel tears every deployment down; the SLO search's bracketing runs say what
its answer says; bad study files are refused before anything is submitted."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli_procs import AIFB, Daemon, free_port, until
from tests.integration.test_cli_telemetry import Up, cli_env

pytestmark = pytest.mark.integration

TERMINAL = {"EXPERIMENT_STATE_SUCCEEDED", "EXPERIMENT_STATE_FAILED",
            "EXPERIMENT_STATE_CANCELLED"}


def _start(tmp: Path, port: int, scheduler: str, *, telemetry: bool = False) -> Up:
    env = cli_env(tmp)
    daemon = Daemon.start(["up", "--listen", f"127.0.0.1:{port}", "--metrics-listen", "",
                           "--scheduler", scheduler,
                           *(() if telemetry else ("--no-telemetry",))],
                          env=env, cwd=tmp, ready_text="aifb is up on")
    return Up(daemon, f"127.0.0.1:{port}", "", env, tmp)


@pytest.fixture(params=["local", "slurm"])
def scheduler(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
    return str(request.param)


@pytest.fixture
def up(tmp_path: Path, scheduler: str) -> Iterator[Up]:
    started = _start(tmp_path, free_port(), scheduler)
    try:
        yield started
    finally:
        _cleanup(started)


def _cleanup(up: Up) -> None:
    if up.daemon.proc.poll() is not None:
        return
    for x in up.json("experiment", "list"):
        if x["state"] not in TERMINAL:
            up.cli("experiment", "cancel", x["name"])
    for svc in up.json("services", "list"):
        if svc["state"] not in ("SERVICE_STATE_STOPPED", "SERVICE_STATE_FAILED"):
            up.cli("services", "delete", svc["name"].removeprefix("services/"))
    up.daemon.stop()


def _study(tmp: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _get(up: Up, name: str) -> dict[str, Any]:
    return dict(up.json("experiment", "get", name))


def _wait_terminal(up: Up, name: str, timeout: float = 240) -> dict[str, Any]:
    return dict(until(lambda: (x := _get(up, name))["state"] in TERMINAL and x,
                      f"{name} to end", timeout=timeout))


def _jobs_left(up: Up, scheduler: str, services: list[dict[str, Any]]) -> list[str]:
    """The SLURM jobs of these services still queued or running (none: nothing orphaned)."""
    if scheduler != "slurm":
        return []
    ids = [s["job"]["job_id"] for s in services if s.get("job", {}).get("job_id")]
    if not ids:
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=False, timeout=30)
    return out.stdout.split()


def _services_of(up: Up, experiment: str) -> list[dict[str, Any]]:
    eid = experiment.removeprefix("experiments/")
    return [s for s in up.json("services", "list")
            if s.get("labels", {}).get("experiment") == eid]


def _benchmarks_of(up: Up, experiment: str) -> list[dict[str, Any]]:
    eid = experiment.removeprefix("experiments/")
    return list(up.json("bench", "list", "--filter", f"label.experiment={eid}"))


TWO_BY_TWO = """
name: two-by-two
services:
  - recipe: nginx
    parameters: {workers: [1, 2], port: 0}
workloads:
  - name: rates
    workload: http
    parameters: {connections: 4}
    load: {duration: 2s}
    rates: [50, 150]
repeats: 2
limits: {deploy_timeout: 90s}
"""


def test_two_configurations_two_rates_two_repeats_give_eight_trials_and_the_runs_figures(
        up: Up, scheduler: str, tmp_path: Path) -> None:
    run = up.cli("--output", "json", "experiment", "run", str(_study(tmp_path, TWO_BY_TWO)),
                 "--watch", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    x = json.loads(run.stdout)
    assert x["state"] == "EXPERIMENT_STATE_SUCCEEDED", x["state_message"]
    assert len(x["configurations"]) == 2 and len(x["trials"]) == 8
    assert {t["state"] for t in x["trials"]} == {"TRIAL_STATE_SUCCEEDED"}
    # Repeats interleave within a configuration: rate 50, 150, then 50, 150 again.
    assert [(t.get("configuration", 0), t.get("repeat", 0), t["level"]) for t in x["trials"]] == [
        (c, r, level) for c in (0, 1) for r in (0, 1) for level in (50.0, 150.0)]
    report = json.loads(up.cli("experiment", "report", x["name"]).stdout)
    groups = {(g["configuration"], g["level"]): g for g in report["groups"]}
    assert len(groups) == 4 and all(g["succeeded"] == 2 for g in groups.values())
    for t in x["trials"]:
        bench = up.cli("bench", "report", t["benchmark"].removeprefix("benchmarks/"))
        assert bench.returncode == 0, bench.stderr
        figures = json.loads(bench.stdout)["figures"]
        mine = report["trials"][int(t["name"].rsplit("/", 1)[1])]["figures"]
        assert mine["achieved_rate"] == figures["achieved_rate"]
        assert mine["latency_p99_seconds"] == figures["histograms"]["latency"]["p99"]
        assert mine["error_ratio"] == figures["error_ratio"] == 0
    for (config, level), g in groups.items():
        rates = [report["trials"][n]["figures"]["achieved_rate"] for n in g["trials"]]
        assert g["figures"]["achieved_rate"]["mean"] == pytest.approx(sum(rates) / 2,
                                                                        rel=1e-12)
        assert g["figures"]["achieved_rate"]["ci_low"] <= sum(rates) / 2
        assert level * 0.95 <= g["figures"]["achieved_rate"]["mean"] <= level * 1.05, config
    # One deployment per configuration, deleted at the end; one benchmark per trial.
    services = _services_of(up, x["name"])
    assert len(services) == 2
    assert {s["state"] for s in services} == {"SERVICE_STATE_STOPPED"}
    assert _jobs_left(up, scheduler, services) == []
    assert len(_benchmarks_of(up, x["name"])) == 8
    html = up.cli("experiment", "report", x["name"], "--format", "html").stdout
    assert "<svg" in html and "nginx workers=2" in html


RESUMABLE = """
name: resumable
services:
  - recipe: nginx
    parameters: {workers: 1, port: 0}
workloads:
  - name: rates
    workload: http
    load: {duration: 3s}
    rates: [40, 60, 80]
repeats: 2
limits: {deploy_timeout: 90s}
"""


def test_sigkill_of_the_server_mid_experiment_resumes_it_without_reruns_or_orphans(
        tmp_path: Path, scheduler: str) -> None:
    port = free_port()
    up = _start(tmp_path, port, scheduler)
    try:
        created = up.json("experiment", "run", str(_study(tmp_path, RESUMABLE)))
        name = created["name"]

        def two_done_one_running() -> bool:
            trials = _get(up, name)["trials"]
            done = sum(t["state"] == "TRIAL_STATE_SUCCEEDED" for t in trials)
            return done >= 2 and any(t["state"] == "TRIAL_STATE_BENCHMARKING" for t in trials)

        until(two_done_one_running, "two trials done and a third running", timeout=180)
        before = {t["name"]: t for t in _get(up, name)["trials"]}
        watcher = subprocess.Popen(  # a watch from before the crash, to its end
            [str(AIFB), "--server", up.address, "--output", "json", "experiment", "watch",
             name], env=up.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert watcher.stderr is not None
        first = watcher.stderr.readline()  # its snapshot: the watch is open before the kill
        assert '"state": "RUNNING"' in first, first
        up.daemon.proc.kill()
        up.daemon.proc.wait(30)
        up = _start(tmp_path, port, scheduler)
        x = _wait_terminal(up, name)
        out, err = watcher.communicate(timeout=120)
        err = first + err
        assert watcher.returncode == 0, err[-2000:]
        assert "reconnecting" in err
        assert json.loads(out)["state"] == "EXPERIMENT_STATE_SUCCEEDED"
        assert x["state"] == "EXPERIMENT_STATE_SUCCEEDED", x["state_message"]
        assert {t["state"] for t in x["trials"]} == {"TRIAL_STATE_SUCCEEDED"}
        for t in x["trials"]:  # a trial that had ended kept its benchmark: not run again
            if before[t["name"]]["state"] == "TRIAL_STATE_SUCCEEDED":
                assert t["benchmark"] == before[t["name"]]["benchmark"]
        # At most the interrupted trial ran twice; one deployment, deleted; no job left.
        assert 6 <= len(_benchmarks_of(up, name)) <= 7
        services = _services_of(up, name)
        assert len(services) == 1, services
        until(lambda: {s["state"] for s in _services_of(up, name)} == {"SERVICE_STATE_STOPPED"},
              "the deployment to stop", timeout=60)
        assert _jobs_left(up, scheduler, services) == []
    finally:
        _cleanup(up)


LONG = """
name: long
services:
  - recipe: nginx
    parameters: {workers: [1, 2], port: 0}
workloads:
  - name: rates
    workload: http
    load: {duration: 60s}
    rates: [20]
limits: {parallel_deployments: 2, deploy_timeout: 90s}
"""


def test_cancel_stops_the_running_trials_and_deletes_every_deployment(
        up: Up, scheduler: str, tmp_path: Path) -> None:
    name = up.json("experiment", "run", str(_study(tmp_path, LONG)))["name"]
    until(lambda: sum(t["state"] == "TRIAL_STATE_BENCHMARKING"
                      for t in _get(up, name)["trials"]) == 2,
          "both configurations benchmarking", timeout=120)
    cancelled = up.cli("--output", "json", "experiment", "cancel", name)
    assert cancelled.returncode == 0, cancelled.stderr
    x = _wait_terminal(up, name, timeout=60)
    assert x["state"] == "EXPERIMENT_STATE_CANCELLED"
    assert {t["state"] for t in x["trials"]} == {"TRIAL_STATE_CANCELLED"}
    services = _services_of(up, name)
    assert len(services) == 2
    until(lambda: {s["state"] for s in _services_of(up, name)} == {"SERVICE_STATE_STOPPED"},
          "every deployment to stop", timeout=60)
    assert _jobs_left(up, scheduler, services) == []
    assert {b["state"] for b in _benchmarks_of(up, name)} == {"BENCHMARK_STATE_CANCELLED"}


SEARCH = """
name: knee
services:
  - recipe: nginx
    parameters: {workers: 1, port: 0}
workloads:
  - name: knee
    workload: http
    parameters: {connections: 8}
    load: {duration: 1s}
    search: {slo: {p99: 3ms, errors: 1%}, start: 500, max: 64000, tolerance: 0.2,
             max_trials: 8}
"""


@pytest.mark.parametrize("scheduler", ["local"], indirect=True)
def test_the_slo_search_answer_is_bracketed_by_its_own_runs(
        up: Up, tmp_path: Path) -> None:
    run = up.cli("--output", "json", "experiment", "run", str(_study(tmp_path, SEARCH)),
                 "--watch", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    x = json.loads(run.stdout)
    (search,) = x["searches"]
    trials = {t["level"]: t for t in x["trials"]}
    assert len(trials) == len(x["trials"]) <= 8  # no rate tried twice
    best, failed = search.get("best_rate", 0.0), search.get("failed_rate", 0.0)
    if best:
        assert trials[best]["figures"].get("slo_met") is True
        assert all(t["figures"].get("slo_met") is not True for level, t in trials.items()
                   if level > best), "a rate above the answer met the SLO"
    if failed:
        assert trials[failed]["figures"].get("slo_met") is not True
    if search.get("converged") and best and failed:
        assert (failed - best) / best <= 0.2 + 1e-9, search["reason"]
    # The runs' own verdict: p99 against the 3 ms SLO, from each benchmark's report.
    for t in x["trials"]:
        doc = json.loads(up.cli("bench", "report",
                                t["benchmark"].removeprefix("benchmarks/")).stdout)
        met = all(s["met"] for s in doc["slo"])
        assert met == bool(t["figures"].get("slo_met")), t["name"]


BAD = {
    "unknown recipe": ("services:\n  - recipe: no-such-recipe\n", "no-such-recipe"),
    "unknown parameter": ("services:\n  - recipe: nginx\n    parameters: {colour: [1, 2]}\n",
                          "colour"),
    "wrong type": ("services:\n  - recipe: nginx\n    parameters: {workers: [one, 2]}\n",
                   "workers"),
    "empty grid": ("services:\n  - recipe: nginx\n    parameters: {workers: []}\n",
                   "study.yaml:4"),
}
_WORKLOAD = ("workloads:\n  - workload: http\n    load: {duration: 1s}\n"
             "    search: {slo: SLO, start: 10}\n")


@pytest.mark.parametrize("scheduler", ["local"], indirect=True)
@pytest.mark.parametrize("case", [*BAD, "impossible SLO", "unknown SLO", "unknown workload"])
def test_a_bad_study_is_refused_naming_what_is_wrong_and_nothing_is_submitted(
        up: Up, tmp_path: Path, case: str) -> None:
    services, words = BAD.get(case, ("services:\n  - recipe: nginx\n", ""))
    workload = _WORKLOAD.replace("SLO", "{p99: 10ms}")
    if case == "impossible SLO":
        workload, words = _WORKLOAD.replace("SLO", "{p99: -5ms}"), "study.yaml:"
    elif case == "unknown SLO":
        workload, words = _WORKLOAD.replace("SLO", "{p101: 5ms}"), "p101"
    elif case == "unknown workload":
        workload, words = workload.replace("http", "gopher"), "gopher"
    path = _study(tmp_path, f"name: bad\n{services}{workload}")
    out = up.cli("experiment", "run", str(path))
    assert out.returncode != 0
    assert words in out.stderr, out.stderr
    # The file's line, whether the CLI's own check or a service refused it.
    assert f"{path}:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert up.json("experiment", "list") == []
    assert up.json("services", "list") == []
    assert up.json("bench", "list") == []


SPARK = """
name: on-spark
services:
  - recipe: nginx
    parameters: {workers: 1, port: 0}
workloads:
  - workload: http
    load: {duration: 2s, engine: spark, spark_master: "local[2]"}
    rates: [60]
"""


@pytest.mark.parametrize("scheduler", ["local"], indirect=True)
def test_a_study_can_run_its_load_on_spark_as_bench_run_can(up: Up, tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    run = up.cli("--output", "json", "experiment", "run", str(_study(tmp_path, SPARK)),
                 "--watch", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (trial,) = json.loads(run.stdout)["trials"]
    assert trial["state"] == "TRIAL_STATE_SUCCEEDED"
    doc = json.loads(up.cli("bench", "report",
                            trial["benchmark"].removeprefix("benchmarks/")).stdout)
    assert doc["configuration"]["load"]["engine"] == "spark"
    assert doc["figures"]["workers"] == 2  # two Spark partitions, merged on the driver
    assert doc["figures"]["counters"]["completed"] == 120


USAGE = """
name: usage
services:
  - recipe: nginx
    parameters: {workers: 1, port: 0}
workloads:
  - workload: http
    load: {duration: 6s}
    rates: [400]
"""


def test_each_trial_records_what_its_service_used_from_the_collector(tmp_path: Path) -> None:
    up = _start(tmp_path, free_port(), "local", telemetry=True)
    try:
        run = up.cli("--output", "json", "experiment", "run", str(_study(tmp_path, USAGE)),
                     "--watch", timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        (trial,) = json.loads(run.stdout)["trials"]
        extra = trial["figures"]["extra"]
        # nginx serving 400 req/s uses some CPU, far from all of it, and some memory.
        assert 0.0 < extra["cpu_cores"] < 2.0, extra
        assert extra["memory_rss_bytes"] > 1_000_000, extra
        assert extra["achieved_rate_per_cpu_core"] == pytest.approx(
            trial["figures"]["achieved_rate"] / extra["cpu_cores"])
    finally:
        _cleanup(up)

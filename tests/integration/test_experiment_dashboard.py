"""dashboards/experiment.json against a real experiment: `aifb up` (local scheduler) remote-writing
to a real Prometheus, `aifb experiment run --watch` of one nginx configuration at two rates;
every PromQL expression of the dashboard, its `experiment` variable resolved as Grafana does, is
evaluated there and must return data for the experiment, one series per trial."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.dashboards_promql import (
    DASHBOARD_DIR,
    evaluate,
    extract_queries,
    load_dashboard,
    resolve_variables,
    shape_problems,
    substitute,
)
from tests.integration.cli_procs import until
from tests.integration.test_cli_telemetry import Up, start_up

if TYPE_CHECKING:
    from tests.fixtures.prometheus import PrometheusServer

pytestmark = pytest.mark.integration

BOARD = DASHBOARD_DIR / "experiment.json"
STUDY = """
name: dashboard
services:
  - recipe: nginx
    parameters: {workers: 1, port: 0}
workloads:
  - name: rates
    workload: http
    load: {duration: 3s}
    rates: [50, 100]
repeats: 1
limits: {deploy_timeout: 90s}
"""


def _stop(up: Up) -> None:
    """Delete what the experiment left running (local jobs outlive the server), then stop."""
    if up.daemon.proc.poll() is None:
        for svc in up.json("services", "list"):
            if svc["state"] not in ("SERVICE_STATE_STOPPED", "SERVICE_STATE_FAILED"):
                up.cli("services", "delete", svc["name"].removeprefix("services/"))
    assert up.daemon.stop() == 0, up.daemon.log()
    assert "Traceback" not in up.daemon.log(10_000), up.daemon.log(60)


def test_every_experiment_dashboard_query_returns_each_trials_data_after_an_experiment(
        prometheus: PrometheusServer, tmp_path: Path) -> None:
    board = load_dashboard(BOARD)
    assert shape_problems(board, {"aifb-prometheus": "prometheus", "aifb-loki": "loki"}) == []
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    up = start_up(tmp_path, prometheus, "--scheduler", "local")
    try:
        run = up.cli("--output", "json", "experiment", "run", str(study), "--watch",
                     timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        x = json.loads(run.stdout)
        assert x["state"] == "EXPERIMENT_STATE_SUCCEEDED", x["state_message"]
        eid = x["name"].removeprefix("experiments/")
        trial_of = {t["benchmark"]: t["name"].rsplit("/", 1)[1] for t in x["trials"]}
        assert sorted(trial_of.values()) == ["0", "1"]
        # Each run's requests counter reached Prometheus, labelled with its trial, at the
        # total the run reports.
        for bench in up.json("bench", "list", "--filter", f"label.experiment={eid}"):
            total = float(bench["last_progress"]["extra"]["total_requests"])
            sel = (f'run="{bench["name"].removeprefix("benchmarks/")}", experiment="{eid}", '
                   f'trial="{trial_of[bench["name"]]}"')
            until(lambda sel=sel, total=total: prometheus.query(
                f"aifb_bench_requests_total{{{sel}}} == {total}"),
                f"{sel}: {total:g} requests in Prometheus", timeout=30)
        at = time.time()
        _check_every_query(prometheus, board, eid, at)
    finally:
        _stop(up)
    # Only the trials' runs carry the two labels.
    labelled = prometheus.query('count by (run) (aifb_bench_requests_total{experiment!=""})')
    assert {f"benchmarks/{r['metric']['run']}" for r in labelled} == set(trial_of)


def _check_every_query(prometheus: PrometheusServer, board: dict[str, Any], eid: str,
                       at: float) -> None:
    queries = extract_queries(BOARD)
    with httpx.Client() as client:

        def query(expr: str) -> list[dict[str, Any]]:
            result, error = evaluate(prometheus.url, expr, at, client=client)
            assert not error, (expr, error)
            return result

        variables = resolve_variables(
            board, queries,
            lambda expr, label: [r["metric"][label] for r in query(expr) if label in r["metric"]])
        assert variables["experiment"] == eid
        panels = [q for q in queries if not q.where.startswith("variable ")]
        assert len(panels) >= 5
        for q in panels:
            result = query(substitute(q.expr, variables))
            assert result, f"{q.id} returned no data: {q.expr}"
            assert not all(math.isnan(float(r["value"][1])) for r in result), q.id
            # One series per trial, each with the labels its legend names.
            assert sorted(r["metric"].get("trial", "") for r in result) == ["0", "1"], (
                q.id, result)
            assert {r["metric"].get("experiment") for r in result} == {eid}, q.id
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", q.legend):
                assert all(label in r["metric"] for r in result), (q.id, q.legend)
        # The table's figures are the trials' own: intended rate 50 and 100, no errors.
        table = {q.where: q for q in panels if q.where.startswith("panel 'Trials'")}
        target = {r["metric"]["trial"]: float(r["value"][1])
                  for r in query(substitute(table["panel 'Trials' A"].expr, variables))}
        assert target == {"0": 50.0, "1": 100.0}
        errors = query(substitute(table["panel 'Trials' D"].expr, variables))
        assert {float(r["value"][1]) for r in errors} == {0.0}

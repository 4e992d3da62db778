"""The experiment's report from a hand-made record: group means and intervals are exactly
`stats.summarize` of the trials' figures, the best configuration follows the objective, "within
the noise" follows the repeats' spread, trials that did not succeed are listed but not averaged;
each format lands in the run folder; the Pareto front; two reports compared for a CI gate."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from aifb.experiment.charts import pareto_front
from aifb.experiment.compare import compare_documents
from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    ExperimentState,
    Trial,
    TrialState,
)
from aifb.experiment.plan import Plan
from aifb.experiment.report import build_document, render_report
from aifb.experiment.stats import parse_threshold, summarize
from aifb.experiment.study import load_study
from aifb.mesh.errors import InvalidArgument

pytestmark = pytest.mark.unit

SCRIPT = "<script>alert(1)</script>"


def _study_text(values: str = "[1, 2]", objective: str = "{maximize: achieved_rate}") -> str:
    return f"""\
name: two-by-two
description: two configurations at two rates, three repeats
services:
  - name: web
    recipe: nginx
    parameters: {{worker_processes: {values}}}
workloads:
  - name: http
    workload: http
    rates: [100, 200]
repeats: 3
objective: {objective}
"""


# (worker_processes, rate) -> the figure over the 3 repeats.
# At 100 req/s the two overlap (noisy); at 200 req/s they are far apart.
RATE = {("1", 100.0): [98.0, 100.0, 102.0], ("2", 100.0): [97.0, 101.0, 104.0],
        ("1", 200.0): [150.0, 151.0, 152.0], ("2", 200.0): [198.0, 199.0, 200.0]}
# At 100 req/s worker_processes=1 is faster; at 200 req/s worker_processes=2.
P99 = {("1", 100.0): [0.010, 0.011, 0.012], ("2", 100.0): [0.020, 0.021, 0.022],
       ("1", 200.0): [0.050, 0.052, 0.054], ("2", 200.0): [0.030, 0.031, 0.032]}


def _record(values: str = "[1, 2]", objective: str = "{maximize: achieved_rate}",
            p99_scale: float = 1.0, with_p99: bool = True,
            spoil: dict[int, Trial] | None = None) -> ExperimentRecord:
    """Every trial SUCCEEDED with the figures above (trials in `spoil` replaced)."""
    study = load_study(_study_text(values, objective), file="t.yaml")
    plan = Plan(study)
    trials = []
    for t in plan.initial_trials():
        wp = plan.configurations[t.configuration].parameters["worker_processes"]
        wp = "2" if wp == SCRIPT else wp
        figures = {"achieved_rate": RATE[(wp, t.level)][t.repeat]}
        if with_p99:
            figures["latency_p99_seconds"] = P99[(wp, t.level)][t.repeat] * p99_scale
        trials.append(t.evolve(state=TrialState.SUCCEEDED, figures=figures, slo_met=True,
                               benchmark=f"benchmarks/b{t.n}"))
    for n, trial in (spoil or {}).items():
        trials[n] = trial
    return ExperimentRecord(
        id="e1", owner="alice", study=study.to_dict(), state=ExperimentState.SUCCEEDED,
        configurations=tuple(ConfigurationRun(c.index, service=f"services/s{c.index}",
                                              torn_down=True) for c in plan.configurations),
        trials=tuple(trials), create_time=1.0, start_time=2.0, end_time=3.0)


def _summary(values: list[float]) -> dict[str, Any]:
    s = summarize(values)
    return {"n": s.n, "mean": s.mean, "stdev": s.stdev, "ci_low": s.ci_low,
            "ci_high": s.ci_high, "ci_known": s.ci_known}


def _group(doc: dict[str, Any], configuration: int, level: float) -> dict[str, Any]:
    groups: list[dict[str, Any]] = [g for g in doc["groups"] if
                                    g["configuration"] == configuration and g["level"] == level]
    assert len(groups) == 1
    return groups[0]


@pytest.mark.parametrize(("configuration", "wp"), [(0, "1"), (1, "2")])
@pytest.mark.parametrize("level", [100.0, 200.0])
def test_a_groups_mean_and_interval_are_exactly_summarize_of_its_repeats(
        configuration: int, wp: str, level: float) -> None:
    doc = build_document(_record())
    group = _group(doc, configuration, level)
    assert group["succeeded"] == 3
    assert group["figures"]["achieved_rate"] == _summary(RATE[(wp, level)])
    assert group["figures"]["latency_p99_seconds"] == _summary(P99[(wp, level)])
    assert group["slo_met"] is True


def test_the_document_lists_groups_configurations_and_trials() -> None:
    doc = build_document(_record())
    assert [(g["configuration"], g["level"], g["trials"]) for g in doc["groups"]] == [
        (0, 100.0, [0, 2, 4]), (0, 200.0, [1, 3, 5]),
        (1, 100.0, [6, 8, 10]), (1, 200.0, [7, 9, 11])]
    assert [(c["index"], c["key"], c["service"]) for c in doc["configurations"]] == [
        (0, "web worker_processes=1", "services/s0"),
        (1, "web worker_processes=2", "services/s1")]
    assert [t["name"] for t in doc["trials"]] == [f"experiments/e1/trials/{n}"
                                                  for n in range(12)]
    assert doc["figures"] == ["achieved_rate", "latency_p99_seconds"]
    assert doc["experiment"]["study"] == "two-by-two"


def test_the_best_configuration_maximizes_achieved_rate_level_by_level() -> None:
    doc = build_document(_record())
    assert doc["objective"] == {"metric": "achieved_rate", "minimize": False}
    assert [(c["level"], c["metric"], c["best"], c["best_mean"]) for c in doc["comparisons"]] == [
        (100.0, "achieved_rate", 1, pytest.approx(302 / 3)),
        (200.0, "achieved_rate", 1, 199.0)]


def test_the_best_configuration_minimizes_latency_p99_as_its_seconds_figure() -> None:
    doc = build_document(_record(objective="{minimize: latency_p99}"))
    assert doc["objective"] == {"metric": "latency_p99_seconds", "minimize": True}
    assert [(c["level"], c["metric"], c["best"], [o["configuration"] for o in c["others"]])
            for c in doc["comparisons"]] == [
        (100.0, "latency_p99_seconds", 0, [1]), (200.0, "latency_p99_seconds", 1, [0])]
    assert doc["comparisons"][0]["best_mean"] == pytest.approx(0.011)


def test_overlapping_repeats_are_within_the_noise_and_separated_ones_are_not() -> None:
    doc = build_document(_record())
    noisy, separated = doc["comparisons"]
    (other,) = noisy["others"]
    assert other["configuration"] == 0
    assert other["diff"] == pytest.approx(100.0 - 302 / 3)
    assert other["within_noise"] is True
    (other,) = separated["others"]
    assert other["diff"] == pytest.approx(151.0 - 199.0)
    assert other["ratio"] == pytest.approx(151.0 / 199.0)
    assert other["within_noise"] is False


def _spoiled() -> ExperimentRecord:
    failed = Trial(n=2, configuration=0, workload="http", level_kind="rate", level=100.0,
                   repeat=1, state=TrialState.FAILED, state_message="error budget spent\nlog",
                   figures={"achieved_rate": 5.0, "latency_p99_seconds": 9.0}, slo_met=False)
    skipped = Trial(n=9, configuration=1, workload="http", level_kind="rate", level=200.0,
                    repeat=1, state=TrialState.SKIPPED, state_message="budget spent")
    return _record(spoil={2: failed, 9: skipped})


def test_failed_and_skipped_trials_are_left_out_of_the_means() -> None:
    doc = build_document(_spoiled())
    group = _group(doc, 0, 100.0)
    assert group["trials"] == [0, 2, 4]
    assert group["succeeded"] == 2
    assert group["figures"]["achieved_rate"] == _summary([98.0, 102.0])
    assert group["figures"]["latency_p99_seconds"] == _summary([0.010, 0.012])
    assert group["slo_met"] is True
    group = _group(doc, 1, 200.0)
    assert group["succeeded"] == 2
    assert group["figures"]["achieved_rate"] == _summary([198.0, 200.0])


def test_trials_that_did_not_succeed_are_listed_in_their_own_table(tmp_path: Path) -> None:
    text = render_report(_spoiled(), "md", tmp_path).decode()
    table = text.split("## Trials that did not succeed")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| 2 | web worker_processes=1 | http | FAILED | error budget spent |",
                    "| 9 | web worker_processes=2 | http | SKIPPED | budget spent |"]


def test_a_report_where_every_trial_succeeded_has_no_failure_table(tmp_path: Path) -> None:
    text = render_report(_record(), "md", tmp_path).decode()
    assert "did not succeed" not in text
    assert "| web worker_processes=2 | http | 200 req/s | 3 | 199 ± 2.5 | 31 ± 2.5 ms | met |" \
        in text


def test_render_json_writes_report_json_with_the_returned_bytes(tmp_path: Path) -> None:
    record = _record()
    data = render_report(record, "json", tmp_path)
    assert (tmp_path / "report.json").read_bytes() == data
    loaded = json.loads(data)
    doc = build_document(record)
    assert loaded["groups"] == doc["groups"]
    assert loaded["comparisons"] == doc["comparisons"]
    assert loaded["schema_version"] == 1
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o600


def test_render_md_writes_report_md_and_the_plot(tmp_path: Path) -> None:
    data = render_report(_record(), "md", tmp_path)
    assert (tmp_path / "report.md").read_bytes() == data
    assert data.startswith(b"# Experiment two-by-two (experiments/e1): SUCCEEDED\n")
    assert b"![achieved rate against p99](rate-latency.svg)" in data
    assert (tmp_path / "rate-latency.svg").read_text().startswith("<svg ")


def test_render_html_embeds_the_plot_when_rate_and_p99_are_known(tmp_path: Path) -> None:
    data = render_report(_record(), "html", tmp_path)
    assert (tmp_path / "report.html").read_bytes() == data
    text = data.decode()
    assert text.startswith("<!doctype html>")
    assert text.count("<svg ") == 1
    assert "<polyline" in text


def test_render_html_without_p99_has_no_plot(tmp_path: Path) -> None:
    data = render_report(_record(with_p99=False), "html", tmp_path)
    assert b"<svg" not in data
    assert not (tmp_path / "rate-latency.svg").exists()
    assert b"<th>achieved_rate</th>" in data


def test_render_html_escapes_a_configuration_key(tmp_path: Path) -> None:
    record = _record(values=f"['1', '{SCRIPT}']")
    text = render_report(record, "html", tmp_path).decode()
    assert SCRIPT not in text
    assert "<script" not in text
    assert "web worker_processes=&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<svg " in text  # the plot's legend names it too, escaped


def test_render_parquet_has_one_row_per_trial_with_the_figure_columns(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    data = render_report(_spoiled(), "parquet", tmp_path)
    assert (tmp_path / "trials.parquet").read_bytes() == data
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 12
    assert {"experiment", "trial", "configuration_key", "state", "achieved_rate",
            "latency_p99_seconds"} <= set(table.column_names)
    rows = table.to_pylist()
    assert [r["trial"] for r in rows] == list(range(12))
    assert rows[0]["achieved_rate"] == 98.0
    assert rows[0]["configuration_key"] == "web worker_processes=1"
    assert rows[2]["state"] == "FAILED"
    assert rows[9]["achieved_rate"] is None  # SKIPPED: no figures
    assert rows[11]["latency_p99_seconds"] == 0.032


def test_an_unknown_report_format_is_invalid_argument_naming_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        render_report(_record(), "pdf", tmp_path)
    assert err.value.field == "format"
    assert list(tmp_path.iterdir()) == []


def _point(configuration: int, level: float, rate: float, p99: float | None) -> dict[str, Any]:
    figures = {"achieved_rate": {"mean": rate}}
    if p99 is not None:
        figures["latency_p99_seconds"] = {"mean": p99}
    return {"configuration": configuration, "workload": "http", "level": level,
            "figures": figures}


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_rate_and_p99() -> None:
    groups = [_point(0, 1, 100.0, 0.010),   # front: the lowest p99
              _point(1, 1, 90.0, 0.020),    # beaten by 0 on both
              _point(2, 1, 200.0, 0.050),   # front: the highest rate
              _point(3, 1, 150.0, 0.030),   # front: between them
              _point(4, 1, 150.0, 0.040),   # beaten by 3 on p99 at the same rate
              _point(5, 1, 500.0, None)]    # no p99: not a point
    front = pareto_front(groups)
    assert [(p["configuration"], p["rate"], p["p99"]) for p in front] == [
        (0, 100.0, 0.010), (3, 150.0, 0.030), (2, 200.0, 0.050)]


def test_the_pareto_front_keeps_equal_points_and_is_empty_without_points() -> None:
    front = pareto_front([_point(0, 1, 100.0, 0.01), _point(1, 1, 100.0, 0.01)])
    assert [p["configuration"] for p in front] == [0, 1]
    assert pareto_front([_point(0, 1, 100.0, None)]) == []


def test_compare_matches_groups_by_configuration_key_not_by_index() -> None:
    a = build_document(_record())
    b = build_document(_record(values="[2, 1]"))  # the same configurations, other indices
    rows, breaches = compare_documents(a, b, [])
    assert breaches == []
    assert len(rows) == 4 * 2
    for row in rows:
        wp = row["configuration"].removeprefix("web worker_processes=")
        level = float(row["level"].removesuffix(" req/s"))
        values = RATE if row["figure"] == "achieved_rate" else P99
        mean = summarize(values[(wp, level)]).mean
        assert row["a"] == row["b"] == mean
        assert row["ratio"] == 1.0
        assert row["within_noise"] is True


def test_compare_reports_a_clear_shift_beyond_the_noise() -> None:
    a = build_document(_record())
    b = build_document(_record(p99_scale=2.0))
    rows, _ = compare_documents(a, b, [])
    p99 = [r for r in rows if r["figure"] == "latency_p99_seconds"]
    assert [r["ratio"] for r in p99] == pytest.approx([2.0] * 4)
    assert [r["within_noise"] for r in p99] == [False] * 4
    assert all(r["within_noise"] is True for r in rows if r["figure"] == "achieved_rate")


def test_a_p99_threshold_is_breached_by_a_20_percent_rise_only() -> None:
    gate = parse_threshold("p99>+10%")
    a = build_document(_record())
    _, breaches = compare_documents(a, build_document(_record(p99_scale=1.20)), [gate])
    assert len(breaches) == 4
    assert breaches[0] == ("web worker_processes=1 / http / 100 req/s: p99: 0.011 -> 0.0132 "
                           "(+20.0 %), limit p99>+10%: breached")
    assert all("(+20.0 %)" in b and b.endswith("breached") for b in breaches)
    _, breaches = compare_documents(a, build_document(_record(p99_scale=1.05)), [gate])
    assert breaches == []


def test_a_threshold_on_a_missing_figure_cannot_be_judged() -> None:
    a = build_document(_record())
    b = build_document(_record(with_p99=False))
    rows, breaches = compare_documents(a, b, [parse_threshold("p99>+10%")])
    assert {r["figure"] for r in rows} == {"achieved_rate"}
    assert len(breaches) == 4
    assert all(b.endswith("p99>+10% cannot be judged: latency_p99_seconds is missing")
               for b in breaches)


def test_compare_without_common_groups_says_there_is_nothing_to_compare() -> None:
    a = build_document(_record())
    b = build_document(_record())
    for c in b["configurations"]:
        c["resources"]["cpus"] = "2"
    rows, breaches = compare_documents(a, b, [parse_threshold("rate<-5%")])
    assert rows == []
    assert breaches == ["the two experiments have no configuration, workload and level in "
                        "common: nothing to compare"]

"""The BenchmarkService's pure parts: load options into engine plans, SLOs, listing and paging,
the run store's restart rule, telemetry batches, and the report document, plots and compare."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aifb.client.engine.histogram import LatencyHistogram
from aifb.client.engine.progress import Progress
from aifb.client.engine.results import LoadResult, RunState, SecondStats
from aifb.client.engine.samples import DEFAULT_SAMPLE_LIMIT, RequestLog
from aifb.client.engine.schedule import Arrival
from aifb.client.engine.spec import Mode
from aifb.client.engine.workload import Outcome
from aifb.client.report.charts import charts
from aifb.client.report.compare import compare
from aifb.client.report.document import build_document
from aifb.client.report.pages import summary_rows, to_html, to_markdown
from aifb.client.report.parquet import SAMPLE_COLUMNS, samples_parquet
from aifb.client.runs.options import LoadOptions, parse_duration, parse_slo, plan
from aifb.client.runs.record import BenchmarkRecord
from aifb.client.service.listing import page, parse_filter
from aifb.client.service.manager import RESTART_REASON, BenchmarkManager
from aifb.client.service.store import RunStore
from aifb.client.service.telemetry import progress_batch
from aifb.mesh.errors import InvalidArgument
from aifb.v1 import telemetry_pb2

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("options", "field"), [
    (LoadOptions(mode="constant", rate=-5), "load.rate"),
    (LoadOptions(mode="constant", rate=float("nan")), "load.rate"),
    (LoadOptions(mode="constant"), "load.rate"),
    (LoadOptions(), "load.concurrency"),
    (LoadOptions(concurrency=-2), "load.concurrency"),
    (LoadOptions(concurrency=1, duration_s=0), "load.duration_s"),
    (LoadOptions(concurrency=1, warmup_s=5, duration_s=5), "load.warmup"),
    (LoadOptions(concurrency=1, error_budget=1.5), "load.error_budget"),
    (LoadOptions(mode="zigzag"), "load.mode"),
    (LoadOptions(concurrency=1, engine="gpu"), "load.engine"),
    (LoadOptions(rate=5, engine="spark", spark_master="yarn"), "load.spark_master"),
    (LoadOptions(mode="step", rate=10), "load.step_rate"),
    (LoadOptions(mode="ramp", rate=10, start_rate=20), "load.start_rate"),
    (LoadOptions(concurrency=1, slo={"p99": "soon"}), "load.slo.p99"),
    (LoadOptions(concurrency=1, slo={"median": "1s"}), "load.slo.median"),
    (LoadOptions(concurrency=1, slo={"errors": "150%"}), "load.slo.errors"),
    (LoadOptions(concurrency=1, record_samples=True, max_samples=-1), "load.max_samples"),
    (LoadOptions(concurrency=1, record_samples=True, max_samples=10**8), "load.max_samples"),
    (LoadOptions(mode="sweep", engine="spark"), "load.engine"),
])
def test_bad_load_options_name_their_field(options: LoadOptions, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        plan(options)
    assert info.value.field == field, info.value.message


def test_load_options_become_the_engine_plan_they_describe() -> None:
    closed = plan(LoadOptions(concurrency=8, duration_s=30))
    assert closed.load is not None and closed.load.mode is Mode.CLOSED
    assert closed.load.users == 8 and closed.load.budget.max_ratio == 0.05
    open_ = plan(LoadOptions(rate=100, duration_s=5))  # a rate alone means constant open loop
    assert open_.load is not None and open_.load.mode is Mode.OPEN and open_.load.rate == 100
    poisson = plan(LoadOptions(mode="poisson", rate=10, burstiness=2))
    assert poisson.load is not None and poisson.load.arrival is Arrival.POISSON
    steps = plan(LoadOptions(mode="step", rate=30, step_rate=10, step_duration_s=2))
    assert steps.load is not None and steps.load.profile is not None
    assert [st.start for st in steps.load.profile.stages] == [10, 20, 30]
    assert steps.total_s == 6
    ramp = plan(LoadOptions(mode="ramp", start_rate=5, rate=50, duration_s=10))
    assert ramp.load is not None and ramp.load.profile is not None
    assert ramp.load.profile.level_at(5) == pytest.approx(27.5)
    sweep = plan(LoadOptions(mode="sweep", concurrency=16, duration_s=3,
                             slo={"p99": "50ms", "errors": "1%"}))
    assert sweep.sweep is not None and sweep.load is None
    assert sweep.sweep.max_users == 16 and sweep.sweep.slo_latency_us == 50_000
    assert sweep.sweep.slo_error_ratio == pytest.approx(0.01)
    assert LoadOptions.from_dict(json.loads(json.dumps(sweep_opts := LoadOptions(
        mode="sweep", slo={"p99": "1s"}).to_dict()))) == LoadOptions(**sweep_opts)


def test_durations_and_slos_parse_as_documented() -> None:
    assert [parse_duration(t) for t in ("60s", "500ms", "2m", "1h", "1.5")] == [
        60, 0.5, 120, 3600, 1.5]
    slos = {s.key: s for s in parse_slo({"p99.9": "20ms", "ttft_p90": "0.2s", "errors": "0.5%"})}
    assert slos["p99.9"].percentile == 99.9 and slos["p99.9"].limit_s == pytest.approx(0.02)
    assert slos["ttft_p90"].metric == "ttft" and slos["errors"].limit_ratio == 0.005


def _record(i: int, **kw: object) -> BenchmarkRecord:
    return BenchmarkRecord(id=f"r{i}", owner="u", workload="http", url="http://h/",
                           create_time=float(i), **kw)  # type: ignore[arg-type]


def test_filters_and_pages_walk_every_run_once() -> None:
    records = [_record(i, state=RunState.FAILED if i % 2 else RunState.SUCCEEDED,
                       labels={"k": str(i % 3)}) for i in range(7)]
    seen, token = [], ""
    while True:
        items, token = page(records, page_size=3, token=token, filter_text="")
        seen += [r.id for r in items]
        if not token:
            break
    assert seen == [f"r{i}" for i in range(7)]
    failed = [r.id for r in records if parse_filter("state=failed label.k=1")(r)]
    assert failed == ["r1"]  # odd (FAILED) and k == 1
    for bad in ("state=LOST", "colour=red", "state"):
        with pytest.raises(InvalidArgument):
            parse_filter(bad)
    with pytest.raises(InvalidArgument):
        page(records, page_size=3, token="garbage", filter_text="")


def test_a_restarted_service_fails_runs_left_in_flight_and_keeps_finished_ones(
        tmp_path: Path) -> None:
    store = RunStore(tmp_path / "b")
    store.insert(_record(1, state=RunState.RUNNING))
    store.insert(_record(2, state=RunState.SUCCEEDED, request_id="x"))
    assert BenchmarkManager(store, None).recover() == 1
    assert store.get("r1") is not None and store.get("r1").state is RunState.FAILED  # type: ignore[union-attr]
    assert store.get("r1").state_message == RESTART_REASON  # type: ignore[union-attr]
    assert store.by_request_id("u", "x") == store.get("r2")
    assert oct((tmp_path / "b" / "benchmarks.db").stat().st_mode & 0o777) == "0o600"
    store.close()


def test_a_progress_sample_becomes_one_batch_labelled_with_the_run() -> None:
    p = Progress(second=3, elapsed_s=3.0, requests=10, errors=1, achieved_rate=10.0,
                 target_rate=12.0, p50_s=0.001, p99_s=0.004, in_flight=2, lag_p99_s=0.0002,
                 total_requests=30, total_errors=2)
    batch = progress_batch(_record(5, service="services/abc"), p, now_ms=1000)
    by = {(s.name, s.labels.get("quantile", "")): s for s in batch.series}
    assert by[("aifb_bench_requests_total", "")].values == [30]
    assert by[("aifb_bench_requests_total", "")].type == telemetry_pb2.METRIC_TYPE_COUNTER
    assert by[("aifb_bench_latency_seconds", "0.99")].values == [0.004]
    assert all(s.labels["run"] == "r5" and s.labels["service"] == "services/abc"
               and list(s.timestamps_ms) == [1000] for s in batch.series)


def test_an_experiment_trials_series_carry_its_experiment_and_trial_and_no_other_label() -> None:
    p = Progress(second=1, elapsed_s=1.0, requests=5, errors=0, achieved_rate=5.0,
                 target_rate=5.0, p50_s=0.001, p99_s=0.002, in_flight=0, lag_p99_s=0.0,
                 total_requests=5, total_errors=0)
    plain = progress_batch(_record(1, labels={"team": "x"}), p, now_ms=1000)
    trial = progress_batch(_record(1, labels={"team": "x", "experiment": "e1", "trial": "3"}),
                           p, now_ms=1000)
    # A plain run keeps exactly today's labels: its own labels never become metric labels.
    assert {frozenset(s.labels) for s in plain.series} == {
        frozenset({"run", "workload"}), frozenset({"run", "workload", "quantile"})}
    assert len(trial.series) == len(plain.series)
    for bare, labelled in zip(plain.series, trial.series, strict=True):
        assert labelled.name == bare.name
        assert dict(labelled.labels) == {**bare.labels, "experiment": "e1", "trial": "3"}


def _result() -> LoadResult:
    res = LoadResult(state=RunState.SUCCEEDED, mode="open", workload="http", target_rate=100,
                     measured_s=2.0)
    values = [1000 + 10 * i for i in range(200)]  # 1.00 .. 2.99 ms
    for i, v in enumerate(values):
        res.histograms["latency"].record_us(v)
        res.histograms["lag"].record_us(i % 50)
    res.counters.update(sent=200, completed=200, ok=200)
    for sec in (1, 2):
        st = SecondStats(sec, sent=100, completed=100, target_rate=100.0)
        for v in values[(sec - 1) * 100:sec * 100]:
            st.latency.record_us(v)
        res.series.append(st)
    return res


def test_the_report_document_carries_the_histograms_figures_and_renders() -> None:
    res = _result()
    rec = _record(9, state=RunState.SUCCEEDED, load=LoadOptions(rate=100, slo={"p99": "2ms"}))
    stored = {"result": json.loads(res.to_bytes()), "steps": []}
    doc = build_document(rec, stored, {"facts": {"hostname": "h"}, "batch_script": "#!/bin/sh"})
    lat = doc["figures"]["histograms"]["latency"]
    assert lat["count"] == 200
    assert lat["p50"] == res.histograms["latency"].percentile_us(50) / 1e6
    assert LatencyHistogram.decode(lat["hdr"].encode()) == res.histograms["latency"]
    assert doc["figures"]["achieved_rate"] == 100.0
    assert doc["slo"] == [{"slo": "p99", "limit_s": 0.002, "measured_s": lat["p99"],
                           "met": False}]
    assert [r["completed"] for r in doc["series"]] == [100, 100]
    svgs = charts(doc)
    assert set(svgs) == {"latency_cdf.svg", "throughput.svg", "latency_time.svg"}
    for svg in svgs.values():
        ET.fromstring(svg)  # well-formed XML
    html = to_html(doc, svgs)
    assert "BREACHED" in html and html.count("<svg") == 3
    assert "![throughput.svg](throughput.svg)" in to_markdown(doc, list(svgs))

    slower = _result()
    slower.histograms["latency"].record_us(50_000)
    doc_b = build_document(rec, {"result": json.loads(slower.to_bytes())}, {})
    rows = {r.figure: r for r in compare(doc, doc_b)}
    assert rows["latency max"].diff == pytest.approx(
        doc_b["figures"]["histograms"]["latency"]["max"] - lat["max"])
    assert rows["requests"].ratio == 1.0
    assert "ttft p50" not in rows  # neither run has it


def test_llm_runs_summarise_ttft_itl_tpot_token_rate_and_goodput() -> None:
    res = _result()
    res.workload = "openai-chat"
    for i in range(200):
        res.histograms["ttft"].record_us(20_000 + i)
        res.histograms["itl"].record_us(5_000 + i)
        res.histograms["tpot"].record_us(6_000 + i)
    res.values.update(output_tokens=4000.0, input_tokens=1000.0, good_requests=150.0)
    rec = _record(3, state=RunState.SUCCEEDED, load=LoadOptions(rate=100)).evolve(
        workload="openai-chat")
    doc = build_document(rec, {"result": json.loads(res.to_bytes())}, {})
    rows = dict(summary_rows(doc))
    ttft = res.histograms["ttft"]
    assert rows["TTFT p50"] == f"{ttft.percentile_us(50) / 1000:.3f} ms"
    assert {"TTFT p99", "ITL p50", "ITL p99", "TPOT p50", "TPOT p99"} <= set(rows)
    assert rows["output tokens/s"] == "2,000.0"  # 4000 tokens over a 2 s window
    assert rows["goodput"] == "75.00 req/s (75.0% of requests)"
    svgs = charts(doc)
    assert "token_latency_cdf.svg" in svgs
    assert "TTFT p99" in to_markdown(doc, list(svgs)) and "goodput" in to_html(doc, svgs)
    by = {r.figure: r for r in compare(doc, doc)}
    assert by["output tokens/s"].a == 2000.0 and by["tpot p99"].ratio == 1.0
    plain = build_document(_record(4, state=RunState.SUCCEEDED),
                           {"result": json.loads(_result().to_bytes())}, {})
    assert not any(k.startswith(("TTFT", "recall")) for k, _ in summary_rows(plain))


def test_vectordb_runs_summarise_recall_at_k_and_insert_throughput() -> None:
    res = _result()
    res.workload = "vectordb"
    res.values.update(recall_hits=1900.0, recall_checked=2000.0)
    res.extra.update(k=10.0, insert_vectors=5000.0, insert_s=2.5, insert_vectors_per_s=2000.0)
    rec = _record(5, state=RunState.SUCCEEDED).evolve(workload="vectordb")
    doc = build_document(rec, {"result": json.loads(res.to_bytes())}, {})
    rows = dict(summary_rows(doc))
    assert rows["recall@10"] == "0.9500"
    assert rows["insert throughput"] == "2,000.0 vectors/s"
    assert rows["inserted"] == "5,000 vectors in 2.50 s"
    assert "recall@10" in to_markdown(doc, [])
    assert {r.figure: r for r in compare(doc, doc)}["recall@k"].a == 0.95


def test_per_request_samples_are_bounded_and_written_one_row_each() -> None:
    log = RequestLog(3, start_ns=1_000_000_000, window_start_ns=1_100_000_000,
                     window_end_ns=2_000_000_000)
    t = 1_000_000_000
    log.add(t, Outcome(True, "", 200, sent_ns=t + 1000), t + 5_000_000)  # warm-up
    log.add(t + 200_000_000, Outcome(False, "status_503", 503, sent_ns=t + 200_002_000),
            t + 210_000_000)
    log.add(t + 300_000_000, Outcome(True, "", 200, sent_ns=t + 300_000_500,
                                     first_chunk_ns=t + 320_000_000,
                                     chunk_ns=[t + 320_000_000, t + 330_000_000],
                                     values={"output_tokens": 3.0}), t + 340_000_000)
    log.add(t + 400_000_000, Outcome(True, "", 200), t + 410_000_000)  # past the limit
    assert (log.rows, log.seen, log.capped) == (3, 4, True)
    table = pq.read_table(io.BytesIO(samples_parquet("benchmarks/r1", "openai-chat", log)))
    assert table.column_names == [*SAMPLE_COLUMNS, "output_tokens"]
    rows = table.to_pylist()
    assert [r["phase"] for r in rows] == ["warmup", "measure", "measure"]
    assert [r["error"] for r in rows] == ["", "status_503", ""]
    assert [r["ok"] for r in rows] == [True, False, True]
    assert rows[0]["latency_s"] == pytest.approx(0.005) and rows[0]["ttft_s"] is None
    assert rows[1]["service_s"] == pytest.approx(0.009998)
    assert rows[1]["send_delay_s"] == pytest.approx(0.000002)
    assert rows[2]["ttft_s"] == pytest.approx(0.02) and rows[2]["chunks"] == 2
    assert rows[2]["tpot_s"] == pytest.approx(0.01)  # (end - first token) / (3 - 1)
    assert [r["output_tokens"] for r in rows] == [None, None, 3.0]
    assert table.schema.metadata[b"aifb.capped"] == b"true"
    assert math.isnan(log.values["output_tokens"][0])

    rec = _record(6, state=RunState.SUCCEEDED, load=LoadOptions(concurrency=1,
                                                                 record_samples=True))
    assert rec.load.sample_limit == DEFAULT_SAMPLE_LIMIT
    doc = build_document(rec, {"result": json.loads(_result().to_bytes()),
                               "samples": {**log.summary(), "file": "samples.parquet"}}, {})
    assert dict(summary_rows(doc))["samples"] == (
        "3 rows in samples.parquet (capped: the first 3 of 4 requests)")


@pytest.mark.parametrize(("options", "field"), [
    ({"rate": 1e308}, "load.rate"),  # accepted before: 40 s of a core burnt on the server
    ({"rate": 100_001.0}, "load.rate"),
    ({"mode": "ramp", "rate": 10.0, "start_rate": 1e12}, "load.start_rate"),
    ({"mode": "step", "rate": 10.0, "step_rate": 1e9, "step_duration_s": 1.0}, "load.step_rate"),
    ({"rate": 10.0, "warmup_s": 1e12}, "load.warmup_s"),
    ({"rate": 10.0, "cooldown_s": 1e12}, "load.cooldown_s"),
    ({"mode": "step", "rate": 10.0, "step_rate": 1.0, "step_duration_s": 1e12},
     "load.step_duration_s"),
    ({"rate": 10.0, "burstiness": 1e-300}, "load.burstiness"),
    ({"rate": 10.0, "burstiness": 1e6}, "load.burstiness"),
    ({"rate": 10.0, "max_requests": 10**12}, "load.max_requests"),
    ({"concurrency": 10**6}, "load.concurrency"),
    ({"engine": "spark", "rate": 10.0, "partitions": 10**6}, "load.partitions"),
    ({"engine": "spark", "rate": 300_001.0, "partitions": 3}, "load.rate"),
])
def test_load_parameters_beyond_what_an_engine_can_honour_are_refused(
        options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan(LoadOptions(**options))  # type: ignore[arg-type]
    assert err.value.field == field


def test_spark_may_ask_for_the_rate_of_all_its_partitions() -> None:
    assert plan(LoadOptions(engine="spark", rate=300_000.0, partitions=3)).load is not None


def test_a_finished_runs_figures_are_its_window_not_its_last_partial_second() -> None:
    from aifb.client.service.runner import final_progress
    from aifb.client.service.telemetry import progress_batch

    result = LoadResult(state=RunState.SUCCEEDED, target_rate=5.0, measured_s=4.0,
                        workload="http")
    result.counters.update(completed=20, ok=20)
    for us in (1000, 2000, 3000, 40_000):
        result.histograms["latency"].record_us(us)
    # The last second was partial: 4 requests in half a second read as 8.0 req/s.
    last = Progress(second=4, elapsed_s=4.0, requests=4, errors=0, achieved_rate=8.0,
                    target_rate=5.0, p50_s=0.001, p99_s=0.002, in_flight=0, lag_p99_s=0.0,
                    total_requests=20, total_errors=0)
    final = final_progress(result, last)
    assert (final.achieved_rate, final.requests, final.phase) == (5.0, 20, "final")
    assert final.p99_s == pytest.approx(0.04, rel=0.01) and final.total_requests == 20
    gauges = {s.name: s.values[0] for s in progress_batch(
        BenchmarkRecord(id="r1", owner="me", workload="http"), final).series}
    assert gauges["aifb_bench_requests_per_second"] == 5.0


def test_a_seed_reaches_the_engine_and_survives_the_wire_and_none_stays_none() -> None:
    from aifb.client.service.convert import load_from_proto, load_to_proto

    seeded = LoadOptions(mode="poisson", rate=50, seed=7)
    assert plan(seeded).load is not None and plan(seeded).load.seed == 7  # type: ignore[union-attr]
    wire = load_to_proto(seeded)
    assert wire.HasField("seed") and wire.seed == 7
    assert load_from_proto(wire, present=True).seed == 7
    assert not load_to_proto(LoadOptions(rate=50)).HasField("seed")
    assert load_from_proto(load_to_proto(LoadOptions(rate=50)), present=True).seed is None
    zero = load_from_proto(load_to_proto(LoadOptions(rate=50, seed=0)), present=True)
    assert zero.seed == 0  # optional on the wire: 0 is a seed, not "none"

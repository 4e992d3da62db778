"""Markdown and HTML reports: the summary table, SLOs, sweep steps, time slices, configuration,
plots.

The summary (shared with the CLI's text output) adds TTFT, ITL, TPOT, token throughput and
goodput for LLM runs (and sessions, with a per-turn table, for multi-turn ones), recall@k and
insert throughput for vector-database runs, and where the per-request samples are (and whether
they were capped).

Markdown refers to the SVG files written beside it; HTML inlines them so the one file can be
mailed or attached. Every value that came from a user (labels, parameters, the recipe) is
escaped in HTML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from aifb.client.report.turns import TURN_HEAD, session_rows, turn_table
from aifb.client.report.usage import usage_check

__all__ = ["llm_rows", "slice_table", "summary_rows", "to_html", "to_markdown", "usage_rows",
           "vectordb_rows"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.3f} ms"


def _rates(f: dict[str, Any]) -> dict[str, float]:
    if "value_rates" in f:
        return dict(f["value_rates"])
    measured = f.get("measured_s") or 0.0
    return {k: v / measured for k, v in f["values"].items()} if measured > 0 else {}


def _latency_rows(hists: dict[str, Any], name: str, label: str,
                  keys: tuple[str, ...]) -> list[tuple[str, str]]:
    hist = hists.get(name, {})
    return [(f"{label} {key.replace('_', '.')}", _ms(hist[key])) for key in keys if key in hist]


def llm_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """TTFT, ITL, TPOT, token throughput and goodput (openai-* workloads)."""
    f = doc["figures"]
    hists, values, rates = f["histograms"], f["values"], _rates(f)
    rows = _latency_rows(hists, "ttft", "TTFT", ("p50", "p90", "p99"))
    rows += _latency_rows(hists, "itl", "ITL", ("p50", "p99"))
    rows += _latency_rows(hists, "tpot", "TPOT", ("p50", "p99"))
    if "output_tokens" in rates:
        rows.append(("output tokens/s", f"{rates['output_tokens']:,.1f}"))
    if "input_tokens" in rates:
        rows.append(("input tokens/s", f"{rates['input_tokens']:,.1f}"))
    if "output_tokens" in values:
        rows.append(("output tokens", f"{values['output_tokens']:,.0f}"))
    if "good_requests" in values:
        done = f["counters"].get("completed", 0)
        share = f" ({values['good_requests'] / done:.1%} of requests)" if done else ""
        rows.append(("goodput", f"{rates.get('good_requests', 0.0):,.2f} req/s{share}"))
    return rows + usage_rows(values) + server_time_rows(f)


def server_time_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    """The server's own prefill/decode times (when it reports them) beside TTFT and ITL: what
    the client adds on top (mean TTFT - mean server prefill; mean ITL / server decode time per
    token)."""
    values, hists = f["values"], f["histograms"]
    n = values.get("server_timed", 0.0)
    if not n:
        return []
    prefill = values["server_prompt_ms"] / n / 1000
    rows = [("server prefill (mean)", _ms(prefill))]
    if "ttft" in hists:
        rows.append(("TTFT - server prefill (mean)", _ms(hists["ttft"]["mean"] - prefill)))
    runs = values.get("server_decode_runs", 0.0)
    if runs and "itl" in hists:
        per_token = values["server_decode_ms"] / runs / 1000
        rows.append(("server decode per token", _ms(per_token)))
        rows.append(("ITL / server decode per token", f"{hists['itl']['mean'] / per_token:.3f}"))
    return rows


def usage_rows(values: dict[str, float]) -> list[tuple[str, str]]:
    check = usage_check(values)
    if check is None:
        return []
    n, bad = check["requests"], check["output_mismatches"]
    out = (f"agree on all {n:,} replies" if not bad
           else f"DIFFER on {bad:,} of {n:,} replies")
    mean, sd = check["prompt_offset_mean"], check["prompt_offset_sd"]
    prompt = (f"server = client {mean:+g} on every request" if sd < 1e-6
              else f"VARY: server - client = {mean:+.1f} ± {sd:.1f}")
    return [("usage vs client: output tokens", out), ("usage vs client: prompt tokens", prompt)]


def vectordb_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """recall@k over the measured queries and the insert phase's throughput (vectordb)."""
    f = doc["figures"]
    values, extra = f["values"], f["extra"]
    rows = []
    k = f"{extra['k']:g}" if "k" in extra else "k"
    if values.get("recall_checked"):
        rows.append((f"recall@{k}", f"{values['recall_hits'] / values['recall_checked']:.4f}"))
    elif "recall_at_k" in extra:
        rows.append((f"recall@{k}", f"{extra['recall_at_k']:.4f}"))
    if "insert_vectors_per_s" in extra:
        rows.append(("insert throughput", f"{extra['insert_vectors_per_s']:,.1f} vectors/s"))
    if "insert_vectors" in extra:
        rows.append(("inserted", f"{extra['insert_vectors']:,.0f} vectors in "
                                 f"{extra.get('insert_s', 0.0):.2f} s"))
    return rows


def samples_row(doc: dict[str, Any]) -> list[tuple[str, str]]:
    info = doc.get("samples")
    if not info:
        return []
    if not info.get("file"):
        return [("samples", f"not written: {info.get('error', 'unknown error')}")]
    text = f"{info['rows']:,} rows in {info['file']}"
    if info.get("capped"):
        # rows, not the limit: a Spark run's partitions each keep their share of it
        text += (f" (capped: the first {info['rows']:,} of {info['requests']:,} "
                 "requests)")
    return [("samples", text)]


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    f = doc["figures"]
    c = f["counters"]
    lat = f["histograms"].get("latency", {})
    lag = f["histograms"].get("lag", {})
    workload = doc["benchmark"]["workload"]
    rows = [("state", doc["benchmark"]["state"]), ("workload", workload),
            ("target", doc["benchmark"]["resolved_url"]), ("mode", f["mode"]),
            ("measured", f"{f['measured_s']:.2f} s"),
            ("requests", str(c.get("completed", 0))), ("errors", str(c.get("errors", 0))),
            ("dropped", str(c.get("dropped", 0))),
            ("achieved rate", f"{f['achieved_rate']:.2f} req/s")]
    if c.get("cancelled"):
        rows.insert(rows.index(("dropped", str(c.get("dropped", 0)))) + 1,
                    ("cancelled", str(c["cancelled"])))
    if f["target_rate"]:
        rows.append(("target rate", f"{f['target_rate']:.2f} req/s"))
    for key in ("p50", "p90", "p99", "p99_9", "max"):
        if key in lat:
            rows.append((f"latency {key.replace('_', '.')}", _ms(lat[key])))
    if "p99" in lag:
        rows.append(("schedule lag p99", _ms(lag["p99"])))
    if workload.startswith("openai") or "ttft" in f["histograms"]:
        rows += llm_rows(doc)
    rows += session_rows(doc)
    if workload == "vectordb" or "recall_checked" in f["values"]:
        rows += vectordb_rows(doc)
    rows += samples_row(doc)
    if f["reason"]:
        rows.append(("reason", f["reason"]))
    return rows


def slice_table(doc: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The time slices as a table (head, rows), the total last; TTFT/ITL columns when any
    slice has them. No rows when the report has no slices."""
    slices = doc.get("slices")
    if not slices or not slices["rows"]:
        return (), []
    rows_in = [*slices["rows"], {**slices["total"], "slice": None}]
    tokens = [k for k in ("ttft_p50_s", "itl_p50_s") if any(k in r for r in rows_in)]
    head = ("slice", "requests", "errors", "cancelled", "req/s", "p50", "p99",
            *(("TTFT p50",) if "ttft_p50_s" in tokens else ()),
            *(("ITL p50",) if "itl_p50_s" in tokens else ()))
    length = slices["slice_s"]
    out = []
    for r in rows_in:
        name = ("total" if r["slice"] is None else
                f"{r['start_s']}-{r['start_s'] + length} s")
        out.append((name, str(r["requests"]), str(r["errors"]), str(r["cancelled"]),
                     f"{r['rate']:.2f}", _ms(r["latency_p50_s"]), _ms(r["latency_p99_s"]),
                     *(_ms(r.get(k)) for k in tokens)))
    return head, out


def _slo_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for s in doc["slo"]:
        if "limit_s" in s:
            out.append((s["slo"], _ms(s["limit_s"]), _ms(s["measured_s"]),
                        {True: "met", False: "BREACHED", None: "no data"}[s["met"]]))
        else:
            out.append((s["slo"], f"{s['limit']:.2%}", f"{s['measured']:.2%}",
                        "met" if s["met"] else "BREACHED"))
    return out


def to_markdown(doc: dict[str, Any], images: list[str]) -> str:
    b = doc["benchmark"]
    lines = [f"# Benchmark {b['name']}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in summary_rows(doc)]
    if doc["slo"]:
        lines += ["", "## SLOs", "", "| SLO | limit | measured | verdict |", "|---|---|---|---|"]
        lines += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in _slo_rows(doc)]
    if turn_table(doc):
        lines += ["", "## Turns", "", "| " + " | ".join(TURN_HEAD) + " |",
                  "|" + "---|" * len(TURN_HEAD)]
        lines += ["| " + " | ".join(row) + " |" for row in turn_table(doc)]
    if doc.get("sweep"):
        lines += ["", "## Sweep", "", "| step | target req/s | achieved req/s | p50 | p99 |",
                  "|---|---|---|---|---|"]
        for s in doc["sweep"]["steps"]:
            lat = s["latency"]
            lines.append(f"| {s['name']} | {s['target_rate']:.1f} | {s['achieved_rate']:.1f} "
                         f"| {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} |")
        if doc["sweep"]["stop_reason"]:
            lines += ["", f"Stopped: {doc['sweep']['stop_reason']}"]
    head, slices = slice_table(doc)
    if slices:
        lines += ["", f"## Time slices ({doc['slices']['slice_s']} s)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in slices]
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    lines += ["", "## Configuration", "", "```json",
              json.dumps(doc["configuration"], indent=2, sort_keys=True), "```"]
    if doc.get("service"):
        lines += ["", "## Service", "", "```json",
                  json.dumps(doc["service"], indent=2, sort_keys=True), "```"]
    if doc.get("batch_script"):
        lines += ["", "## Batch script (secrets replaced by placeholders)", "", "```bash",
                  doc["batch_script"].rstrip(), "```"]
    lines += ["", "## Node", "", "```json", json.dumps(doc["node"], indent=2, sort_keys=True),
              "```", ""]
    return "\n".join(lines)


def _table(head: tuple[str, ...], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def to_html(doc: dict[str, Any], svgs: dict[str, str]) -> str:
    b = doc["benchmark"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>aifb benchmark {escape(b['name'])}</title>",
             "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}</style></head><body>",
             f"<h1>Benchmark {escape(b['name'])}</h1>",
             _table(("figure", "value"), summary_rows(doc))]
    if doc["slo"]:
        parts += ["<h2>SLOs</h2>", _table(("SLO", "limit", "measured", "verdict"),
                                          _slo_rows(doc))]
    if turn_table(doc):
        parts += ["<h2>Turns</h2>", _table(TURN_HEAD, turn_table(doc))]
    if doc.get("sweep"):
        rows = [(s["name"], f"{s['target_rate']:.1f}", f"{s['achieved_rate']:.1f}",
                 _ms(s["latency"].get("p50")), _ms(s["latency"].get("p99")))
                for s in doc["sweep"]["steps"]]
        parts += ["<h2>Sweep</h2>", _table(("step", "target req/s", "achieved req/s", "p50",
                                            "p99"), rows)]
    head, slices = slice_table(doc)
    if slices:
        parts += [f"<h2>Time slices ({doc['slices']['slice_s']} s)</h2>", _table(head, slices)]
    if svgs:
        parts.append("<h2>Plots</h2>")
        parts += [f"<figure>{svg}</figure>" for svg in svgs.values()]
    parts += ["<h2>Configuration</h2>",
              f"<pre>{escape(json.dumps(doc['configuration'], indent=2, sort_keys=True))}</pre>"]
    if doc.get("service"):
        parts += ["<h2>Service</h2>",
                  f"<pre>{escape(json.dumps(doc['service'], indent=2, sort_keys=True))}</pre>"]
    if doc.get("batch_script"):
        parts += ["<h2>Batch script (secrets replaced by placeholders)</h2>",
                  f"<pre>{escape(doc['batch_script'])}</pre>"]
    parts += ["<h2>Node</h2>",
              f"<pre>{escape(json.dumps(doc['node'], indent=2, sort_keys=True))}</pre>",
              "</body></html>"]
    return "\n".join(parts) + "\n"

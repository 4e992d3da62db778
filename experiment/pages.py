"""The report document as markdown and as one self-contained HTML page (tables, the plot)."""

from __future__ import annotations

from html import escape
from typing import Any

from aifb.experiment.figures import HEADLINE, USAGE

__all__ = ["to_html", "to_markdown"]

_SHOWN = 6  # figures per table


def _cell(figure: str, summary: dict[str, Any]) -> str:
    scale, unit = (1000.0, " ms") if figure.endswith("_seconds") else (1.0, "")
    mean = f"{summary['mean'] * scale:.4g}"
    if summary["n"] < 2 or not summary["ci_known"]:
        return mean + unit
    half = (summary["ci_high"] - summary["ci_low"]) / 2
    return f"{mean} ± {half * scale:.2g}{unit}"


def _level(g: dict[str, Any]) -> str:
    kind = str(g["level_kind"])
    if kind == "rate":
        return f"{g['level']:g} req/s"
    if kind == "concurrency":
        return f"{g['level']:g} users"
    return kind


def _tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by both formats."""
    keys = {c["index"]: c["key"] for c in doc["configurations"]}
    tables = []
    rows = [[str(c["index"]), c["key"], c["service"] or "-",
             ("failed: " + c["failure"].splitlines()[0]) if c["failure"] else "ok"]
            for c in doc["configurations"]]
    tables.append(("Configurations", ["#", "configuration", "service", "deployment"], rows))
    headline = [f for f in doc["figures"] if f in HEADLINE]
    usage = [f for f in doc["figures"] if f in USAGE]
    others = [f for f in doc["figures"] if f not in HEADLINE and f not in USAGE]
    for title, figures in (("Figures", headline or others[:_SHOWN]),
                           ("Resource use (from the collector)", usage),
                           ("Workload figures", others[:_SHOWN] if headline else [])):
        if not doc["groups"] or not figures:
            continue
        header = ["configuration", "workload", "level", "n", *figures]
        rows = []
        for g in doc["groups"]:
            row = [keys.get(g["configuration"], str(g["configuration"])), g["workload"],
                   _level(g), str(g["succeeded"])]
            row += [_cell(f, g["figures"][f]) if f in g["figures"] else "-" for f in figures]
            rows.append(row)
        if title == "Figures":
            header.append("SLO")
            for row, g in zip(rows, doc["groups"], strict=True):
                row.append({True: "met", False: "missed", None: "-"}[g["slo_met"]])
        tables.append((f"{title} (mean ± 95 % confidence half-width over repeats)", header,
                       rows))
    if doc["searches"]:
        rows = []
        for s in doc["searches"]:
            best = s["best_rate"]
            reasons = "; ".join(r["reason"] for r in s["repeats"] if r["reason"])
            finished = all(r["done"] for r in s["repeats"])
            rows.append([keys.get(s["configuration"], str(s["configuration"])), s["workload"],
                         _cell("best_rate", best) if best
                         else ("none met the SLO" if finished else "not finished"),
                         str(len(s["repeats"])), reasons])
        tables.append(("Highest rate meeting the SLO", ["configuration", "workload",
                                                        "best rate (req/s)", "repeats",
                                                        "how it ended"], rows))
    if doc["comparisons"]:
        rows = []
        for c in doc["comparisons"]:
            for o in c["others"]:
                noise = {True: "within the noise", False: "beyond the noise",
                         None: "unknown (one repeat)"}[o["within_noise"]]
                ratio = f"{o['ratio']:.3f}" if o["ratio"] is not None else "-"
                rows.append([c["workload"], _level(c), keys.get(c["best"], str(c["best"])),
                             keys.get(o["configuration"], str(o["configuration"])),
                             ratio, noise])
        tables.append((f"Against the best for the objective ({doc['objective']['metric']}, "
                       f"{'lower' if doc['objective']['minimize'] else 'higher'} is better)",
                       ["workload", "level", "best", "other", "other / best", "difference"],
                       rows))
    failed = [[str(t["n"]), keys.get(t["configuration"], ""), t["workload"], t["state"],
               t["state_message"].splitlines()[0] if t["state_message"] else ""]
              for t in doc["trials"] if t["state"] not in ("SUCCEEDED",)]
    if failed:
        tables.append(("Trials that did not succeed", ["trial", "configuration", "workload",
                                                       "state", "why"], failed))
    return tables


def _title(doc: dict[str, Any]) -> str:
    e = doc["experiment"]
    return f"Experiment {e['study']} ({e['name']}): {e['state']}"


def to_markdown(doc: dict[str, Any], with_chart: bool) -> str:
    e = doc["experiment"]
    lines = [f"# {_title(doc)}", "", e["description"] or "", "", e["state_message"], ""]
    if with_chart:
        lines += ["![achieved rate against p99](rate-latency.svg)", ""]
    for title, header, rows in _tables(doc):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in rows]
        lines.append("")
    return "\n".join(lines)


def to_html(doc: dict[str, Any], chart: str) -> str:
    e = doc["experiment"]
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>{escape(_title(doc))}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
           "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
           "td:first-child,th:first-child{text-align:left}</style></head><body>",
           f"<h1>{escape(_title(doc))}</h1>", f"<p>{escape(e['description'] or '')}</p>",
           f"<p>{escape(e['state_message'])}</p>"]
    if chart:
        out.append(chart)
    for title, header, rows in _tables(doc):
        out.append(f"<h2>{escape(title)}</h2><table><tr>"
                   + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>"
                for row in rows]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"

"""Read Grafana dashboards the way Grafana would: every query, variables substituted, checked.

Grafana itself cannot be installed here, so the dashboards are checked where they can be:
each PromQL expression (panel targets and query variables) is evaluated by the real
Prometheus through `/api/v1/query` after a telemetry run, LogQL is parsed structurally and its
stream selectors are matched against the streams the collector pushed, and each dashboard's
JSON is checked for what Grafana needs to load it. Reusable by any dashboard's test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "BUILTINS",
    "DASHBOARD_DIR",
    "LogqlSelector",
    "Query",
    "dashboard_files",
    "evaluate",
    "extract_queries",
    "grafana_regex_escape",
    "is_gpu_query",
    "load_dashboard",
    "parse_logql",
    "resolve_variables",
    "shape_problems",
    "substitute",
]

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "dashboards"

# Grafana's built-in interval variables, as a test run fixes them (a run lasts under a minute
# and every series gets several points in that time).
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m",
            "__interval_ms": "15000", "__range_s": "300"}

_GPU = re.compile(r"\baifb_gpu_")
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$",
                           re.S)
_REGEX_SPECIAL = re.compile(r"[\\.^$*+?()\[\]{}|]")


@dataclass(frozen=True)
class Query:
    """One query of a dashboard: a panel target or a query variable's definition."""

    dashboard: str  # file name
    where: str  # "panel 'CPU by mode' A" or "variable node"
    datasource: str  # "prometheus" or "loki"
    expr: str  # as written, with $variables
    variable: str = ""  # for a variable query: the label whose values it lists
    legend: str = ""  # a panel target's legendFormat ("{{service}} {{metric}}")

    @property
    def id(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboard_files(exclude: Iterable[str] = ()) -> list[Path]:
    skip = set(exclude)
    return sorted(p for p in DASHBOARD_DIR.glob("*.json") if p.name not in skip)


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _panels(panels: Sequence[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _ds_type(ds: Any, default: str) -> str:
    if isinstance(ds, dict):
        return str(ds.get("type", default))
    return default


def _variable_query(var: dict[str, Any]) -> str:
    query = var.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return str(query or var.get("definition", ""))


def extract_queries(path: Path) -> list[Query]:
    """All PromQL and LogQL queries of one dashboard file, in panel order, variables first."""
    board = load_dashboard(path)
    out: list[Query] = []
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        text = _variable_query(var)
        match = _LABEL_VALUES.match(text)
        if match:  # label_values(expr, label) is Grafana's, not PromQL: evaluate `expr`
            out.append(Query(path.name, f"variable {var['name']}",
                             _ds_type(var.get("datasource"), "prometheus"), match.group(1),
                             variable=match.group(2)))
        else:
            out.append(Query(path.name, f"variable {var['name']}",
                             _ds_type(var.get("datasource"), "prometheus"), text))
    for panel in _panels(board.get("panels", [])):
        panel_ds = _ds_type(panel.get("datasource"), "prometheus")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if expr:
                out.append(Query(path.name, f"panel {panel.get('title', '')!r} "
                                            f"{target.get('refId', '')}",
                                 _ds_type(target.get("datasource"), panel_ds), expr,
                                 legend=target.get("legendFormat", "")))
    return out


def is_gpu_query(expr: str) -> bool:
    """A query over NVML metrics: empty on a node without an NVIDIA GPU."""
    return bool(_GPU.search(expr))


def grafana_regex_escape(value: str) -> str:
    """A value as Grafana puts it in a PromQL/LogQL regex: regex-escaped, and the backslash
    doubled again for the double-quoted string literal."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace $var, ${var}, ${var:fmt} and [[var]] by their values; builtins included.
    An unknown variable is an error: Grafana would send it to the data source verbatim.
    `$1`, `$2`... (label_replace's capture groups) are left as they are, as Grafana does."""
    values = {**BUILTINS, **variables}

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.isdigit():  # label_replace's "$1": no variable is named by a number
            return match.group(0)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(one, expr)


def resolve_variables(board: dict[str, Any], queries: Sequence[Query],
                      values_of: Callable[[str, str], list[str]]) -> dict[str, str]:
    """The dashboard's variables as Grafana would substitute them with every value selected:
    each query variable evaluated in order (later ones see earlier ones), its values joined as
    an escaped regex alternation; no value at all gives the variable's allValue. Textbox and
    constant variables take their default. `values_of(promql, label)` lists label values."""
    by_name = {q.where.removeprefix("variable "): q for q in queries
               if q.where.startswith("variable ")}
    out: dict[str, str] = {}
    for var in board.get("templating", {}).get("list", []):
        name = var["name"]
        if var.get("type") == "query":
            query = by_name[name]
            found = sorted(set(values_of(substitute(query.expr, out), query.variable)))
            if found:
                out[name] = ("(" + "|".join(grafana_regex_escape(v) for v in found) + ")"
                             if len(found) > 1 else grafana_regex_escape(found[0]))
            else:
                out[name] = str(var.get("allValue") or ".*")
        else:
            current = var.get("current", {})
            out[name] = str(current.get("value", var.get("query", "")) or "")
    return out


def evaluate(prometheus_url: str, promql: str, at: float, *,
             client: httpx.Client | None = None) -> tuple[list[dict[str, Any]], str]:
    """Instant query at `at` (unix seconds): (result, "") or ([], Prometheus' error).
    Pass a `client` to reuse its connection over many queries."""
    resp = (client or httpx).get(f"{prometheus_url}/api/v1/query",
                                 params={"query": promql, "time": f"{at:.3f}"}, timeout=10)
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "success":
        return [], f"{body.get('errorType', resp.status_code)}: {body.get('error', resp.text)}"
    result = body["data"]["result"]
    if body["data"].get("resultType") == "scalar":
        return [{"metric": {}, "value": result}], ""
    assert isinstance(result, list)
    return result, ""


# --- Grafana JSON shape -------------------------------------------------------------------

_PANEL_TYPES_WITHOUT_QUERIES = {"row", "text", "news", "dashlist"}


def shape_problems(board: dict[str, Any], datasource_uids: Mapping[str, str]) -> list[str]:
    """What would keep Grafana from loading the dashboard or its panels from querying:
    `datasource_uids` maps each provisioned uid to its type."""
    problems: list[str] = []
    for key, kind in (("uid", str), ("title", str), ("panels", list), ("schemaVersion", int)):
        if not isinstance(board.get(key), kind) or not board.get(key):
            problems.append(f"top-level {key!r} missing or not a {kind.__name__}")
    uid = str(board.get("uid", ""))
    if len(uid) > 40 or not re.fullmatch(r"[a-zA-Z0-9_-]+", uid or "-"):
        problems.append(f"uid {uid!r}: Grafana wants at most 40 of [a-zA-Z0-9_-]")
    ids: set[int] = set()
    for panel in _panels(board.get("panels", [])):
        title = panel.get("title", "")
        where = f"panel {title!r}"
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in ids:
            problems.append(f"{where}: id {pid!r} missing or repeated")
        else:
            ids.add(pid)
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")) or (
                grid.get("x", 0) + grid.get("w", 0) > 24):
            problems.append(f"{where}: gridPos {grid!r} is not h/w/x/y within 24 columns")
        if panel.get("type") in _PANEL_TYPES_WITHOUT_QUERIES:
            continue
        if not title:
            problems.append(f"panel {pid}: no title")
        ds = panel.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") not in datasource_uids:
            problems.append(f"{where}: datasource {ds!r} is not a provisioned uid "
                            f"{sorted(datasource_uids)}")
        elif datasource_uids[ds["uid"]] != ds.get("type"):
            problems.append(f"{where}: datasource type {ds.get('type')!r} but uid "
                            f"{ds['uid']!r} is {datasource_uids[ds['uid']]!r}")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no targets")
            continue
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            problems.append(f"{where}: refIds {refs!r} missing or repeated")
        for t in targets:
            if not str(t.get("expr", "")).strip():
                problems.append(f"{where} {t.get('refId')}: empty expr")
            tds = t.get("datasource", ds)
            if isinstance(tds, dict) and isinstance(ds, dict) and tds.get("uid") != ds.get("uid"):
                problems.append(f"{where} {t.get('refId')}: target data source differs from "
                                "the panel's")
    for var in board.get("templating", {}).get("list", []):
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", str(var.get("name", ""))):
            problems.append(f"variable {var.get('name')!r}: bad name")
        if var.get("type") == "query":
            ds = var.get("datasource")
            if not isinstance(ds, dict) or ds.get("uid") not in datasource_uids:
                problems.append(f"variable {var.get('name')!r}: datasource {ds!r} not provisioned")
    return problems


# --- LogQL, structurally ------------------------------------------------------------------

_LOGQL_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<duration>\[\s*\d+(?:ms|s|m|h|d|w|y)\s*\])
  | (?P<op>\|=|\|~|!=|!~|=~|=|\||\{|\}|\(|\)|,)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_]*)
""", re.X)
_RANGE_FNS = {"rate", "count_over_time", "bytes_over_time", "bytes_rate", "absent_over_time"}
_AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "stddev", "stdvar"}
_PARSERS = {"json", "logfmt", "unpack", "pattern", "regexp", "line_format", "label_format",
            "decolorize", "drop", "keep"}
_GO_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class LogqlSelector:
    """A stream selector's matchers: (label, op, value)."""

    matchers: tuple[tuple[str, str, str], ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        for name, op, value in self.matchers:
            have = labels.get(name, "")
            if op == "=" and have != value:
                return False
            if op == "!=" and have == value:
                return False
            if op == "=~" and not re.fullmatch(value, have):
                return False
            if op == "!~" and re.fullmatch(value, have):
                return False
        return True


class LogqlError(ValueError):
    pass


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]

    def esc(m: re.Match[str]) -> str:
        if m.group(1) not in _GO_ESCAPES:
            raise LogqlError(f"bad escape \\{m.group(1)} in {token}")
        return _GO_ESCAPES[m.group(1)]

    return re.sub(r"\\(.)", esc, token[1:-1])


class _LogqlParser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _LOGQL_TOKEN.match(text, pos)
            if m is None:
                raise LogqlError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
            kind = m.lastgroup or ""
            if kind != "ws":
                self.tokens.append((kind, m.group(0)))
            pos = m.end()
        self.i = 0
        self.selectors: list[LogqlSelector] = []

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        got = self.peek()
        if got[0] != kind or (value is not None and got[1] != value):
            raise LogqlError(f"expected {value or kind}, found {got[1] or 'the end'!r}")
        self.i += 1
        return got[1]

    def expr(self) -> None:
        kind, value = self.peek()
        if kind == "ident" and value in _AGGREGATIONS:
            self.aggregation()
        elif kind == "ident" and value in _RANGE_FNS:
            self.range_fn()
        else:
            self.log_query()

    def grouping(self) -> None:
        if self.peek() in (("ident", "by"), ("ident", "without")):
            self.i += 1
            self.take("op", "(")
            self.take("ident")
            while self.peek() == ("op", ","):
                self.i += 1
                self.take("ident")
            self.take("op", ")")

    def aggregation(self) -> None:
        self.i += 1
        self.grouping()
        self.take("op", "(")
        if self.peek()[0] == "number":  # topk(10, ...)
            self.i += 1
            self.take("op", ",")
        self.expr()
        self.take("op", ")")
        self.grouping()

    def range_fn(self) -> None:
        self.i += 1
        self.take("op", "(")
        self.log_query()
        self.take("duration")
        self.take("op", ")")

    def log_query(self) -> None:
        self.take("op", "{")
        matchers: list[tuple[str, str, str]] = []
        while True:
            name = self.take("ident")
            op = self.take("op")
            if op not in ("=", "!=", "=~", "!~"):
                raise LogqlError(f"bad matcher operator {op!r} after {name!r}")
            value = _unquote(self.take("string"))
            if op in ("=~", "!~"):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise LogqlError(f"bad regex {value!r} for {name}: {exc}") from exc
            matchers.append((name, op, value))
            if self.peek() == ("op", ","):
                self.i += 1
                continue
            self.take("op", "}")
            break
        if not any((op == "=" and v) or (op == "=~" and not re.fullmatch(v, ""))
                   for _, op, v in matchers):
            raise LogqlError("a stream selector needs one matcher that cannot match the empty "
                             "string (Loki refuses the query otherwise)")
        self.selectors.append(LogqlSelector(tuple(matchers)))
        while self.peek()[0] == "op" and self.peek()[1] in ("|=", "!=", "|~", "!~", "|"):
            op = self.take("op")
            if op != "|":
                text = _unquote(self.take("string"))
                if op in ("|~", "!~"):
                    try:
                        re.compile(text)
                    except re.error as exc:
                        raise LogqlError(f"bad line filter regex {text!r}: {exc}") from exc
                continue
            stage = self.take("ident")
            if stage in _PARSERS:
                if self.peek()[0] == "string":
                    self.i += 1
                continue
            op = self.peek()[1]  # a label filter: name op "value"
            if self.peek()[0] != "op" or op not in ("=", "!=", "=~", "!~"):
                raise LogqlError(f"unknown stage {stage!r}: neither a parser nor a label "
                                 f"filter with an operator (found {op or 'the end'!r})")
            self.i += 1
            self.take("string")


def parse_logql(text: str) -> list[LogqlSelector]:
    """Check a LogQL query's structure (log or metric query); its stream selectors.
    Raises LogqlError naming what is wrong."""
    parser = _LogqlParser(text)
    parser.expr()
    if parser.peek()[0] != "end":
        raise LogqlError(f"unexpected {parser.peek()[1]!r} after the query")
    return parser.selectors

"""The value types of a study file: grid axes, resources, durations, ratios, SLOs, text maps.

Each type accepts what a user writes in YAML and keeps one normal form, which is also what
`Study.to_dict()` writes and `Study.from_dict()` reads back unchanged:

- a grid value (a recipe parameter, a resource, a workload parameter, a label) is a string:
  `true`/`false` for booleans, decimal for ints, Python's shortest round-trip `repr` for floats
  (`1.0` stays "1.0", `1` stays "1", `0.1` is "0.1", `1e-05` is "1e-05": the same rule as the
  server's recipe parameters, `aifb.server.recipes.values.canonical_text`); NaN and infinities
  are refused;
- an axis is a list of such strings (a single value is a list of one);
- a resource value is checked as SLURM reads it (`aifb.mesh.units`): nodes, cpus and gpus are
  integers; memory is "512M"/"2G" (a bare number is MiB, written back as "<n>M"); time is
  minutes or "HH:MM:SS" ("D-HH:MM:SS"), at most 365 days;
- a duration is seconds (float): "500ms", "10s", "2m", "1h" or a plain number of seconds;
- a ratio is a float in 0..1: 0.05 or "5%";
- an SLO maps `pNN`, `ttft_pNN`, `itl_pNN`, `tpot_pNN`, `service_pNN` to a duration ("50ms") and
  `errors` to a ratio ("1%"), kept as text, as the BenchmarkService's `load.slo` takes them.

Problems are `aifb.mesh.yamlfile.problem` errors: they say what was expected and where below
the value they check (the index in a list, the key in a mapping).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from aifb.mesh.units import ValueProblem, parse_memory_mib, parse_time_minutes
from aifb.mesh.yamlfile import problem, short_repr

__all__ = [
    "MAX_AXIS_VALUES",
    "MAX_CONCURRENCY",
    "MAX_DURATION_S",
    "MAX_ENTRIES",
    "MAX_LEVELS",
    "MAX_RATE",
    "RESOURCE_NAMES",
    "Axis",
    "ExcludeEntries",
    "Labels",
    "Ratio",
    "ResourceAxes",
    "ResourceAxesMap",
    "Seconds",
    "SloMap",
    "TextMap",
    "ZipGroups",
    "duration_seconds",
    "exclude_entries",
    "resource_text",
    "scalar_text",
    "zip_groups",
]

MAX_AXIS_VALUES = 1024
MAX_LEVELS = 64
MAX_RATE = 1e6
MAX_CONCURRENCY = 100_000
MAX_DURATION_S = 7 * 86400.0
MAX_TEXT = 4096
MAX_TIME_MINUTES = 365 * 24 * 60
MAX_ENTRIES = 64
RESOURCE_NAMES = ("nodes", "cpus", "memory", "gpus", "time", "partition", "account")
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_INT_RESOURCES = {"nodes": (1, 100_000), "cpus": (1, 100_000), "gpus": (0, 1024)}
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,-]{1,64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SLO_KEY = re.compile(r"^(?:(ttft|itl|tpot|service)_)?p(\d{1,2}(?:\.\d{1,3})?)$")
_SCALAR = "a string, number or true/false"

ScalarInput = str | int | float | bool


def _got(value: object) -> str:
    return f"got {short_repr(value)}"


def scalar_text(value: object, *at: str | int) -> str:
    """A scalar as the server takes a parameter (see the module docstring for the rule)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise problem(f"expected a finite number, {_got(value)}", *at)
        return repr(value)
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise problem(f"at most {MAX_TEXT} characters, got {len(value)}", *at)
        return value
    raise problem(f"expected {_SCALAR}, {_got(value)}", *at)


def _items(value: object, to_text: Callable[[object, int], str], *at: str | int) -> list[str]:
    """A scalar or a list of them -> a non-empty list of distinct texts."""
    if isinstance(value, dict):
        raise problem(f"expected a value or a list of values, {_got(value)}", *at)
    raw = value if isinstance(value, list) else [value]
    if not raw:
        raise problem("an empty grid axis has no configurations; give at least one value", *at)
    if len(raw) > MAX_AXIS_VALUES:
        raise problem(f"at most {MAX_AXIS_VALUES} values, got {len(raw)}", *at)
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        here = (*at, i) if isinstance(value, list) else at
        if isinstance(item, list | dict):
            raise problem(f"expected {_SCALAR}, {_got(item)}", *here)
        text = to_text(item, i)
        if text in seen:
            raise problem(f"duplicate value {short_repr(text)} (also at [{seen[text]}])", *here)
        seen[text] = i
    return list(seen)


def resource_text(name: str, value: object, *at: str | int) -> str:
    """One resource value, checked and in its normal form (see the module docstring)."""
    if name in _INT_RESOURCES:
        lo, hi = _INT_RESOURCES[name]
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", value):
            number = int(value)
        if number is None or not lo <= number <= hi:
            raise problem(f"expected an integer {lo}..{hi}, {_got(value)}", *at)
        return str(number)
    if name in ("memory", "time"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise problem(f"expected {_EXPECTED_TEXT[name]}, {_got(value)}", *at)
        try:
            minutes = parse_time_minutes(value) if name == "time" else None
            if name == "memory":
                parse_memory_mib(value)
        except ValueProblem as exc:
            raise problem(f"expected {exc.expected}, {exc.message}", *at) from None
        except (ValueError, OverflowError):  # past Python's int or float limits
            minutes = MAX_TIME_MINUTES + 1
        if name == "time" and (minutes is None or minutes > MAX_TIME_MINUTES):
            # None is UNLIMITED, which a resource override cannot ask for (0 is the default).
            raise problem(f"expected a time limit up to 365 days, {_got(value)}", *at)
        if isinstance(value, int):
            return f"{value}M" if name == "memory" else str(value)
        return value.strip()
    if not isinstance(value, str) or not _SLURM_NAME.match(value):
        raise problem(f"expected a SLURM {name} name (1-64 of A-Z a-z 0-9 _ . , -), "
                      f"{_got(value)}", *at)
    return value


_EXPECTED_TEXT = {"memory": "a size such as 512M or 4G",
                  "time": 'minutes or a SLURM time such as "01:00:00"'}


def _axis(value: object) -> list[str]:
    return _items(value, _indexed_scalar(isinstance(value, list)))


def _resources(value: object) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise problem(f"expected a mapping of resource names to values, {_got(value)}")
    out: dict[str, list[str]] = {}
    for key, raw in value.items():
        if key not in RESOURCE_NAMES:
            raise problem(f"unknown resource {short_repr(key)}; expected one of: "
                          + ", ".join(RESOURCE_NAMES), key)
        out[key] = _resource_axis(key, raw, key)
    return out


def _resource_axis(name: str, raw: object, *at: str | int) -> list[str]:
    listed = isinstance(raw, list)
    return _items(raw, lambda item, i: resource_text(name, item, *at, *((i,) if listed else ())),
                  *at)


def zip_groups(value: object) -> list[dict[str, list[str]]]:
    """`zip:` -> groups of axes; a key that names a resource is a resource (checked as one),
    any other key a recipe parameter."""
    if not isinstance(value, list):
        raise problem(f"expected a list of groups such as {{threads: [1, 2], cpus: [1, 2]}}, "
                      f"{_got(value)}")
    out: list[dict[str, list[str]]] = []
    for g, group in enumerate(value):
        if not isinstance(group, dict) or not group:
            raise problem("expected a mapping of axes that move together, such as "
                          f"{{threads: [1, 2], cpus: [1, 2]}}, {_got(group)}", g)
        if len(group) > MAX_ENTRIES:
            raise problem(f"at most {MAX_ENTRIES} axes, got {len(group)}", g)
        axes: dict[str, list[str]] = {}
        for key, raw in group.items():
            if not isinstance(key, str) or not PARAM_NAME.match(key):
                raise problem(f"expected a parameter or resource name matching "
                              f"{PARAM_NAME.pattern}, {_got(key)}", g, str(key))
            axes[key] = (_resource_axis(key, raw, g, key) if key in RESOURCE_NAMES
                         else _items(raw, _indexed_scalar(isinstance(raw, list), g, key), g,
                                     key))
        out.append(axes)
    return out


def _indexed_scalar(listed: bool, *at: str | int) -> Callable[[object, int], str]:
    return lambda item, i: scalar_text(item, *at, *((i,) if listed else ()))


def exclude_entries(value: object) -> list[dict[str, str]]:
    """`exclude:` -> points, each a mapping of axis names to one value (normal form)."""
    if not isinstance(value, list):
        raise problem(f"expected a list of points such as {{threads: 2, cpus: 1}}, "
                      f"{_got(value)}")
    out: list[dict[str, str]] = []
    for e, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry:
            raise problem(f"expected a mapping of axis names to values, {_got(entry)}", e)
        if len(entry) > MAX_ENTRIES:
            raise problem(f"at most {MAX_ENTRIES} axes, got {len(entry)}", e)
        point: dict[str, str] = {}
        for key, raw in entry.items():
            if not isinstance(key, str):
                raise problem(f"expected an axis name, {_got(key)}", e)
            if isinstance(raw, list | dict):
                raise problem(f"expected one value ({_SCALAR}), {_got(raw)}", e, key)
            point[key] = (resource_text(key, raw, e, key) if key in RESOURCE_NAMES
                          else scalar_text(raw, e, key))
        out.append(point)
    return out


def duration_seconds(value: object) -> float:
    """"500ms", "10s", "2m", "1h" or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if isinstance(value, float) or abs(value) < 2**63 else math.inf
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise problem("expected a duration such as 500ms, 10s, 2m, 1h or a number of "
                      f"seconds, {_got(value)}")
    if not math.isfinite(seconds):
        raise problem(f"expected a finite duration, {_got(value)}")
    return seconds


def _ratio(value: object) -> float:
    ratio: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        ratio = float(value) if isinstance(value, float) or abs(value) < 2**63 else None
    elif isinstance(value, str):
        text = value.strip()
        try:
            ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            ratio = None
    if ratio is None or not math.isfinite(ratio) or not 0 <= ratio <= 1:
        raise problem(f"expected a ratio within 0..1 or a percentage such as 5%, {_got(value)}")
    return ratio


def _slo(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise problem(f"expected a mapping such as {{p99: 50ms, errors: 1%}}, {_got(value)}")
    if len(value) > MAX_ENTRIES:
        raise problem(f"at most {MAX_ENTRIES} objectives, got {len(value)}")
    out: dict[str, str] = {}
    for key, raw in value.items():
        if key in ("errors", "error_ratio"):
            text = scalar_text(raw, key)
            try:
                _ratio(raw)
            except PydanticCustomError:
                raise problem(f"expected an error ratio such as 1% or 0.01, {_got(raw)}",
                              key) from None
        else:
            m = _SLO_KEY.match(key) if isinstance(key, str) else None
            if m is None or not 0 < float(m.group(2)) < 100:
                raise problem(f"unknown objective {short_repr(key)}; expected pNN, ttft_pNN, "
                              "itl_pNN, tpot_pNN, service_pNN (0 < NN < 100) or errors",
                              str(key))
            text = scalar_text(raw, key)
            try:
                seconds = duration_seconds(raw)
            except PydanticCustomError:
                seconds = -1.0
            if not seconds > 0:
                raise problem(f"expected a latency limit > 0 such as 50ms, {_got(raw)}", key)
        out[key] = text.strip()
    return out


def _text_map(what: str, key_pattern: re.Pattern[str], limit: int,
              printable: bool) -> Callable[[object], dict[str, str]]:
    def check(value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            raise problem(f"expected a mapping of {what}, {_got(value)}")
        if len(value) > MAX_ENTRIES:
            raise problem(f"at most {MAX_ENTRIES} {what}, got {len(value)}")
        out: dict[str, str] = {}
        for key, raw in value.items():
            if not isinstance(key, str) or not key_pattern.match(key):
                raise problem(f"expected a key matching {key_pattern.pattern}, {_got(key)}",
                              str(key))
            text = scalar_text(raw, key)
            if len(text) > limit:
                raise problem(f"at most {limit} characters, got {len(text)}", key)
            if printable and any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise problem("expected printable text without control characters", key)
            out[key] = text
        return out
    return check


class ResourceAxes(BaseModel):
    """The input form of `resources:` (for the JSON Schema only): each a value or a list."""

    model_config = ConfigDict(extra="forbid")

    nodes: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] | None = None
    cpus: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] | None = None
    memory: int | str | list[int | str] | None = None
    gpus: Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] | None = None
    time: int | str | list[int | str] | None = None
    partition: str | list[str] | None = None
    account: str | list[str] | None = None


_AxisInput = ScalarInput | list[ScalarInput]
_DurationInput = Annotated[float, Field(ge=0)] | Annotated[str, Field(pattern=_DURATION.pattern)]

Axis = Annotated[list[str], BeforeValidator(_axis, json_schema_input_type=_AxisInput)]
ResourceAxesMap = Annotated[dict[str, list[str]],
                            BeforeValidator(_resources, json_schema_input_type=ResourceAxes)]
ZipGroups = Annotated[list[dict[str, list[str]]],
                      BeforeValidator(zip_groups,
                                      json_schema_input_type=list[dict[str, _AxisInput]])]
ExcludeEntries = Annotated[list[dict[str, str]],
                           BeforeValidator(exclude_entries,
                                           json_schema_input_type=list[dict[str, ScalarInput]])]
Seconds = Annotated[float, BeforeValidator(duration_seconds,
                                           json_schema_input_type=_DurationInput)]
Ratio = Annotated[float, BeforeValidator(_ratio, json_schema_input_type=float | str)]
SloMap = Annotated[dict[str, str], BeforeValidator(
    _slo, json_schema_input_type=dict[str, float | str])]
TextMap = Annotated[dict[str, str], BeforeValidator(
    _text_map("workload parameters", re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"), MAX_TEXT,
              False), json_schema_input_type=dict[str, ScalarInput])]
Labels = Annotated[dict[str, str], BeforeValidator(
    _text_map("labels", re.compile(r"^[a-z][a-z0-9_-]{0,62}$"), 256, True),
    json_schema_input_type=dict[str, ScalarInput])]

"""A strict YAML loader for the files users write, and errors that point at `file:line:column`.

    doc = load_yaml(text, file="study.yaml")      # InvalidArgument on bad YAML, naming the spot
    study = doc.validate(Study)                    # a pydantic error becomes the same kind
    doc.where(("services", 0, "parameters"))      # (line, column) of that key, 1-based

Why not `yaml.safe_load`: it keeps the last of two equal keys silently, forgets where each value
came from, turns `1:30` into 90 and `2024-01-01` into a date, and expands aliases without limit.
Here the document is composed into nodes, then built by hand:

- a mapping key given twice is an error at the second one;
- only plain data comes out (mappings, lists, strings, ints, floats, bools, null): an explicit tag
  (`!!binary`, `!!set`, `!custom`) and merge keys (`<<`) are errors; YAML 1.1 sexagesimal numbers
  (`1:30`) and timestamps stay strings, as YAML 1.2 reads them (`time: 1:00:00` is text);
- aliases are allowed, but the expanded document holds at most `MAX_NODES` values and nests at
  most `MAX_DEPTH` levels (an alias bomb or a recursive alias is an error, not a hang);
- the text is at most `MAX_YAML_BYTES` (1 MiB) of UTF-8.

Every error is `InvalidArgument` with the message `"<file>:<line>:<col>: <path>: <problem>"` and
`field` the dotted path (`workloads[0].rates[1]`); YAML syntax errors read
`"<file>:<line>:<col>: invalid YAML: <problem>"`. A missing key is reported at its parent, the
deepest node of its path that exists. `problem(message, *at)` is how a model's validator reports
a problem below the value it checks (pydantic keeps it as is and `validate` appends `at` to its
location). Models should avoid unions whose member tags would show up in error locations:
normalise the input with before-validators instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from aifb.mesh.errors import InvalidArgument

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_YAML_BYTES",
    "PROBLEM",
    "Loc",
    "YamlDoc",
    "describe",
    "load_yaml",
    "load_yaml_file",
    "path_loc",
    "path_text",
    "problem",
    "short_repr",
]

MAX_YAML_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 64
PROBLEM = "aifb_problem"  # the pydantic error type of `problem()`

Loc = Sequence[str | int]
M = TypeVar("M", bound=BaseModel)

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null"))
_AS_TEXT_TAGS = frozenset({_TAG + "timestamp", _TAG + "value"})  # YAML 1.2 reads these as text


def short_repr(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so a huge value never ends up in an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text)} chars>"


def path_text(loc: Loc) -> str:
    """("workloads", 0, "rates", 1) -> "workloads[0].rates[1]" (the `field` of an error)."""
    out = ""
    for elem in loc:
        out += f"[{elem}]" if isinstance(elem, int) else f".{elem}"
    return out.lstrip(".")


def path_loc(text: str) -> tuple[str | int, ...]:
    """The inverse of `path_text`: "workloads[0].rates[1]" -> ("workloads", 0, "rates", 1)."""
    loc: list[str | int] = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        if name:
            loc.append(name)
        for index in rest.rstrip("]").split("][") if rest else ():
            loc.append(int(index) if index.isdigit() else index)
    return tuple(loc)


def problem(message: str, *at: str | int) -> PydanticCustomError:
    """A validator's error with its own message, located `at` below the value being checked."""
    return PydanticCustomError(PROBLEM, "{message}", {"message": message, "at": tuple(at)})


class _Refused(Exception):
    """A document that composes but is not plain data: `node` is where, `loc` its path."""

    def __init__(self, node: yaml.Node, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.loc = loc
        self.message = message


@dataclass
class YamlDoc:
    """A loaded document: `data` as plain Python values, and where each of its nodes is."""

    file: str
    data: Any
    root: yaml.Node | None = None
    # id(mapping node) -> {key: (key node, value node)}, for `where`.
    _entries: dict[int, dict[Any, tuple[yaml.Node, yaml.Node]]] = field(
        default_factory=dict, repr=False)

    def where(self, loc: Loc) -> tuple[int, int] | None:
        """The 1-based (line, column) of the deepest node on `loc` that exists: a mapping
        entry is where its key is written, a list item where the item starts. None for an
        empty document."""
        if self.root is None:
            return None
        node = self.root
        mark = node.start_mark
        for elem in loc:
            if isinstance(node, yaml.MappingNode):
                entry = self._entries.get(id(node), {}).get(elem)
                if entry is None:
                    break
                mark, node = entry[0].start_mark, entry[1]
            elif (isinstance(node, yaml.SequenceNode) and isinstance(elem, int)
                  and not isinstance(elem, bool) and 0 <= elem < len(node.value)):
                node = node.value[elem]
                mark = node.start_mark
            else:
                break
        return mark.line + 1, mark.column + 1

    def error(self, loc: Loc, message: str) -> InvalidArgument:
        """`"<file>:<line>:<col>: <path>: <message>"`, field = the dotted path."""
        line, col = self.where(loc) or (1, 1)
        path = path_text(loc)
        text = f"{self.file}:{line}:{col}: " + (f"{path}: {message}" if path else message)
        return InvalidArgument(text, field=path, file=self.file, line=line, column=col)

    def validate(self, model: type[M]) -> M:
        """`model.model_validate(data)`; its first error becomes `error(...)`."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise self.error(*describe(exc)) from None


def describe(exc: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """The location and a message users can act on for pydantic's first error."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == PROBLEM:
        return loc + tuple(ctx.get("at", ())), str(ctx["message"])
    key = bool(loc) and loc[-1] == "[key]"
    if key:
        loc = loc[:-1]
    message = _message(err)
    return loc, f"key {message}" if key else message


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "list_type": "a list",
}
_SIGNS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
          "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _number(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _message(err: ErrorDetails) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    got = f", got {short_repr(err['input'])}"
    if kind == "missing":
        return "missing (a required key)"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}{got}"
    if kind in _SIGNS:
        sign, name = _SIGNS[kind]
        return f"must be {sign} {_number(ctx.get(name))}{got}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}{got}"
    if kind in ("string_too_short", "string_too_long"):
        bound = "at least" if kind == "string_too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        return f"must have {bound} {limit} characters, got {len(str(err['input']))}"
    if kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        items = "item" if limit == 1 else "items"
        return f"must have {bound} {limit} {items}, got {ctx.get('actual_length')}"
    return f"{err['msg']}{got}"


class _Builder:
    """Turns composed nodes into plain data, indexing mapping entries for `YamlDoc.where`."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.count = 0
        self.entries: dict[int, dict[Any, tuple[yaml.Node, yaml.Node]]] = {}
        self.open: set[int] = set()  # nodes being built: seeing one again is a recursive alias

    def build(self, node: yaml.Node, loc: tuple[str | int, ...] = ()) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Refused(node, loc, f"more than {MAX_NODES} values (once aliases are "
                                      "expanded)")
        if len(loc) > MAX_DEPTH:
            raise _Refused(node, loc, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.open:
            raise _Refused(node, loc, "a recursive alias (an anchor used inside itself)")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    raise _Refused(node, loc,
                                   f"unsupported tag {_short(node.tag)} (plain lists only)")
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            raise _Refused(node, loc, f"unsupported node {type(node).__name__}")
        finally:
            self.open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        if node.tag in _AS_TEXT_TAGS or (node.tag in (_TAG + "int", _TAG + "float")
                                         and ":" in node.value):
            return node.value
        if node.tag == _TAG + "merge":
            raise _Refused(node, loc, "merge keys (<<) are not supported: write the keys out")
        if node.tag not in _SCALAR_TAGS:
            raise _Refused(node, loc, f"unsupported tag {_short(node.tag)} (plain values only)")
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError:  # an int of more than 4300 digits (Python's conversion limit)
            raise _Refused(node, loc, f"a number of {len(node.value)} characters is too "
                                      "large") from None

    def _mapping(self, node: yaml.MappingNode, loc: tuple[str | int, ...]) -> dict[Any, Any]:
        if node.tag != _TAG + "map":
            raise _Refused(node, loc, f"unsupported tag {_short(node.tag)} (plain mappings only)")
        out: dict[Any, Any] = {}
        index: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        self.entries[id(node)] = index
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(key_node, loc, "a mapping key must be a plain value, not a "
                                              "list or a mapping")
            key = self._scalar(key_node, loc)
            if key in index:
                first = index[key][0].start_mark.line + 1
                raise _Refused(key_node, (*loc, key), f"duplicate key {short_repr(key)} "
                                                      f"(first at line {first})")
            index[key] = (key_node, value_node)
            out[key] = self.build(value_node, (*loc, key))
        return out


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _syntax(file: str, line: int, col: int, message: str, fld: str = "") -> InvalidArgument:
    return InvalidArgument(f"{file}:{line}:{col}: invalid YAML: {message}", field=fld,
                           file=file, line=line, column=col)


def load_yaml(text: str, *, file: str) -> YamlDoc:
    """Parse one YAML document strictly (see the module docstring); `file` names it in errors."""
    size = len(text) if len(text) > MAX_YAML_BYTES else len(text.encode("utf-8", "replace"))
    if size > MAX_YAML_BYTES:
        raise InvalidArgument(f"{file}: {size} bytes; a YAML file holds at most "
                              f"{MAX_YAML_BYTES} bytes (1 MiB)", field="", file=file)
    try:
        loader = yaml.SafeLoader(text)  # checks every character first
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        raise _syntax(file, line, col, f"character {chr(exc.character)!r} is not allowed in "
                                       "YAML text") from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            message = str(exc.problem or exc.context)
            if exc.problem and exc.context and exc.context.startswith("expected"):
                message = f"{exc.context}, {exc.problem}"  # "expected a single document..."
            raise _syntax(file, line, col, message) from None
        except yaml.reader.ReaderError as exc:
            line, col = _position(text, exc.position)
            raise _syntax(file, line, col, f"character {chr(exc.character)!r} is not "
                                           "allowed in YAML text") from None
        except RecursionError:
            raise _syntax(file, 1, 1, "nested too deeply") from None
        if root is None:
            return YamlDoc(file, None)
        builder = _Builder(loader)
        try:
            data = builder.build(root)
        except _Refused as exc:
            mark = exc.node.start_mark
            raise _syntax(file, mark.line + 1, mark.column + 1, exc.message,
                          path_text(exc.loc)) from None
        return YamlDoc(file, data, root, builder.entries)
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> YamlDoc:
    """Read and parse `path` (at most MAX_YAML_BYTES of UTF-8); errors name the path."""
    label = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"{label}: cannot read: {exc.strerror}", field="",
                              file=label) from None
    if len(raw) > MAX_YAML_BYTES:
        raise InvalidArgument(f"{label}: more than {MAX_YAML_BYTES} bytes; a YAML file holds "
                              "at most 1 MiB", field="", file=label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = raw[:exc.start].decode("utf-8", "replace")
        line, col = _position(prefix, len(prefix))
        raise _syntax(label, line, col, f"not UTF-8 at byte {exc.start}") from None
    return load_yaml(text, file=label)

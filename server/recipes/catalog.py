"""The recipe catalog: the packaged recipes plus extra directories, loaded with exact errors.

`load_recipe(path)` reads one YAML file; every failure is a `RecipeError` naming the file, the
key (dotted, `command[2]`, `parameters.port.default`) and what was expected; YAML syntax errors
name the line and column, duplicate keys are errors. `RecipeCatalog(dirs)` holds the recipes
shipped in the `aifb.recipes` package, then each directory of `dirs` in order: a later recipe
with the same name replaces an earlier one. Files are re-read when they change on disk.
"""

from __future__ import annotations

import builtins
import logging
import shutil
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from aifb.mesh.errors import NotFound, RecipeError
from aifb.server.recipes.schema import ApptainerRuntime, Recipe, SchemaProblem
from aifb.server.recipes.values import short_repr

__all__ = ["MAX_RECIPE_BYTES", "RecipeCatalog", "load_recipe", "load_recipe_text",
           "runnable_here"]

log = logging.getLogger(__name__)

MAX_RECIPE_BYTES = 1 << 20

_EXPECTED = {
    "missing": "this key to be present",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "list_type": "a list",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)


def _expected(err: Any) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error":
        return str(ctx.get("expected", "")).replace("False", "false").replace("True", "true")
    if "expected" in ctx:
        return str(ctx["expected"])
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        return f"text matching {ctx.get('pattern')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
                "less_than": "<"}[kind]
        return f"a value {sign} {next(iter(ctx.values()))}"
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return str(err["msg"]).replace("Value should have", "").replace("String should have",
                                                                        "").strip()
    if kind == "union_tag_invalid":
        return f"kind: one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "a 'kind' key (native or apptainer)"
    return _EXPECTED.get(kind, str(err["msg"]))


def _key(data: Any, loc: Sequence[Any], kind: str) -> str:
    """The dotted key of an error, following the input so union-member tags are left out."""
    parts: list[str] = []
    node = data
    for i, elem in enumerate(loc):
        if isinstance(node, dict) and elem in node:
            parts.append(f".{elem}")
            node = node[elem]
        elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node):
            parts.append(f"[{elem}]")
            node = node[elem]
        elif isinstance(node, dict) and (node.get("kind") == elem
                                         or (isinstance(elem, str) and i + 1 < len(loc))):
            continue  # a union member's tag: runtime's discriminator, metrics' model
        else:
            if kind == "missing" and i == len(loc) - 1:
                parts.append(f".{elem}")
            break
    return "".join(parts).lstrip(".")


def _from_validation(exc: ValidationError, data: Any, file: str) -> RecipeError:
    errors = exc.errors()
    first = errors[0]
    key = _key(data, first["loc"], first["type"])
    expected: list[str] = []
    for err in errors if first["type"] != "unknown_key" else [first]:
        if _key(data, err["loc"], err["type"]) == key and _expected(err) not in expected:
            expected.append(_expected(err))
    ctx = first.get("ctx") or {}
    if first["type"] == "unknown_key":
        key = f"{key}.{ctx['first']}".lstrip(".")
        message = f"unknown key {short_repr(ctx['first'])}"
    elif first["type"] == "missing":
        message = "missing"
    elif first["type"] == "recipe":
        message = str(ctx["message"])
    else:
        message = f"got {short_repr(first.get('input'))}"
    return RecipeError(message, file=file, key=key, expected=" or ".join(expected))


def load_recipe_text(text: str, *, file: str, path: Path | None = None) -> Recipe:
    """Parse and validate one recipe from YAML text; `file` is how errors name it."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(f"{where}invalid YAML: {exc.problem or exc.context}", file=file,
                          expected="valid YAML") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}", file=file, expected="valid YAML") from None
    if not isinstance(data, dict):
        raise RecipeError(f"got {type(data).__name__}", file=file,
                          expected="a mapping with name, command, readiness, ...")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, data, file) from None
    except SchemaProblem as exc:
        raise RecipeError(exc.message, file=file, key=exc.key, expected=exc.expected) from None
    return recipe.with_source(text, path)


def load_recipe(path: Path) -> Recipe:
    """Load one recipe file; errors are RecipeError naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", file=str(path)) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{len(raw)} bytes", file=str(path),
                          expected=f"at most {MAX_RECIPE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"not UTF-8 at byte {exc.start}", file=str(path),
                          expected="UTF-8 text") from None
    return load_recipe_text(text, file=str(path), path=path)


def runnable_here(recipe: Recipe,
                  which: Callable[[str], str | None] = shutil.which) -> tuple[bool, str]:
    """Whether this machine has the programs the recipe needs, and why not if it has not:
    `requires` when declared, else the native program (command[0]); plus `apptainer`."""
    needed = list(recipe.requires)
    if not needed and not isinstance(recipe.runtime, ApptainerRuntime):
        needed.append(recipe.command[0])
    if isinstance(recipe.runtime, ApptainerRuntime) and "apptainer" not in needed:
        needed.insert(0, "apptainer")
    missing = [prog for prog in needed if which(prog) is None]
    if missing:
        return False, f"not found on PATH: {', '.join(missing)}"
    return True, ""


class RecipeCatalog:
    """Packaged recipes plus `dirs` (later ones override by name)."""

    def __init__(self, dirs: Sequence[Path] | None = None, *, packaged: bool = True) -> None:
        self.dirs = [Path(d) for d in dirs or ()]
        self.packaged = packaged
        self._cache: dict[str, tuple[tuple[int, int], Recipe]] = {}
        self.errors: dict[str, RecipeError] = {}

    def _sources(self) -> list[tuple[str, Callable[[], Recipe], tuple[int, int]]]:
        out: list[tuple[str, Callable[[], Recipe], tuple[int, int]]] = []
        if self.packaged:
            root = resources.files("aifb.recipes")
            for item in sorted(root.iterdir(), key=lambda t: t.name):
                if item.name.endswith(".yaml") and item.is_file():
                    label = f"aifb.recipes/{item.name}"
                    if isinstance(item, Path):
                        out.append(self._file_source(item))
                    else:
                        out.append((label, _text_loader(item.read_text("utf-8"), label),
                                    (0, 0)))
        for d in self.dirs:
            if not d.is_dir():
                log.warning("recipe directory %s does not exist", d)
                continue
            out.extend(self._file_source(p) for p in sorted(d.glob("*.yaml")) if p.is_file())
        return out

    @staticmethod
    def _file_source(path: Path) -> tuple[str, Callable[[], Recipe], tuple[int, int]]:
        st = path.stat()
        return str(path), lambda: load_recipe(path), (st.st_mtime_ns, st.st_size)

    def _load_all(self) -> dict[str, Recipe]:
        found: dict[str, Recipe] = {}
        self.errors = {}
        for label, load, stamp in self._sources():
            cached = self._cache.get(label)
            try:
                fresh = cached is not None and stamp != (0, 0) and cached[0] == stamp
                recipe = cached[1] if cached is not None and fresh else load()
            except RecipeError as exc:
                log.warning("skipping recipe %s", exc)
                self.errors[Path(label).stem] = exc
                continue
            self._cache[label] = (stamp, recipe)
            found[recipe.name] = recipe
        return found

    def list(self) -> list[Recipe]:
        """Every loadable recipe, sorted by name (broken files are logged and skipped)."""
        return sorted(self._load_all().values(), key=lambda r: r.name)

    def names(self) -> builtins.list[str]:
        return [r.name for r in self.list()]

    def get(self, name: str) -> Recipe:
        """The recipe called `name`; NotFound lists the known names, or the file's error."""
        found = self._load_all()
        if name in found:
            return found[name]
        if name in self.errors:
            raise self.errors[name]
        known = ", ".join(sorted(found)) or "(none)"
        raise NotFound(f"no recipe named {short_repr(name)}; known recipes: {known}",
                       resource=f"recipes/{name[:64]}")

    @staticmethod
    def load_recipe(path: Path) -> Recipe:
        return load_recipe(path)


def _text_loader(text: str, label: str) -> Callable[[], Recipe]:
    return lambda: load_recipe_text(text, file=label)

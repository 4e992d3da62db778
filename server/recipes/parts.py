"""The building blocks of a recipe's schema: the strict base model, parameters, resources.

`_Strict` forbids unknown keys and names the valid ones; `SchemaProblem` is the cross-field error
pydantic lets through untouched (see `aifb.server.recipes.schema`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aifb.server.jobs import ResourceSpec
from aifb.server.recipes.values import (
    ParamType,
    Value,
    ValueProblem,
    canonical_text,
    parse_memory_mib,
    parse_time_minutes,
    parse_value,
)

__all__ = ["Parameter", "ResourceCaps", "Resources", "SchemaProblem", "Strict", "Text",
           "problem"]

Text = Annotated[str, Field(max_length=4096)]
Scalar = StrictBool | StrictInt | StrictFloat | str
MemoryText = StrictInt | Annotated[str, Field(max_length=32)]
TimeText = StrictInt | Annotated[str, Field(max_length=32)]
Slurmish = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,-]{0,64}$")]


class SchemaProblem(Exception):
    """A cross-field problem in a recipe; deliberately not a ValueError, so pydantic re-raises
    it as is and the key stays exact."""

    def __init__(self, key: str, message: str, expected: str = "") -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.expected = expected


def problem(message: str, expected: str) -> PydanticCustomError:
    return PydanticCustomError("recipe", "{message}", {"message": message, "expected": expected})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise PydanticCustomError(
                    "unknown_key", "unknown key {unknown}",
                    {"unknown": ", ".join(repr(k) for k in unknown), "first": unknown[0],
                     "expected": "one of: " + ", ".join(cls.model_fields)})
        return data


class Parameter(Strict):
    """One typed parameter. Declaration order matters: later validators see earlier fields."""

    type: ParamType
    description: Text = ""
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    pattern: Annotated[str, Field(max_length=1024)] | None = None
    max_length: Annotated[int, Field(ge=1, le=4096)] = 4096
    multiline: bool = False
    choices: Annotated[list[Scalar], Field(min_length=1, max_length=256)] | None = None
    default: Scalar | None = None

    @field_validator("minimum", "maximum", "pattern")
    @classmethod
    def _fits_type(cls, v: object, info: ValidationInfo) -> object:
        kind = info.data.get("type")
        if v is None or kind is None:
            return v
        if info.field_name == "pattern":
            if kind != "string":
                raise problem("pattern only applies to string parameters", "type: string")
            try:
                re.compile(str(v))
            except re.error as exc:
                raise problem(f"not a valid regular expression ({exc})",
                               "a Python regular expression") from None
        elif kind in ("string", "bool"):
            raise problem(f"{info.field_name} only applies to numbers",
                           "type: int, float or port")
        return v

    def parse(self, text: str) -> Value:
        """Parse and check one value given as text; raises ValueProblem."""
        return parse_value(self.type, text, minimum=self.minimum, maximum=self.maximum,
                           pattern=self.pattern, choices=self.choices_values(),
                           max_length=self.max_length, multiline=self.multiline)

    def choices_values(self) -> list[Value] | None:
        return _typed_choices(self.type, self.choices)

    def default_value(self) -> Value | None:
        """The typed default, or None for a required parameter."""
        if self.required:
            return None
        if self.default is None:
            return ""  # only strings may omit their default (checked below)
        return self.parse(canonical_text(self.default))

    def default_text(self) -> str:
        value = self.default_value()
        return "" if value is None else canonical_text(value)

    @field_validator("choices")
    @classmethod
    def _choices_fit(cls, v: list[Scalar] | None, info: ValidationInfo) -> list[Scalar] | None:
        kind = info.data.get("type")
        if v is not None and kind is not None:
            for item in v:
                try:
                    parse_value(kind, canonical_text(item), pattern=info.data.get("pattern"),
                                minimum=info.data.get("minimum"),
                                maximum=info.data.get("maximum"))
                except ValueProblem as exc:
                    raise problem(f"choice {exc.message}", exc.expected) from None
        return v

    @field_validator("default")
    @classmethod
    def _default_fits(cls, v: Scalar | None, info: ValidationInfo) -> Scalar | None:
        kind = info.data.get("type")
        if v is None or kind is None:
            return v
        if info.data.get("required"):
            raise problem("a required parameter has no default", "no default with required: true")
        try:
            parse_value(kind, canonical_text(v), minimum=info.data.get("minimum"),
                        maximum=info.data.get("maximum"), pattern=info.data.get("pattern"),
                        choices=_typed_choices(kind, info.data.get("choices")),
                        max_length=info.data.get("max_length", 4096),
                        multiline=info.data.get("multiline", False))
        except ValueProblem as exc:
            raise problem(exc.message, exc.expected) from None
        return v

    @model_validator(mode="after")
    def _needs_default(self) -> Parameter:
        if not self.required and self.default is None and self.type != "string":
            raise problem("missing default", "a default value, or required: true")
        if (self.minimum is not None and self.maximum is not None
                and self.minimum > self.maximum):
            raise problem("minimum is above maximum", "minimum <= maximum")
        return self


def _typed_choices(kind: ParamType, choices: list[Scalar] | None) -> list[Value] | None:
    if choices is None:
        return None
    return [parse_value(kind, canonical_text(c)) for c in choices]


class ResourceCaps(Strict):
    """The most a user may ask for; an absent key means no per-recipe cap."""

    nodes: Annotated[StrictInt, Field(ge=1, le=100000)] | None = None
    cpus: Annotated[StrictInt, Field(ge=1, le=100000)] | None = None
    memory: MemoryText | None = None
    gpus: Annotated[StrictInt, Field(ge=0, le=1024)] | None = None
    time: TimeText | None = None

    def limits(self) -> dict[str, int | None]:
        """Caps by ResourceSpec field name; None = no cap."""
        return {"nodes": self.nodes, "cpus": self.cpus,
                "memory_mib": None if self.memory is None else parse_memory_mib(self.memory),
                "gpus": self.gpus, "time_limit_minutes": parse_time_minutes(self.time)}

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            _checked(parse_memory_mib, v)
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: int | str | None) -> int | str | None:
        _checked(parse_time_minutes, v)
        return v


class Resources(Strict):
    """Default resources of the job, and the caps (`max`)."""

    nodes: Annotated[StrictInt, Field(ge=1, le=100000)] = 1
    cpus: Annotated[StrictInt, Field(ge=1, le=100000)] = 1
    memory: MemoryText = "512M"
    gpus: Annotated[StrictInt, Field(ge=0, le=1024)] = 0
    time: TimeText | None = None
    partition: Slurmish = ""
    account: Slurmish = ""
    max: ResourceCaps = Field(default_factory=ResourceCaps)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str) -> int | str:
        _checked(parse_memory_mib, v)
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: int | str | None) -> int | str | None:
        _checked(parse_time_minutes, v)
        return v

    def defaults(self) -> ResourceSpec:
        return ResourceSpec(nodes=self.nodes, cpus=self.cpus,
                            memory_mib=parse_memory_mib(self.memory), gpus=self.gpus,
                            time_limit_minutes=parse_time_minutes(self.time),
                            partition=self.partition, account=self.account)

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> Resources:
        spec = self.defaults()
        for name, cap in self.max.limits().items():
            value = getattr(spec, name)
            if cap is not None and (value is None or value > cap):
                raise problem(f"default {name} {value} is above max {cap}",
                               "defaults within the caps in resources.max")
        return self


def _checked(fn: Any, v: Any) -> None:
    try:
        fn(v)
    except ValueProblem as exc:
        raise problem(exc.message, exc.expected) from None

"""The CLI's KEY=VALUE and resource flags: parsed as recipes parse them, bad ones named."""

from __future__ import annotations

import pytest
import typer

from aifb.cli.params import parse_params, resources_from_options

pytestmark = pytest.mark.unit


def test_resource_flags_use_the_recipe_size_and_time_syntax() -> None:
    r = resources_from_options(2, "4G", 0, "01:30:00", "debug", "")
    assert (r.cpus, r.memory_mib, r.time_limit_minutes, r.partition) == (2, 4096, 90, "debug")
    empty = resources_from_options(0, "", 0, "", "", "")
    assert (empty.memory_mib, empty.time_limit_minutes) == (0, 0)


@pytest.mark.parametrize(("memory", "time_limit", "hint"), [
    ("lots", "", "--memory"), ("", "soon", "--time"),
])
def test_bad_resource_flags_name_the_flag(memory: str, time_limit: str, hint: str) -> None:
    with pytest.raises(typer.BadParameter) as info:
        resources_from_options(0, memory, 0, time_limit, "", "")
    assert info.value.param_hint == hint


def test_params_reject_missing_equals_and_repeats() -> None:
    assert parse_params(["port=0", "x=a=b"], "--param") == {"port": "0", "x": "a=b"}
    for bad in (["port"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(typer.BadParameter):
            parse_params(bad, "--param")

"""Parsing of repeated KEY=VALUE options and resource flags into request fields."""

from __future__ import annotations

import re

import typer

from aifb.v1 import common_pb2

__all__ = ["parse_memory_mib", "parse_params", "parse_time_minutes", "resources_from_options"]


def parse_params(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        if key in out:
            raise typer.BadParameter(f"{key!r} given twice", param_hint=option)
        out[key] = value
    return out


def parse_memory_mib(text: str) -> int:
    if not text:
        return 0
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise typer.BadParameter(f"expected e.g. 512M or 4G, got {text!r}", param_hint="--memory")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    return max(1, int(int(m.group(1)) * scale))


def parse_time_minutes(text: str) -> int:
    if not text:
        return 0
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise typer.BadParameter(f"expected minutes, HH:MM:SS or D-HH:MM:SS, got {text!r}",
                                 param_hint="--time")
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(3) is None:  # plain minutes (or D-HH)
        return days * 1440 + (a * 60 if m.group(1) else a)
    if m.group(4) is None:  # MM:SS
        return days * 1440 + a + (1 if b else 0)
    return days * 1440 + a * 60 + b + (1 if c else 0)


def resources_from_options(cpus: int, memory: str, gpus: int, time_limit: str, partition: str,
                           account: str) -> common_pb2.Resources:
    if cpus < 0 or gpus < 0:
        raise typer.BadParameter("must not be negative", param_hint="--cpus/--gpus")
    return common_pb2.Resources(cpus=cpus, memory_mib=parse_memory_mib(memory), gpus=gpus,
                                time_limit_minutes=parse_time_minutes(time_limit),
                                partition=partition, account=account)

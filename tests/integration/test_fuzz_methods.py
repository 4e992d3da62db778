"""Fuzz every method of a real `aifb up` (issue 11): each method is found through reflection
(so a new one is fuzzed at once), then sent random bytes and well-formed messages full of absurd
values (huge and negative numbers, NaN, 100 kB strings, NUL bytes, shell and path tricks, unknown
enum numbers, extreme timestamps). Every call must end with a proper status code, the log must
hold no traceback, and the server must answer health checks and real calls afterwards.

Bounded: a fixed number of calls per method, short deadlines for streams. The seed is fixed so
that CI is repeatable; AIFB_FUZZ_SEED=<n> explores others (the failure message names the seed).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from aifb.mesh.channel import auth_metadata, open_sync_channel
from tests.integration.rpc_probe import PUBLIC_SERVICES, call_raw
from tests.integration.test_cli_telemetry import Up, cli_env, start_up

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("AIFB_FUZZ_SEED", "20261207"))
CALLS_UNARY = 24  # per method: 2/3 absurd messages, 1/3 random bytes
CALLS_STREAMING = 6
# Codes a well-behaved method may end with on hostile input. Server streams that accept the
# request stay open until their (short) deadline.
PROPER = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
          grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
          grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.DEADLINE_EXCEEDED}

INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 10**12, 7]
UINTS = [0, 1, 2**32 - 1, 2**64 - 1, 10**12, 7]
FLOATS = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e-300]
STRINGS = ["", "x" * 100_000, "a\x00b", "../../etc/passwd", "$(touch /tmp/aifb-fuzz-pwn)",
           "`id`;rm -rf /", "é" * 1000, "\u202e\ufeff\U0001f600", "services/" + "a" * 5000,
           "services/../../x", "' OR 1=1 --", "%s%n%x", "\n\r\t", "0", "-1", "NaN",
           "state=READY label.k=" + "v" * 3000, "http://[::1]:0/", "local[99999999]"]


def _value(rng: random.Random, field: FieldDescriptor, depth: int) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return _message(rng, field.message_type, depth + 1)
    if t == FieldDescriptor.TYPE_ENUM:
        return rng.choice([0, 1, 2, 99, -5, 2**31 - 1])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 4096]))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = rng.choice(FLOATS)
        return value if t == FieldDescriptor.TYPE_DOUBLE or not math.isfinite(value) \
            or abs(value) < 3e38 else 3e38
    bits32 = t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
                   FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_UINT32,
                   FieldDescriptor.TYPE_FIXED32)
    unsigned = t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                     FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64)
    value = rng.choice(UINTS if unsigned else INTS)
    if bits32:
        value = max(min(value, 2**32 - 1 if unsigned else 2**31 - 1), 0 if unsigned else -(2**31))
    return value


def _message(rng: random.Random, descriptor: Descriptor, depth: int = 0) -> Any:
    msg = message_factory.GetMessageClass(descriptor)()
    if depth > 3:
        return msg
    if descriptor.full_name == "google.protobuf.Timestamp":
        msg.seconds = rng.choice([0, -62135596800, 253402300799, 2**62, -(2**62), 1_700_000_000])
        msg.nanos = rng.choice([0, 999_999_999, -1, 2**31 - 1])
        return msg
    if descriptor.full_name == "google.protobuf.Duration":
        msg.seconds = rng.choice([0, -1, 315_576_000_000, 2**62, 1])
        msg.nanos = rng.choice([0, 999_999_999, -1])
        return msg
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = field.message_type.fields_by_name["key"], \
                field.message_type.fields_by_name["value"]
            target = getattr(msg, field.name)
            for _ in range(rng.choice([1, 2, 70])):
                key = _value(rng, key_f, depth)
                if value_f.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(_value(rng, value_f, depth))
                else:
                    target[key] = _value(rng, value_f, depth)
        elif field.is_repeated:
            items = [_value(rng, field, depth) for _ in range(rng.choice([0, 1, 3]))]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, field.name).extend(items)
            else:
                getattr(msg, field.name).extend(items)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(_value(rng, field, depth))
        else:
            setattr(msg, field.name, _value(rng, field, depth))
    return msg


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    started = start_up(tmp, None, "--scheduler", "local")
    from pathlib import Path

    token = (Path(cli_env(tmp)["HOME"]) / ".aifb" / "token").read_text().strip()
    try:
        yield started, token
    finally:
        for svc in started.json("services", "list"):  # nothing should have been created
            started.cli("services", "delete", svc["name"].removeprefix("services/"))
        started.daemon.stop()


def test_every_method_answers_absurd_input_with_a_proper_code_and_survives(
        up: tuple[Up, str]) -> None:
    daemon_up, token = up
    rng = random.Random(SEED)
    auth = auth_metadata(token)
    wrong: dict[str, list[str]] = {}
    calls = 0
    with open_sync_channel(daemon_up.address, token="") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(db)
        methods = [(f"/{name}/{m.name}", m.client_streaming, m.server_streaming, m.input_type)
                   for name in db.get_services() if name not in PUBLIC_SERVICES
                   for m in pool.FindServiceByName(name).methods]
        assert len(methods) >= 28, [m[0] for m in methods]
        for path, client_streaming, server_streaming, input_type in methods:
            streaming = client_streaming or server_streaming
            for i in range(CALLS_STREAMING if streaming else CALLS_UNARY):
                if i % 3 == 2:
                    body = rng.randbytes(rng.choice([1, 7, 100, 3000]))
                    what = f"random bytes {body[:16].hex()}..."
                else:
                    msg = _message(rng, input_type)
                    body = msg.SerializeToString()
                    what = f"message {str(msg)[:200]!r}"
                code = call_raw(channel, (path, client_streaming, server_streaming), body,
                                auth, timeout=0.5 if server_streaming else 15)
                calls += 1
                if code not in PROPER:
                    wrong.setdefault(path, []).append(f"{code.name} for {what}")
        assert not wrong, f"seed {SEED}: {wrong}"
        # Still alive and well: health answers at once and a real call works.
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    listed = daemon_up.cli("services", "list")
    assert listed.returncode == 0, listed.stderr
    log = daemon_up.daemon.log(100_000)
    assert "Traceback" not in log, f"seed {SEED}, after {calls} calls:\n{log[-6000:]}"
    assert not os.path.exists("/tmp/aifb-fuzz-pwn")

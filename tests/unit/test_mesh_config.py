"""Config layering, the loopback rule, token files and the error tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest

from aifb.mesh.auth import Authenticator, TokenStore, read_token_file
from aifb.mesh.config import is_loopback, load_config
from aifb.mesh.errors import (
    InvalidArgument,
    RecipeError,
    SchedulerRejected,
    SchedulerUnavailable,
    error_for_reason,
)

pytestmark = pytest.mark.unit


def test_defaults_come_from_the_packaged_yaml(tmp_path: Path) -> None:
    cfg = load_config(environ={"AIFB_CONFIG": str(tmp_path / "absent.yaml")})
    assert cfg.mesh.listen == "127.0.0.1:50051"
    assert cfg.mesh.auth is True
    assert cfg.server.scheduler == "auto"


def test_file_then_env_then_flags_override_in_that_order(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("mesh:\n  listen: 127.0.0.1:6000\n  home: /x\nserver:\n  scheduler: local\n")
    env = {"AIFB_CONFIG": str(f), "AIFB_MESH__LISTEN": "127.0.0.1:7000",
           "AIFB_SERVER__POLL_INTERVAL_SECONDS": "0.25"}
    cfg = load_config(environ=env, overrides={"mesh": {"home": "/y", "listen": None}})
    assert cfg.mesh.listen == "127.0.0.1:7000"  # env beats file; a None flag changes nothing
    assert cfg.mesh.home == "/y"  # flag beats file
    assert cfg.server.scheduler == "local"
    assert cfg.server.poll_interval_seconds == 0.25


def test_unknown_config_key_is_an_error_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("mesh:\n  lisen: 1\n")
    with pytest.raises(InvalidArgument, match=r"mesh\.lisen"):
        load_config(environ={"AIFB_CONFIG": str(f)})


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1:1", True), ("127.3.4.5:1", True), ("[::1]:5", True), ("localhost:9", True),
    ("0.0.0.0:1", False), ("10.0.0.1:1", False), ("[::]:1", False), ("node1:1", False),
])
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_owner_token_is_generated_once_with_mode_0600(aifb_home: Path) -> None:
    store = TokenStore(aifb_home)
    path = store.ensure_owner_token()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((aifb_home / "tokens.json").stat().st_mode) == 0o600
    token = read_token_file(path)
    assert TokenStore(aifb_home).ensure_owner_token() == path
    assert read_token_file(path) == token  # not regenerated
    assert "aifb_" in token and token not in (aifb_home / "tokens.json").read_text()


def test_a_token_file_readable_by_others_is_refused(aifb_home: Path) -> None:
    path = TokenStore(aifb_home).ensure_owner_token()
    os.chmod(path, 0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        read_token_file(path)


def test_authenticator_maps_tokens_to_users(aifb_home: Path) -> None:
    store = TokenStore(aifb_home)
    alice, bob = store.issue("alice"), store.issue("bob")
    auth = Authenticator(store)
    assert auth.authenticate(alice).user == "alice"  # type: ignore[union-attr]
    assert auth.authenticate(bob).user == "bob"  # type: ignore[union-attr]
    assert auth.authenticate("aifb_nope") is None
    assert auth.authenticate(None) is None


def test_recipe_error_names_file_key_and_expectation() -> None:
    err = RecipeError("got 'abc'", file="redis.yaml", key="parameters.port",
                      expected="an integer 1024..65535")
    assert str(err) == "redis.yaml: parameters.port: got 'abc' (expected an integer 1024..65535)"
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field == "parameters.port"


def test_error_classes_round_trip_by_reason() -> None:
    assert error_for_reason("SCHEDULER_REJECTED", grpc.StatusCode.FAILED_PRECONDITION) is (
        SchedulerRejected)
    assert error_for_reason("SCHEDULER_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE) is (
        SchedulerUnavailable)
    assert error_for_reason("", grpc.StatusCode.INVALID_ARGUMENT) is InvalidArgument

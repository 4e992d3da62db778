"""What every CLI command shares: the connection, output format, and error reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape

from aifb.mesh.channel import load_token, open_sync_channel, raise_for_rpc_error
from aifb.mesh.config import Config, load_config
from aifb.mesh.errors import AifbError, InvalidArgument
from aifb.v1 import server_pb2_grpc

__all__ = ["CliState", "Output", "fail", "handle_errors", "state_of"]

T = TypeVar("T")


class Output(StrEnum):
    text = "text"
    json = "json"


@dataclass
class CliState:
    server: str | None = None
    home: str | None = None
    config_file: str | None = None
    output: Output = Output.text
    timeout: float = 30.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    _config: Config | None = None
    _channel: grpc.Channel | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            overrides = {"mesh": {"home": self.home}}
            self._config = load_config(file=self.config_file, overrides=overrides)
        return self._config

    @property
    def address(self) -> str:
        return self.server or self.config.mesh.listen

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            mesh = self.config.mesh
            token = load_token(mesh.home_path)
            # TLS when a CA is given (or, on the server's own machine, its client CA).
            ca_file = self.ca_file or (mesh.tls_client_ca if mesh.tls else "")
            if (self.cert_file or self.key_file) and not ca_file:
                raise InvalidArgument("--cert/--key need --ca-file (the CA that signed the "
                                      "server's certificate)", field="ca_file")
            for flag, path in (("--ca-file", ca_file), ("--cert", self.cert_file),
                               ("--key", self.key_file)):
                if path and not Path(path).expanduser().is_file():
                    raise InvalidArgument(f"{flag} {path}: no such file", field=flag)
            self._channel = open_sync_channel(self.address, token=token, ca_file=ca_file,
                                              cert_file=self.cert_file, key_file=self.key_file)
        return self._channel

    def server_stub(self) -> server_pb2_grpc.ServerServiceStub:
        return server_pb2_grpc.ServerServiceStub(self.channel())

    def call(self, fn: Callable[..., T], request: Message, **kwargs: Any) -> T:
        """A unary call with the CLI's deadline; RPC errors become AifbError."""
        try:
            return fn(request, timeout=self.timeout, **kwargs)
        except grpc.RpcError as exc:
            raise_for_rpc_error(exc)

    def fail(self, name: str, state: str, message: str) -> NoReturn:
        """A resource that did not end well: one red line on stderr, exit status 1."""
        self.err.print(f"[bold red]{name} {state}[/]: {escape(message)}", soft_wrap=True)
        raise typer.Exit(1)

    def all_pages(self, fn: Callable[..., Any], request: Any, field: str) -> list[Any]:
        """Every item of a paged List call: `request` is sent again with each next page's
        token until the last page; `field` names the response's repeated items."""
        items: list[Any] = []
        while True:
            resp = self.call(fn, request)
            items.extend(getattr(resp, field))
            if not resp.next_page_token:
                return items
            request.page_token = resp.next_page_token

    def emit(self, message: Message | list[Message] | dict[str, Any],
             text: Callable[[], None]) -> None:
        """Print JSON (for scripts) or the human form."""
        if self.output is Output.json:
            if isinstance(message, Message):
                data: Any = to_dict(message)
            elif isinstance(message, list):
                data = [to_dict(m) for m in message]
            else:
                data = message
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        else:
            text()


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def state_of(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    assert isinstance(state, CliState)
    return state


def fail(state: CliState, message: str, code: int = 1) -> NoReturn:
    # The message carries user input (URLs, recipe text, `[...]` in Spark masters): never markup.
    state.err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors(state: CliState) -> Iterator[None]:
    """Domain errors become one line on stderr and a non-zero exit (no traceback)."""
    try:
        yield
    except AifbError as exc:
        hint = ""
        # A service that could not reach another names it (metadata "server") itself.
        if exc.code == grpc.StatusCode.UNAVAILABLE and "server" not in exc.metadata:
            hint = f" (is `aifb up` running at {state.address}?)"
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            hint = f" (token file: {Path(state.config.mesh.home_path) / 'token'})"
        fail(state, f"{exc.message}{hint}", code=1)

"""How a process calls its own gRPC port: the address to dial and the credentials to send."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from aifb.mesh.auth import read_token_file
from aifb.mesh.config import MeshConfig
from aifb.mesh.tls import ClientTls, mesh_client_tls

__all__ = ["Loopback", "loopback"]


@dataclass(frozen=True)
class Loopback:
    address: str  # host:port to dial
    token: str | None  # the operator's token (None when auth is off)
    tls: ClientTls = field(default_factory=ClientTls)


def loopback(mesh: MeshConfig, port: int, token_path: Path) -> Loopback:
    """The bound `port` of a server listening on `mesh.listen`: 127.0.0.1 when it listens on
    every address, else the host it names (its certificate names that host)."""
    host = mesh.listen.rsplit(":", 1)[0].strip("[]")
    if host in ("0.0.0.0", "::", "") or host == socket.getfqdn():
        host = "127.0.0.1"
    token = read_token_file(token_path) if mesh.auth else None
    return Loopback(f"{host}:{port}", token, mesh_client_tls(mesh))

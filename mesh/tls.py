"""TLS across the whole mesh: the server's flags checked for consistency before anything
listens, and the client identity the mesh's own clients (jobs, their sidecars, the embedded
agents and the BenchmarkService's metrics stream) use to reach it, handed to jobs as
AIFB_CA_FILE / AIFB_CLIENT_CERT / AIFB_CLIENT_KEY."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aifb.mesh.errors import InvalidArgument

if TYPE_CHECKING:  # jobs import ClientTls: keep pydantic (the config models) out of them
    from aifb.mesh.config import MeshConfig

__all__ = ["ClientTls", "check_tls", "mesh_client_tls"]

_FLAGS = {"tls_cert": "--tls-cert", "tls_key": "--tls-key", "tls_client_ca": "--tls-client-ca",
          "tls_ca": "--tls-ca", "tls_mesh_cert": "--tls-mesh-cert",
          "tls_mesh_key": "--tls-mesh-key"}


@dataclass(frozen=True)
class ClientTls:
    """How a client of this mesh speaks TLS: the CA that verifies the server and, under mTLS,
    the certificate and key it presents. All empty: plaintext."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    def environment(self) -> dict[str, str]:
        """What a job's environment carries (nothing for plaintext)."""
        env = {"AIFB_CA_FILE": self.ca_file, "AIFB_CLIENT_CERT": self.cert_file,
               "AIFB_CLIENT_KEY": self.key_file}
        return {k: v for k, v in env.items() if v}

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> ClientTls:
        return cls(env.get("AIFB_CA_FILE", ""), env.get("AIFB_CLIENT_CERT", ""),
                   env.get("AIFB_CLIENT_KEY", ""))


def _path(value: str) -> str:
    return str(Path(value).expanduser().resolve()) if value else ""


def mesh_client_tls(mesh: MeshConfig) -> ClientTls:
    """The identity the mesh's own clients use: trust tls_ca (default: the server certificate
    itself, right for a self-signed one) and, under mTLS, present tls_mesh_cert/key."""
    if not mesh.tls:
        return ClientTls()
    return ClientTls(_path(mesh.tls_ca or mesh.tls_cert), _path(mesh.tls_mesh_cert),
                     _path(mesh.tls_mesh_key))


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, field=f"mesh.{field}")


def check_tls(mesh: MeshConfig, *, hosts_jobs: bool = False) -> None:
    """Refuse TLS settings that would not do what they say: half a key pair, options that need
    TLS without it (`--tls-client-ca` alone used to serve plaintext), files that cannot be read,
    and, for a server whose jobs must report back (`hosts_jobs`), mTLS without a certificate
    for them."""
    given = {f: getattr(mesh, f) for f in _FLAGS if getattr(mesh, f)}
    for a, b in (("tls_cert", "tls_key"), ("tls_mesh_cert", "tls_mesh_key")):
        if (a in given) != (b in given):
            missing = b if a in given else a
            raise _bad(missing, f"{_FLAGS[a]} and {_FLAGS[b]} go together: {_FLAGS[missing]} "
                                "is missing")
    if not mesh.tls:
        for field in ("tls_client_ca", "tls_ca", "tls_mesh_cert"):
            if field in given:
                raise _bad(field, f"{_FLAGS[field]} needs --tls-cert and --tls-key: without "
                                  "them the server would listen in plaintext")
        return
    for field, value in given.items():
        path = Path(value).expanduser()
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise _bad(field, f"{_FLAGS[field]} {value}: cannot read it "
                              f"({exc.strerror or exc})") from exc
    if hosts_jobs and mesh.tls_client_ca and not mesh.tls_mesh_cert:
        raise _bad("tls_mesh_cert", "with --tls-client-ca (mTLS), jobs, their sidecars and the "
                   "embedded agents need a client certificate to reach the server: pass "
                   "--tls-mesh-cert and --tls-mesh-key (signed by the client CA)")
